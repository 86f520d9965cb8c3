"""DiT backends on an NVIDIA GPU: TensorRT and torch.compile against eager, and the engine cache
across restarts. Deselected in CI (`-m "not gpu"`); run on a GPU host with `pip install -e '.[gpu]'`:

    .venv/bin/python -m pytest -m gpu tests/engines/test_gpu_backends.py -v
"""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.gpu


@pytest.fixture(scope="module", autouse=True)
def cuda():
    """A gpu-marked test run without a GPU is a mistake, not a skip: fail loudly."""
    assert torch.cuda.is_available(), "these tests need an NVIDIA GPU (CI deselects them: -m 'not gpu')"


@pytest.fixture(scope="module")
def gpu_configs(tmp_path_factory):
    from engines.config import TensorRTConfig, preset

    cache = tmp_path_factory.mktemp("engines")
    trt = TensorRTConfig(engine_cache_dir=cache, profiles=((64, 64, 1.0), (96, 64, 2.0)), max_rows=8)
    return {dtype: preset("tiny", device="cuda", dtype=dtype, tensorrt=trt) for dtype in ("float32", "bfloat16")}


def _requests(config):
    from engines.params import GenerationParams

    return [("a", GenerationParams(prompt="a lighthouse at dusk", seed=1, steps=4).validated(config)),
            ("b", GenerationParams(prompt="rain", seed=2, steps=3, guidance_scale=1.0,
                                   audio_guidance_scale=1.0).validated(config)),
            ("c", GenerationParams(prompt="wide", seed=3, steps=2, width=96, seconds=2.0).validated(config))]


# float32 engines follow eager to rounding; bf16 ones to bf16's 8 bits of mantissa over a few steps.
@pytest.mark.parametrize("dtype, tol", [("float32", 2e-3), ("bfloat16", 6e-2)])
@pytest.mark.parametrize("backend", ["tensorrt", "compile"])
def test_backend_matches_eager_on_gpu(gpu_configs, backend, dtype, tol):
    from engines.staged_pipeline import StagedPipeline

    eager = StagedPipeline(gpu_configs[dtype].replace(dit_backend="eager"))
    fast = StagedPipeline(gpu_configs[dtype].replace(dit_backend=backend), eager.components)
    assert fast.denoiser.backend.name == backend  # no silent fallback on a GPU host
    requests = _requests(eager.config)
    for e, f in zip(eager.denoise(requests), fast.denoise(requests), strict=True):
        scale = max(1.0, float(np.abs(e.video).max()))
        assert np.abs(e.video - f.video).max() <= tol * scale
        assert np.abs(e.audio - f.audio).max() <= tol * max(1.0, float(np.abs(e.audio).max()))


def test_engine_cache_is_reused_across_restarts(tmp_path):
    cmd = [sys.executable, "-m", "kino.cli.main", "engines", "build", "--preset", "tiny", "--device", "cuda",
           "--profile", "64x64x1", "--engine-cache-dir", str(tmp_path)]
    first = subprocess.run(cmd, capture_output=True, text=True, timeout=1800)
    assert first.returncode == 0, first.stderr
    assert "built in" in first.stdout
    plans = sorted(tmp_path.glob("dit-*.plan"))
    assert len(plans) == 1
    mtime = plans[0].stat().st_mtime
    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600)  # a new process: a restart
    assert second.returncode == 0 and "already in the cache" in second.stdout
    assert plans[0].stat().st_mtime == mtime
