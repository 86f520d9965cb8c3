"""DiT backends on CPU: the fallback chain, the TensorRT engine cache key, the ONNX graph TensorRT
builds from (run under onnxruntime against eager), and torch.compile against diffusers' pipeline.

The ONNX check is the CPU half of the TensorRT proof: same graph, same input binding
(`graph_inputs`), only the executor differs. Tolerance: 1e-4 on final latents after every step
of a batched run in float32 (observed ~1e-6: operator-order rounding only).
"""

from __future__ import annotations

import logging

import numpy as np
import PIL.Image
import pytest
import torch

from engines.backends.engine_cache import EngineCache, EngineKey, Profile, weights_hash
from engines.config import preset
from engines.dit_backend import BackendUnavailable, DiTBackend, DiTInputs, EagerBackend, create_backend, fallback_chain
from engines.params import GenerationRequest
from engines.staged_pipeline import StagedPipeline

TOL = 1e-4


# -- fallback chain --------------------------------------------------------------------------
def test_fallback_chain_orders_tensorrt_compile_eager():
    assert fallback_chain("auto", "cuda:0") == ["tensorrt", "compile", "eager"]
    assert fallback_chain("auto", "cpu") == ["eager"]  # compile on CPU is opt-in: minutes of warm-up
    assert fallback_chain("tensorrt", "cpu") == ["tensorrt", "compile", "eager"]
    assert fallback_chain("compile", "cuda") == ["compile", "eager"]
    assert fallback_chain("eager", "cuda") == ["eager"]
    assert fallback_chain("fp8", "cuda") == ["fp8", "compile", "eager"]  # opt-in: auto never trades precision
    assert fallback_chain("int8", "cuda") == ["int8", "eager"]
    with pytest.raises(ValueError, match="unknown DiT backend 'onnx'"):
        fallback_chain("onnx", "cpu")


def test_tensorrt_on_cpu_falls_back_to_compile_with_one_log_line(staged, tiny_config, caplog):
    with caplog.at_level(logging.WARNING, logger="engines.dit_backend"):
        backend = create_backend("tensorrt", staged.components.transformer, tiny_config)
    assert backend.name == "compile"
    [record] = caplog.records
    assert "tensorrt unavailable" in record.message and "CUDA is not available" in record.message
    assert record.message.endswith("falling back to compile")


def test_fp8_on_cpu_falls_back_to_compile_with_one_log_line(staged, tiny_config, caplog):
    with caplog.at_level(logging.WARNING, logger="engines.dit_backend"):
        backend = create_backend("fp8", staged.components.transformer, tiny_config)
    assert backend.name == "compile"
    [record] = caplog.records
    assert record.message == ("DiT backend fp8 unavailable (FP8 needs an NVIDIA GPU and CUDA is not available "
                              "here); falling back to compile")


def test_each_unavailable_backend_logs_why_and_the_last_one_raises(staged, tiny_config, caplog):
    def unavailable(why):
        def factory(_transformer, _config) -> DiTBackend:
            raise BackendUnavailable(why)
        return factory

    registry = {"tensorrt": unavailable("no engine"), "compile": unavailable("no compiler"),
                "eager": lambda t, _c: EagerBackend(t)}
    with caplog.at_level(logging.WARNING, logger="engines.dit_backend"):
        backend = create_backend("tensorrt", staged.components.transformer, tiny_config, registry)
    assert isinstance(backend, EagerBackend)
    assert [r.message for r in caplog.records] == [
        "DiT backend tensorrt unavailable (no engine); falling back to compile",
        "DiT backend compile unavailable (no compiler); falling back to eager"]
    registry["eager"] = unavailable("nothing left")
    with pytest.raises(BackendUnavailable, match="nothing left"):
        create_backend("tensorrt", staged.components.transformer, tiny_config, registry)


# -- engine cache ----------------------------------------------------------------------------
PROFILE = Profile(name="768x512x5s", rows=(1, 8, 16), video_tokens=(3072,) * 3, audio_tokens=(126,) * 3)
KEY = EngineKey(gpu="NVIDIA H100 80GB HBM3 sm_90", tensorrt="10.13.0", weights="ab" * 32, precision="bfloat16",
                profiles=(PROFILE,))


