"""LoRA adapters inside the Denoiser's step batches (engines/denoiser.py with engines/lora/), on the tiny preset.

The reference is independent of engines/lora: each request denoised alone by a Denoiser whose transformer has
the request's adapters fused into its weights by diffusers (tests/engines/lora_cases.py `merged_reference`).
A mixed batch (no adapter, a, b at 0.5, a and b; with and without classifier-free guidance, joining at
different steps) must give each request those latents within 1e-4.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engines.config import LoraConfig
from engines.denoiser import Denoiser
from engines.errors import InvalidParameter
from engines.params import GenerationRequest
from engines.stage_io import DenoiseRequest, PromptPair
from tests.engines.lora_cases import merged_reference, write_adapters

TOL = 1e-4
LORAS = [(), (("a", 1.0),), (("b", 0.5),), (("a", 1.0), ("b", 0.5))]


@pytest.fixture(scope="module")
def lora_dir(staged, tmp_path_factory):
    return write_adapters(tmp_path_factory.mktemp("loras"), staged.components.transformer, ("a", "b"))


@pytest.fixture(scope="module")
def lora_config(tiny_config, lora_dir):
    return tiny_config.replace(lora=LoraConfig(dir=lora_dir))


@pytest.fixture(scope="module")
def denoiser(staged, lora_config):
    return Denoiser(lora_config, components=staged.components, geometry=staged.denoiser.geometry)


def _requests(staged, config):
    params = [
        GenerationRequest(prompt="a cat on a sofa", seed=1, steps=4, loras=LORAS[0]).validated(config),
        GenerationRequest(prompt="waves crashing", seed=2, steps=4, guidance_scale=5.0,
                          loras=LORAS[1]).validated(config),
        GenerationRequest(prompt="city at night", seed=3, steps=3, guidance_scale=1.0, audio_guidance_scale=1.0,
                          loras=LORAS[2]).validated(config),  # no CFG: one row
        GenerationRequest(prompt="a choir singing", seed=4, steps=3, loras=LORAS[3]).validated(config),
    ]
    embeddings = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    return [DenoiseRequest(f"r{i}", p, e) for i, (p, e) in enumerate(zip(params, embeddings, strict=True))]


def _alone_merged(staged, lora_dir, request):
    """The request alone, its adapters fused into a copy of the transformer by diffusers."""
    merged = merged_reference(staged.components.transformer, lora_dir, request.params.loras)
    plain = Denoiser(staged.config, components=dataclasses.replace(staged.components, transformer=merged),
                     geometry=staged.denoiser.geometry)
    state = plain.prepare(dataclasses.replace(request, params=dataclasses.replace(request.params, loras=())))
    while not state.done:
        plain.step([state])
    return plain.result(state)


def test_a_mixed_batch_equals_each_request_alone_with_its_adapters_fused_by_diffusers(
        staged, lora_dir, lora_config, denoiser):
    requests = _requests(staged, lora_config)
    states = [denoiser.prepare(r) for r in requests]
    assert [s.rows for s in states] == [2, 2, 1, 2]
    denoiser.step(states[:2])  # r0 (none) and r1 (a) first; then all four, the batch changing its adapters
    while running := [s for s in states if not s.done]:
        denoiser.step(running)
    assert denoiser.adapters is not None and sorted(denoiser.adapters.loaded) == ["a", "b"]
    assert denoiser.adapters.stats().loads == 2  # each file read once; every later step a hit
    plain = {}
    for r, s in zip(requests, states, strict=True):
        got, want = denoiser.result(s), _alone_merged(staged, lora_dir, r)
        assert np.abs(got.video - want.video).max() <= TOL, r.params.loras
        assert np.abs(got.audio - want.audio).max() <= TOL, r.params.loras
        plain[r.request_id] = got
    # the adapters change the result (the comparison above is not of four plain runs)
    base = _alone_merged(staged, lora_dir, dataclasses.replace(
        requests[1], params=dataclasses.replace(requests[1].params, loras=())))
    assert np.abs(plain["r1"].video - base.video).max() > 10 * TOL


@pytest.fixture(scope="module")
def cached(staged, lora_config):
    """A Denoiser over its own copy of the tiny transformer (the same seeded weights), so the step cache's hooks
    stay off the session's shared one (as tests/engines/test_step_cache.py does)."""
    from engines.model_loader import load_components

    own = dataclasses.replace(staged.components, transformer=load_components(lora_config, ["transformer"]).transformer)
    return Denoiser(lora_config, components=own, geometry=staged.denoiser.geometry)


def _run(denoiser, states, joins):
    """Step the states together, state i joining at step joins[i]; each one's pattern (C computed, S skipped)
    and, per shared forward, which states skipped."""
    patterns, forwards, step = {s.request_id: "" for s in states}, [], 0
    while running := [s for s, j in zip(states, joins, strict=True) if j <= step and not s.done]:
        before = {s.request_id: s.steps_skipped for s in running}
        denoiser.step(running)
        skipped = {s.request_id for s in running if s.steps_skipped > before[s.request_id]}
        forwards.append(({s.request_id for s in running}, skipped))
        for s in running:
            patterns[s.request_id] += "S" if s.request_id in skipped else "C"
        step += 1
    return patterns, forwards


def _cache_requests(staged, config):
    params = [
        GenerationRequest(prompt="a lighthouse at dusk", seed=1, steps=8, cache="balanced",
                          loras=LORAS[1]).validated(config),
        GenerationRequest(prompt="waves crashing", seed=5, steps=6, cache="fast").validated(config),
        GenerationRequest(prompt="city at night", seed=6, steps=8, cache="off", guidance_scale=1.0,
                          audio_guidance_scale=1.0, loras=LORAS[3]).validated(config),  # one row, always computes
        GenerationRequest(prompt="a choir singing", seed=7, steps=5, cache="balanced",
                          loras=LORAS[2]).validated(config),
    ]
    embeddings = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    return [DenoiseRequest(f"r{i}", p, e) for i, (p, e) in enumerate(zip(params, embeddings, strict=True))]


