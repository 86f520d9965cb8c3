"""Per-request first-block caching (engines/step_cache.py) inside step-level batching, on tiny.

The cached Denoiser runs over its own copy of the tiny transformer (the same seeded weights), so
the session's shared `staged` transformer never carries the cache's hooks and stays the uncached
reference. Tolerances: 1e-4 where only batching differs (as tests/engines/test_batching.py);
torch.equal where the computation must be the uncached one.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import PIL.Image
import pytest
import torch
from diffusers.hooks import HookRegistry

from engines.config import StepCacheConfig
from engines.denoiser import Denoiser, DenoiseRequest, DenoiseState
from engines.dit_backend import EagerBackend
from engines.errors import ConfigError, InvalidParameter
from engines.model_loader import load_components
from engines.params import GenerationParams, GenerationRequest
from engines.stage_io import PromptPair
from engines.step_cache import HEAD_HOOK, UnknownBlockArgument, check_block_arguments, slice_block_arguments
from loadtests.quality import psnr

TOL = 1e-4
# balanced on tiny (8 steps) measured 44.9-49.4 dB against off over seeds 1-8; skipping every step the schedule
# allows gives 37-40 dB, and two unrelated tiny videos are 32 dB apart (tiny's random decoder varies little).
BALANCED_PSNR_DB = 42.0


@pytest.fixture(scope="module")
def components(staged, tiny_config):
    """The staged components with a transformer of their own (seeded: the same weights)."""
    return dataclasses.replace(staged.components, transformer=load_components(tiny_config, ["transformer"]).transformer)


@pytest.fixture(scope="module")
def cached(components, tiny_config):
    return Denoiser(tiny_config, components)


def _params(tiny_config, **kw) -> GenerationParams:
    kw = {"prompt": "a lighthouse at dusk", "seed": 1, "steps": 8, **kw}
    return GenerationRequest(**kw).validated(tiny_config)


def _states(staged, denoiser, params: list[GenerationParams], conditioning=None) -> list[DenoiseState]:
    embs = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    conds = conditioning or [None] * len(params)
    return [denoiser.prepare(DenoiseRequest(f"r{i}", p, e, c))
            for i, (p, e, c) in enumerate(zip(params, embs, conds, strict=True))]


def _run(denoiser, states, joins=None) -> dict[str, str]:
    """Step the states together (state i joining at step joins[i]); each one's pattern, C = computed,
    S = skipped."""
    joins = joins or [0] * len(states)
    patterns = {s.request_id: "" for s in states}
    step = 0
    while running := [s for s, j in zip(states, joins, strict=True) if j <= step and not s.done]:
        before = {s.request_id: s.steps_skipped for s in running}
        denoiser.step(running)
        for s in running:
            patterns[s.request_id] += "S" if s.steps_skipped > before[s.request_id] else "C"
        step += 1
    return patterns


def test_off_is_bit_for_bit_the_uncached_path(staged, cached, tiny_config):
    # Attach the cache's hooks first: `off` must not depend on whether they are there.
    _run(cached, _states(staged, cached, [_params(tiny_config, cache="balanced")]))
    assert HookRegistry.check_if_exists_or_initialize(cached.transformer.transformer_blocks[0]).get_hook(HEAD_HOOK)
    params = [_params(tiny_config, cache="off"), _params(tiny_config, cache="off", seed=2, prompt="rain", steps=5),
              _params(tiny_config, cache="off", seed=3, guidance_scale=1.0, audio_guidance_scale=1.0)]
    with_hooks, plain = _states(staged, cached, params), _states(staged, staged.denoiser, params)
    _run(cached, with_hooks, joins=[0, 1, 3])
    _run(staged.denoiser, plain, joins=[0, 1, 3])
    for a, b in zip(with_hooks, plain, strict=True):
        assert a.cache is None and (a.steps_computed, a.steps_skipped) == (a.steps_total, 0)
        assert torch.equal(a.latents, b.latents) and torch.equal(a.audio_latents, b.audio_latents)


def test_balanced_stays_within_its_psnr_bound(staged, cached, tiny_config):
    decode = staged.decoder.decode_video
    for seed in (1, 2):
        off = _states(staged, staged.denoiser, [_params(tiny_config, seed=seed, cache="off")])
        on = _states(staged, cached, [_params(tiny_config, seed=seed, cache="balanced")])
        _run(staged.denoiser, off)
        patterns = _run(cached, on)
        assert "S" in patterns["r0"]  # it did cache
        quality = psnr(decode(cached.result(on[0])), decode(staged.denoiser.result(off[0])))
        assert BALANCED_PSNR_DB <= quality < math.inf


def test_a_request_does_not_depend_on_its_batch_mates(staged, cached, tiny_config):
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    a = _params(tiny_config, cache="balanced")
    mates = [_params(tiny_config, prompt="waves crashing", seed=5, cache="fast", steps=6),  # image-to-video
             _params(tiny_config, prompt="city at night", seed=6, cache="off", guidance_scale=1.0,
                     audio_guidance_scale=1.0),  # one row, never skips
             _params(tiny_config, prompt="a choir", seed=7, cache="balanced", steps=5)]
    [alone] = _states(staged, cached, [a])
    alone_pattern = _run(cached, [alone])["r0"]
    cond = staged.media.encode_image(image, mates[0])
    batched = _states(staged, cached, [a, *mates], conditioning=[None, cond, None, None])
    patterns = _run(cached, batched, joins=[2, 0, 1, 3])  # mixed steps in every shared forward
    assert "S" in alone_pattern and "S" in patterns["r1"]  # forwards mixed skipping and computing rows
    assert patterns["r0"] == alone_pattern
    assert np.abs(batched[0].latents - alone.latents).max() <= TOL
    assert np.abs(batched[0].audio_latents - alone.audio_latents).max() <= TOL
    # The never-skipping batch-mate equals its uncached run too, though it ran on a sub-batch.
    [plain] = _states(staged, staged.denoiser, [mates[1]])
    _run(staged.denoiser, [plain])
    assert np.abs(batched[2].latents - plain.latents).max() <= TOL
    assert batched[0].cache.nbytes == 0  # a finished request holds no cached tensors


@pytest.mark.parametrize("max_skips, pattern", [(3, "CCSSSCC"), (1, "CCSCSCC")])
def test_the_first_and_last_steps_always_compute(staged, components, tiny_config, max_skips, pattern):
    # A threshold nothing reaches: every step the schedule allows is skipped.
    config = tiny_config.replace(step_cache=StepCacheConfig(balanced_threshold=10, fast_threshold=10, first_steps=2,
                                                            last_steps=2, max_consecutive_skips=max_skips))
    denoiser = Denoiser(config, components)
    states = _states(staged, denoiser, [_params(config, cache="balanced", steps=7),
                                        _params(config, cache="balanced", steps=5, seed=2)])
    patterns = _run(denoiser, states, joins=[0, 1])
    assert patterns == {"r0": pattern, "r1": "CCSCC"}
    assert [(s.steps_computed, s.steps_skipped) for s in states] == [
        (pattern.count("C"), pattern.count("S")), (4, 1)]


def test_the_cfg_rows_of_a_request_decide_together(staged, components, tiny_config):
    """One row that moved a lot makes the whole request compute, though its other row alone would skip."""
    config = tiny_config.replace(step_cache=StepCacheConfig(balanced_threshold=0.5, fast_threshold=0.5))
    denoiser = Denoiser(config, components)
    p = _params(config, cache="balanced")
    [state] = _states(staged, denoiser, [p])
    [twin] = _states(staged, staged.denoiser, [dataclasses.replace(p, cache="off")])
    for s, d in ((state, denoiser), (twin, staged.denoiser)):
        d.step([s])
    video, audio = state.cache.head_residual
    # The conditional row's last block-0 residual, flipped: its next change is ~2x (way past 0.5), while the
    # unconditional row keeps its true residual (a change of ~0.2 here: alone it would skip).
    state.cache.head_residual = (torch.cat([video[:1], -video[1:]]), torch.cat([audio[:1], -audio[1:]]))
    denoiser.step([state])
    staged.denoiser.step([twin])
    assert (state.steps_computed, state.steps_skipped) == (2, 0)
    assert torch.equal(state.latents, twin.latents) and torch.equal(state.audio_latents, twin.audio_latents)
    # Without the flip the same step skips: the flip alone made the request compute.
    [again] = _states(staged, denoiser, [p])
    denoiser.step([again])
    denoiser.step([again])
    assert (again.steps_computed, again.steps_skipped) == (1, 1)


def test_a_backend_without_block_hooks_runs_uncached_and_says_why(staged, components, tiny_config, caplog):
    class OneGraphBackend(EagerBackend):
        """Stands in for a backend that does not run the diffusers blocks (compile, TensorRT)."""

        name = "one-graph"
        runs_block_hooks = False

    denoiser = Denoiser(tiny_config, components, backend=OneGraphBackend(components.transformer))
    with caplog.at_level(logging.WARNING, logger="engines.denoiser"):
        states = _states(staged, denoiser, [_params(tiny_config, cache="fast"), _params(tiny_config, cache="fast")])
    [record] = caplog.records
    assert "step cache unavailable with DiT backend one-graph" in record.message
    assert all(s.cache is None for s in states)
    _run(denoiser, states)
    assert [(s.steps_computed, s.steps_skipped) for s in states] == [(8, 0), (8, 0)]


def test_a_block_argument_without_a_slicing_rule_is_an_error(components):
    class FutureBlock(torch.nn.Module):
        """Stands in for a diffusers block that gained an argument."""

        def forward(self, hidden_states, audio_hidden_states, temb, ref_mask=None):
            return hidden_states, audio_hidden_states

    transformer = torch.nn.Module()
    transformer.transformer_blocks = torch.nn.ModuleList([FutureBlock(), FutureBlock()])
    with pytest.raises(UnknownBlockArgument, match="FutureBlock.forward takes 'ref_mask'.*diffusers"):
        check_block_arguments(transformer)
    with pytest.raises(UnknownBlockArgument, match="'ref_mask'"):
        slice_block_arguments({"temb": torch.zeros(2, 1, 4), "ref_mask": None}, torch.tensor([1]), 2)
    check_block_arguments(components.transformer)  # diffusers' own block: every argument has a rule


def test_the_cache_parameter_defaults_from_the_config_and_names_itself_when_wrong(tiny_config):
    assert _params(tiny_config).cache == "off"
    fast_default = tiny_config.replace(step_cache=StepCacheConfig(default="fast"))
    assert _params(fast_default).cache == "fast" and _params(fast_default, cache="off").cache == "off"
    with pytest.raises(InvalidParameter) as e:
        _params(tiny_config, cache="turbo")
    assert e.value.field == "cache"
    with pytest.raises(ConfigError, match="model.step_cache.fast_threshold: must be at least balanced_threshold"):
        StepCacheConfig(balanced_threshold=0.5, fast_threshold=0.4)
    with pytest.raises(ConfigError, match="model.step_cache.default"):
        StepCacheConfig(default="turbo")