@pytest.mark.parametrize("change", [
    dict(gpu="NVIDIA H200 sm_90"), dict(tensorrt="10.14.1"), dict(weights="cd" * 32), dict(precision="float16"),
    dict(profiles=(Profile(name="768x512x5s", rows=(1, 8, 32), video_tokens=(3072,) * 3,
                           audio_tokens=(126,) * 3),)),
    dict(profiles=(PROFILE, PROFILE)),
], ids=["gpu", "tensorrt", "weights", "precision", "profile-range", "profile-count"])
def test_engine_key_changes_with_everything_an_engine_depends_on(change):
    import dataclasses

    assert dataclasses.replace(KEY, **change).digest != KEY.digest
    assert dataclasses.replace(KEY).digest == KEY.digest  # and is stable for an equal key


def test_weights_hash_sees_one_changed_weight():
    from engines.model_loader import load_components

    a = load_components(preset("tiny")).transformer
    b = load_components(preset("tiny")).transformer
    assert weights_hash(a) == weights_hash(b)  # seeded: the same weights in a new load
    with torch.no_grad():
        next(b.parameters()).view(-1)[0] += 1e-3
    assert weights_hash(a) != weights_hash(b)


def test_engine_cache_builds_once_and_survives_an_interrupted_build(tmp_path):
    cache = EngineCache(tmp_path / "engines")
    builds = []

    def interrupted() -> bytes:
        builds.append("interrupted")
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        cache.get_or_build(KEY, interrupted)
    assert cache.get(KEY) is None  # nothing half-written is ever returned

    def build() -> bytes:
        builds.append("built")
        return b"plan-bytes"

    assert cache.get_or_build(KEY, build) == (b"plan-bytes", True)
    assert EngineCache(tmp_path / "engines").get_or_build(KEY, build) == (b"plan-bytes", False)  # a restart
    assert builds == ["interrupted", "built"]
    assert sorted(p.name for p in (tmp_path / "engines").iterdir()) == [
        f"dit-{KEY.digest}.json", f"dit-{KEY.digest}.plan"]


def test_tensorrt_settings_have_one_profile_per_bucket(tiny_config):
    from engines.backends.tensorrt import TensorRTSettings

    cfg = tiny_config.replace(tensorrt=tiny_config.tensorrt.__class__(
        engine_cache_dir="/tmp/engines", profiles=((64, 64, 1.0), (96, 64, 2.0)), max_rows=8))
    settings = TensorRTSettings.from_config(cfg)
    assert [p.name for p in settings.profiles] == ["64x64x1s", "96x64x2s"]
    small, wide = settings.profiles
    assert small.rows == wide.rows == (1, 4, 8)
    assert wide.video_tokens[0] > small.video_tokens[0] and wide.audio_tokens[0] > small.audio_tokens[0]
    assert settings.text_tokens == tiny_config.tokenizer_max_length


# -- ONNX graph under onnxruntime ------------------------------------------------------------
class OnnxRuntimeDiT(DiTBackend):
    """Runs the exported graph with onnxruntime, bound exactly as the TensorRT backend binds it."""

    name = "onnxruntime"

    def __init__(self, transformer: torch.nn.Module, graph) -> None:
        import onnxruntime

        super().__init__(transformer)
        self.session = onnxruntime.InferenceSession(str(graph), providers=["CPUExecutionProvider"])
        self.rows_seen: list[int] = []

    def forward(self, inputs: DiTInputs) -> tuple[torch.Tensor, torch.Tensor]:
        from engines.backends.onnx_export import OUTPUTS, graph_inputs

        feeds = {k: v.numpy() for k, v in graph_inputs(inputs, self.transformer.dtype).items()}
        self.rows_seen.append(inputs.batch_size)
        video, audio = self.session.run(list(OUTPUTS), feeds)
        return torch.from_numpy(video).float(), torch.from_numpy(audio).float()


@pytest.fixture(scope="module")
def onnx_graph(staged, tiny_config, tmp_path_factory):
    from engines.backends.onnx_export import export_onnx

    return export_onnx(staged.components.transformer, tmp_path_factory.mktemp("onnx") / "dit",
                       text_tokens=tiny_config.tokenizer_max_length)