def test_a_cached_request_with_adapters_does_not_depend_on_its_batch_mates(staged, cached):
    """Requests with and without adapters, cached and not, joining at different steps: in the shared forwards
    some rows skip while the others (rows with adapters among them) run the remaining blocks as a sub-batch,
    which must add each computing row its own adapters. Each request gets what it gets alone, skips included."""
    requests = _cache_requests(staged, cached.config)
    alone = {}
    for r in requests:
        state = cached.prepare(r)
        alone[r.request_id] = (state, _run(cached, [state], [0])[0][r.request_id])
    states = [cached.prepare(r) for r in requests]
    patterns, forwards = _run(cached, states, joins=[2, 0, 1, 3])
    assert "S" in alone["r0"][1] and "S" in alone["r3"][1]  # the requests with adapters do skip
    # some forward had a row with adapters computing beside skipping rows: the sub-batch case
    assert any(skipped and "r2" in ran for ran, skipped in forwards)
    assert any(skipped and ran - skipped - {"r2"} for ran, skipped in forwards)
    for s in states:
        one, pattern = alone[s.request_id]
        assert patterns[s.request_id] == pattern, s.request_id
        assert (s.steps_computed, s.steps_skipped) == (pattern.count("C"), pattern.count("S"))
        assert np.abs(s.latents - one.latents).max() <= TOL, s.request_id
        assert np.abs(s.audio_latents - one.audio_latents).max() <= TOL, s.request_id


def test_a_cached_request_with_adapters_skips_steps_and_keeps_its_adapters_look(staged, cached):
    """Alone, cache on against cache off, both with adapter a: steps are skipped and the video stays close (the
    PSNR of skipping on tiny, 36.7-43 dB over seeds 1-3 and both modes), while the adapter itself moves it far
    (about 19 dB from the video without it): the skipped steps keep the adapter's effect."""
    from loadtests.quality import psnr

    decode = staged.decoder.decode_video
    [request] = _cache_requests(staged, cached.config)[:1]
    assert request.params.cache == "balanced" and request.params.loras == LORAS[1]
    results = {}
    for key, params in (("on", request.params), ("off", dataclasses.replace(request.params, cache="off")),
                        ("none", dataclasses.replace(request.params, cache="off", loras=()))):
        state = cached.prepare(dataclasses.replace(request, params=params))
        _run(cached, [state], [0])
        results[key] = state
    on, off, none = results["on"], results["off"], results["none"]
    assert on.cache is not None and on.steps_skipped >= 2 and off.steps_skipped == 0
    cached_look = psnr(decode(cached.result(on)), decode(cached.result(off)))
    adapter_look = psnr(decode(cached.result(none)), decode(cached.result(off)))
    assert 35.0 <= cached_look < np.inf and adapter_look < 25.0


def test_a_denoiser_without_an_adapter_directory_refuses_a_request_with_adapters(staged, lora_config):
    [request] = _requests(staged, lora_config)[1:2]
    with pytest.raises(InvalidParameter, match=r"loras\[0\].name='a'.*model.lora.dir is not set"):
        staged.denoiser.prepare(request)


def test_an_int8_denoiser_refuses_adapters_by_name_before_the_request_takes_a_slot(staged, lora_config):
    """int8 swaps the block Linears for quantized modules the adapters cannot hook: a request with adapters is
    refused naming `loras` and the backend (it failed as an internal error naming an adapter key)."""
    import dataclasses

    from engines.model_loader import load_components

    own = dataclasses.replace(staged.components, transformer=load_components(lora_config, ["transformer"]).transformer)
    int8 = Denoiser(lora_config.replace(dit_backend="int8"), components=own, geometry=staged.denoiser.geometry)
    assert int8.backend.name == "int8" and not int8.backend.runs_lora
    [request] = _requests(staged, lora_config)[1:2]
    with pytest.raises(InvalidParameter, match=r"loras=\['a'\].*DiT backend int8 does not run"):
        int8.prepare(request)


def test_a_replicas_metrics_see_its_adapters_load_and_go(staged, lora_config, lora_dir):
    """What `open_denoise_loop` wires (a Denoiser replica and kino run): each load with the adapters held after it
    and its seconds, each eviction, from the replica's own bank (here one adapter at a time: b pushes a out)."""
    import dataclasses

    from serving.config import KinoConfig
    from serving.metrics import NoMetrics
    from serving.services import open_denoise_loop

    class Recorded(NoMetrics):
        def __init__(self) -> None:
            self.calls: list[tuple] = []

        def lora_loaded(self, held: int, seconds: float) -> None:
            self.calls.append(("loaded", held, seconds > 0))

        def lora_evicted(self) -> None:
            self.calls.append(("evicted",))

    config = lora_config.replace(lora=dataclasses.replace(lora_config.lora, max_loaded=1, max_per_request=1))
    engine = Denoiser(config, components=staged.components, geometry=staged.denoiser.geometry)
    metrics = Recorded()
    open_denoise_loop(KinoConfig(model=config), metrics, engine=engine)
    engine.adapters.uses([("a", 1.0)])
    engine.adapters.uses([("a", 0.5)])  # held: no load
    engine.adapters.uses([("b", 1.0)])
    assert metrics.calls == [("loaded", 1, True), ("evicted",), ("loaded", 1, True)]
