"""engines/parallel over NCCL on 2 GPUs: the split DiT forward and the spread decode equal one GPU.
Deselected in CI (`-m "not gpu"`); on a host with 2 NVIDIA GPUs:

    .venv/bin/python -m pytest -m gpu tests/engines/test_parallel_gpu.py -v

This process is rank 0 on cuda:0; one spawned follower computes on cuda:1. The test protocol and
the message headers travel on gloo, the tensors on NCCL (TORCH_NCCL_BLOCKING_WAIT=1, so a
timeout raises in the caller).
"""

from __future__ import annotations

import pytest
import torch

from engines.config import DecodeConfig, preset
from engines.decoder import Decoder
from engines.model_loader import ALL_PARTS, ComponentSource
from engines.parallel import ParallelBackend, ParallelUnitRunner
from engines.staged_pipeline import StagedPipeline
from loadtests.parallel_world import World
from tests.engines.parallel_cases import assert_same_media, media, run_batched_requests, tiled_latents

pytestmark = pytest.mark.gpu

# float32 on both sides; the split changes GEMM shapes (fewer rows, fewer tokens), so cuBLAS may
# block differently: rounding-level differences, amplified a little over the steps.
TOL = 1e-3


@pytest.fixture(scope="module")
def world():
    """A gpu-marked test without 2 GPUs is a mistake, not a skip: fail loudly."""
    assert torch.cuda.device_count() >= 2, (
        f"these tests need 2 NVIDIA GPUs, found {torch.cuda.device_count()} (CI deselects them: -m 'not gpu')")
    w = World(2, backend="nccl")
    yield w
    w.close()


@pytest.fixture(scope="module")
def rank0():
    config = preset("tiny", device="cuda:0")
    return config, ComponentSource(config).load(ALL_PARTS)


@pytest.fixture(scope="module")
def reference(rank0):
    config, components = rank0
    pipe = StagedPipeline(config, components)
    results, forwards = run_batched_requests(pipe, config)
    return media(pipe, results), forwards


@pytest.mark.parametrize("cfg, ulysses", [(2, 1), (1, 2)], ids=["cfg2", "ulysses2"])
def test_split_forward_over_nccl_gives_the_frames_and_audio_of_one_gpu(world, reference, rank0, cfg, ulysses):
    config, components = rank0
    expected, forwards = reference
    engine = world.engine(cfg, ulysses)
    backend = ParallelBackend(components.transformer, engine.leader)
    try:
        pipe = StagedPipeline(config, components, backend=backend)
        results, ran = run_batched_requests(pipe, config)
    finally:
        backend.close()
    stats = world.finish(engine)
    assert ran == forwards and stats[1].forwards == forwards
    assert_same_media(media(pipe, results), expected, TOL)


def test_parallel_decode_over_nccl_equals_one_gpu(world, rank0):
    config, components = rank0
    tiled = DecodeConfig(chunk_latent_frames=2, context_latent_frames=1, tile_latent_size=2, tile_halo_latents=1,
                         whole_max_latents=0)
    one = Decoder(config.replace(decode=tiled), components)
    g = one.geometry
    latents = tiled_latents(g.latent_channels, g.audio_latent_channels * g.latent_mel_bins)
    expected = list(one.iter_video(latents))
    engine = world.engine(1, 2)
    spread = Decoder(config.replace(decode=tiled), components, runner=ParallelUnitRunner(engine.leader))
    chunks = list(spread.iter_video(latents))
    stats = world.finish(engine)
    assert stats[1].decode_units > 0
    # Same kernels on the same inputs; cuDNN may still pick another algorithm on the second GPU.
    for got, ref in zip(chunks, expected, strict=True):
        assert (got - ref).abs().max().item() <= 1e-5