def test_exported_graph_matches_eager_under_onnxruntime(staged, tiny_config, onnx_graph):
    """Dynamic rows and token counts: CFG and no-CFG rows, per-token (image) timesteps, two sizes."""
    ort = OnnxRuntimeDiT(staged.components.transformer, onnx_graph)
    onnx_pipeline = StagedPipeline(tiny_config, staged.components, backend=ort)
    rng = np.random.default_rng(3)
    image = PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    requests = [("i2v", GenerationRequest(prompt="a lighthouse at dusk", seed=1, steps=4).validated(tiny_config)),
                ("plain", GenerationRequest(prompt="rain", seed=2, steps=3, guidance_scale=1.0,
                                           audio_guidance_scale=1.0).validated(tiny_config)),
                ("wide", GenerationRequest(prompt="a wide shot", seed=3, steps=2, width=96,
                                          seconds=1.5).validated(tiny_config))]
    conds = [staged.media.encode_image(image, requests[0][1]), None, None]
    expected = staged.denoise(requests, conditioning=conds)
    got = onnx_pipeline.denoise(requests, conditioning=conds)
    for e, g in zip(expected, got, strict=True):
        assert np.abs(e.video - g.video).max() <= TOL
        assert np.abs(e.audio - g.audio).max() <= TOL
    assert set(ort.rows_seen) >= {3, 2}  # 2 CFG rows + 1 plain row share a forward; 2 rows for "wide"
    assert np.abs(got[0].video - got[1].video).max() > 0.1  # not trivially equal outputs


def test_export_is_reused_and_an_interrupted_one_redone(staged, tiny_config, onnx_graph, monkeypatch, tmp_path):
    from engines.backends import onnx_export

    attempts = []

    def interrupted(*_args, **_kwargs):
        attempts.append(1)
        raise KeyboardInterrupt

    monkeypatch.setattr(onnx_export.torch.export, "export", interrupted)
    transformer, text = staged.components.transformer, tiny_config.tokenizer_max_length
    assert onnx_export.export_onnx(transformer, onnx_graph.parent, text_tokens=text) == onnx_graph
    assert attempts == []  # a complete export is reused, never redone
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(transformer, tmp_path / "dit", text_tokens=text)
    assert not (tmp_path / "dit").exists()  # only the .partial sibling: the next build starts over
    with pytest.raises(KeyboardInterrupt):
        onnx_export.export_onnx(transformer, tmp_path / "dit", text_tokens=text)
    assert attempts == [1, 1]


# -- torch.compile ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def compiled(staged, tiny_config):
    pipeline = StagedPipeline(tiny_config.replace(dit_backend="compile"), staged.components)
    assert pipeline.denoiser.backend.name == "compile"
    return pipeline


@pytest.mark.parametrize("kw", [
    dict(prompt="a robot dancing on the beach", negative_prompt="blurry", seed=3),
    dict(prompt="rain on a tin roof", seed=11, width=96, height=64, seconds=2.0, steps=5, guidance_scale=4.0),
], ids=["cfg+rescale", "non-square-5-steps"])
def test_compiled_backend_reproduces_ltx2_pipeline(compiled, reference_pipeline, tiny_config, kw):
    from tests.engines.test_equivalence import _reference

    p = GenerationRequest(**kw).validated(tiny_config)
    ref_frames, ref_audio = _reference(reference_pipeline, tiny_config, p)
    [latents] = compiled.denoise([("r", p)])
    frames = compiled.decoder.decode_video(latents, chunked=False)
    wave = compiled.decoder.decode_audio(latents)
    assert (frames - ref_frames).abs().max().item() <= TOL
    assert (torch.from_numpy(wave.samples) - ref_audio).abs().max().item() <= TOL


# -- kino engines build ----------------------------------------------------------------------
def test_engines_build_says_why_it_cannot_build_here(tmp_path, capsys):
    from kino.cli.main import main

    assert main(["engines", "build", "--preset", "tiny", "--profile", "64x64x1",
                 "--engine-cache-dir", str(tmp_path)]) == 2
    assert "cannot build a TensorRT engine here: TensorRT needs an NVIDIA GPU" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["engines", "build", "--profile", "64x64"])  # not WIDTHxHEIGHTxSECONDS
    assert "WIDTHxHEIGHTxSECONDS" in capsys.readouterr().err
