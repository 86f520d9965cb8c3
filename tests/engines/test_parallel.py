"""One video across several ranks (engines/parallel) equals one rank: real gloo processes on this
host, Kino's real Denoiser on rank 0 (this process) with the parallel backend, followers spawned.

One world of 4 processes serves every case in turn (spawning costs seconds per process); the
failure case breaks it on purpose, so it comes last. The followers' model.lora.dir is a folder the
LoRA cases fill once rank 0's transformer is loaded (a follower reads an adapter when a step first
names it).
"""

from __future__ import annotations

import os
import signal
import time

import pytest
import torch

from engines.config import DecodeConfig, LoraConfig, from_mapping, preset
from engines.decoder import Decoder
from engines.errors import ConfigError, ParallelError
from engines.model_loader import ALL_PARTS, ComponentSource
from engines.parallel import ParallelBackend, ParallelLayout, ParallelUnitRunner
from engines.parallel.decode import unit_owner
from engines.parallel.messages import MessageKind
from engines.params import GenerationRequest
from engines.stage_io import DenoiseRequest, PromptPair
from engines.staged_pipeline import StagedPipeline
from loadtests.parallel_world import EngineSpec, World
from tests.engines.lora_cases import write_adapters
from tests.engines.parallel_cases import assert_same_media, media, run_batched_requests, tiled_latents

TOL = 1e-4


@pytest.fixture(scope="module")
def lora_root(tmp_path_factory):
    return tmp_path_factory.mktemp("loras")


@pytest.fixture(scope="module")
def world(lora_root):
    w = World(4, lora_dir=lora_root)  # the followers start now and load while rank 0 computes its references
    yield w
    w.close()


@pytest.fixture(scope="module")
def rank0():
    """Rank 0's own components (parallelizing must not touch the session's `staged` fixture)."""
    config = preset("tiny")
    return config, ComponentSource(config).load(ALL_PARTS)


@pytest.fixture(scope="module")
def reference(rank0):
    """The same requests on one rank (EagerBackend)."""
    config, components = rank0
    pipe = StagedPipeline(config, components)
    results, forwards = run_batched_requests(pipe, config)
    return media(pipe, results), forwards


@pytest.fixture(scope="module")
def lora_config(rank0, lora_root):
    """Adapters a and b (tests/engines/lora_cases.py) in the followers' adapter folder, and rank 0's config."""
    config, components = rank0
    write_adapters(lora_root, components.transformer, ("a", "b"))
    return config.replace(lora=LoraConfig(dir=lora_root))


def _denoise_with_adapters(config, components, backend=None):
    """A mixed batch: no adapter (CFG), a at 1.0 (CFG), a and b at 0.5 (no CFG: 5 rows, so a CFG rank pads with
    the last, which has adapters); the third joins at the second step."""
    pipe = StagedPipeline(config, components, backend=backend)
    den = pipe.denoiser
    params = [GenerationRequest(prompt=prompt, seed=seed, steps=3, loras=loras, **kw).validated(config)
              for prompt, seed, loras, kw in [
                  ("a lighthouse at dusk", 1, (), {}),
                  ("rain on a window", 2, (("a", 1.0),), {}),
                  ("a choir singing", 3, (("a", 0.5), ("b", 0.5)), {"guidance_scale": 1.0,
                                                                     "audio_guidance_scale": 1.0})]]
    embs = pipe.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    states = [den.prepare(DenoiseRequest(f"r{i}", p, e)) for i, (p, e) in enumerate(zip(params, embs, strict=True))]
    assert [s.rows for s in states] == [2, 2, 1]
    den.step(states[:2])
    forwards = 1
    while running := [s for s in states if not s.done]:
        den.step(running)
        forwards += 1
    return [den.result(s) for s in states], forwards


@pytest.fixture(scope="module")
def lora_reference(rank0, lora_config):
    """The mixed batch with adapters on one rank (EagerBackend)."""
    return _denoise_with_adapters(lora_config, rank0[1])


@pytest.mark.parametrize("cfg, ulysses", [(2, 1), (1, 2)], ids=["cfg2", "ulysses2"])
def test_split_forward_with_adapters_gives_the_latents_of_one_rank(world, rank0, lora_config, lora_reference,
                                                                    cfg, ulysses):
    """Each rank applies the rows' adapters to what it computes: a CFG rank to its rows (its padding row too),
    a Ulysses rank to its shard of every row's tokens; the followers load them by name from their own folder."""
    expected, forwards = lora_reference
    engine = world.engine(cfg, ulysses)
    backend = ParallelBackend(rank0[1].transformer, engine.leader)
    assert backend.runs_lora
    try:
        results, ran = _denoise_with_adapters(lora_config, rank0[1], backend)
    finally:
        backend.close()
    stats = world.finish(engine)
    assert ran == forwards and stats[1].forwards == forwards
    for got, want in zip(results, expected, strict=True):
        assert abs(got.video - want.video).max() <= TOL, got.request_id
        assert abs(got.audio - want.audio).max() <= TOL, got.request_id


@pytest.mark.parametrize("cfg, ulysses", [(2, 1), (1, 2), (2, 2)], ids=["cfg2", "ulysses2", "cfg2xulysses2"])
def test_split_forward_gives_the_frames_and_audio_of_one_rank(world, reference, rank0, cfg, ulysses):
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
    assert ran == forwards
    # Every follower computed its share of every forward.
    assert [s.forwards for s in stats[1:cfg * ulysses]] == [forwards] * (cfg * ulysses - 1)
    assert_same_media(media(pipe, results), expected, TOL)


def test_ulysses_refuses_a_video_it_cannot_split_and_keeps_serving(world, rank0):
    config, components = rank0
    engine = world.engine(1, 2)
    backend = ParallelBackend(components.transformer, engine.leader)
    try:
        pipe = StagedPipeline(config, components, backend=backend)
        odd = GenerationRequest(prompt="x", seed=1, steps=1, width=96, height=96, seconds=0.5).validated(config)
        with pytest.raises(ConfigError, match=r"model\.parallel\.ulysses: 2 does not divide the 27 video tokens"):
            pipe.denoise([("odd", odd)])
        even = GenerationRequest(prompt="x", seed=1, steps=1).validated(config)
        pipe.denoise([("even", even)])  # refused before any message: the group is still in step
    finally:
        backend.close()
    assert world.finish(engine)[1].forwards == 1


def test_parallel_decode_is_bit_identical_to_one_rank(world, rank0):
    config, components = rank0
    tiled = DecodeConfig(chunk_latent_frames=2, context_latent_frames=1, tile_latent_size=2, tile_halo_latents=1,
                         whole_max_latents=0)  # 3 chunks x 2x3 tiles
    one = Decoder(config.replace(decode=tiled), components)
    g = one.geometry
    latents = tiled_latents(g.latent_channels, g.audio_latent_channels * g.latent_mel_bins)
    expected = list(one.iter_video(latents))
    engine = world.engine(1, 2)
    spread = Decoder(config.replace(decode=tiled), components, runner=ParallelUnitRunner(engine.leader))
    plan = spread.chunk_plan((1, 8, 5, 3, 5), tiled)
    chunks = list(spread.iter_video(latents))
    # A caller that stops reading after one chunk leaves the group in step (the rest is drained).
    stream = spread.iter_video(latents)
    next(stream)
    stream.close()
    again = list(spread.iter_video(latents))
    stats = world.finish(engine)
    assert len(chunks) == len(expected) == 3
    for got, ref in zip(chunks + again, expected + expected, strict=True):
        assert torch.equal(got, ref)
    owned = sum(unit_owner(c, k, 2) == 1 for c, ch in enumerate(plan) for k in range(len(ch.units)))
    assert 0 < owned < sum(len(ch.units) for ch in plan)
    assert stats[1].decode_units == 3 * owned  # three decodes, each unit of rank 1 decoded there


def test_parallel_config_bounds():
    assert from_mapping({"parallel": {"cfg": 2, "ulysses": 2}}).parallel.world_size == 4
    with pytest.raises(ConfigError, match=r"model\.parallel\.cfg"):
        from_mapping({"parallel": {"cfg": 3}})
    with pytest.raises(ConfigError, match=r"model\.parallel\.ulysses: 4 must divide the video \(2\)"):
        from_mapping({"parallel": {"ulysses": 4}})  # tiny has 2 heads
    layout = ParallelLayout(cfg=2, ulysses=2, ranks=(4, 5, 6, 7))
    assert [layout.ulysses_group_ranks(c) for c in (0, 1)] == [[4, 5], [6, 7]]
    assert [layout.cfg_group_ranks(u) for u in (0, 1)] == [[4, 6], [5, 7]]


def test_a_forward_message_names_each_rows_adapters_and_scales():
    """The adapters travel as names and scales (the followers load the weights themselves), exactly."""
    from engines.dit_backend import DiTInputs
    from engines.parallel.messages import decode_header, encode_header, pack_forward, unpack_forward

    inputs = DiTInputs(*(torch.zeros(3, 2) for _ in range(8)))
    named = [[("a", 0.1), ("b", -1.0 / 3)], [], [("émeraude", 1.0)]]
    tensors = pack_forward(inputs, named)
    kind, specs = decode_header(encode_header(MessageKind.FORWARD, tensors))
    assert kind is MessageKind.FORWARD and specs[-1] == (torch.uint8, tuple(tensors[-1].shape))
    got, rows = unpack_forward(tensors)
    assert rows == named and got.video is inputs.video and got.video_timestep is None
    assert pack_forward(inputs, [[], [], []])[-1] is None and unpack_forward(pack_forward(inputs))[1] is None
    with pytest.raises(ValueError, match="adapters for 2 rows, a batch of 3"):
        pack_forward(inputs, named[:2])


def test_a_dead_or_wedged_follower_fails_rank_0_within_the_timeout(world, rank0):
    """Last: it kills one follower and stops another, which breaks the world."""
    config, components = rank0
    timeout = 3.0
    killed, wedged = world.engines(EngineSpec(2, 1, (0, 1), timeout), EngineSpec(2, 1, (0, 2), timeout))
    pids = {1: world.processes[0].pid, 2: world.processes[1].pid}
    params = GenerationRequest(prompt="x", seed=1, steps=6).validated(config)
    try:
        for engine, follower, sig in ((killed, 1, signal.SIGKILL), (wedged, 2, signal.SIGSTOP)):
            backend = ParallelBackend(components.transformer, engine.leader)
            pipe = StagedPipeline(config, components, backend=backend)
            struck: list[float] = []

            def strike(done: int, _total: int, pid=pids[follower], sig=sig, struck=struck) -> None:
                if done == 2:
                    os.kill(pid, sig)
                    struck.append(time.perf_counter())

            try:
                with pytest.raises(ParallelError, match=r"a DiT step failed .*model\.parallel: cfg=2") as e:
                    pipe.denoise([("r", params)], on_step=strike)
                waited = time.perf_counter() - struck[0]
                assert waited < timeout + 5, f"rank 0 waited {waited:.1f} s for a {sig.name}'d follower"
                with pytest.raises(ParallelError, match="cannot be reused"):  # and refuses at once from then on
                    pipe.denoise([("r", params)])
            finally:
                backend.close()
            assert isinstance(e.value.__cause__, RuntimeError)
    finally:
        world.discard()
