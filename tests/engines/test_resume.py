"""A request's denoise state checkpointed at a step boundary and resumed in a fresh state (as another replica
would) finishes bit-identical to an uninterrupted run, step cache included; a checkpoint of another request, model
or a corrupt one is refused (engines/denoise_checkpoint.py)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from engines.denoise_checkpoint import CheckpointMismatch, restore
from engines.denoiser import Denoiser, DenoiseRequest
from engines.model_loader import load_components
from engines.params import GenerationRequest
from engines.stage_io import PromptPair


@pytest.fixture(scope="module")
def cached(staged, tiny_config):
    """A Denoiser whose transformer carries the step cache's hooks (its own copy: the same seeded weights)."""
    components = dataclasses.replace(staged.components,
                                     transformer=load_components(tiny_config, ["transformer"]).transformer)
    return Denoiser(tiny_config, components)


def _request(staged, tiny_config, **kw) -> DenoiseRequest:
    params = GenerationRequest(**{"prompt": "a lighthouse at dusk", "seed": 5, "steps": 10, **kw}).validated(
        tiny_config)
    [emb] = staged.text_encoder.encode([PromptPair(params.prompt, params.negative_prompt)])
    return DenoiseRequest("r1", params, emb)


def _finish(denoiser, state):
    while not state.done:
        denoiser.step([state])
    return state


@pytest.mark.parametrize("cache", ["off", "balanced"])
def test_a_request_resumed_from_its_checkpoint_ends_bit_identical(staged, cached, tiny_config, cache):
    denoiser = cached if cache == "balanced" else staged.denoiser
    request = _request(staged, tiny_config, cache=cache)
    whole = _finish(denoiser, denoiser.prepare(request))

    first = denoiser.prepare(request)
    for _ in range(7):  # killed at 70% of its steps
        denoiser.step([first])
    data = denoiser.checkpoint(first)
    resumed = denoiser.prepare(request)  # a fresh state, as another replica prepares it
    assert denoiser.resume(resumed, data) == 7
    _finish(denoiser, resumed)
    assert torch.equal(resumed.latents, whole.latents) and torch.equal(resumed.audio_latents, whole.audio_latents)
    # The cache's state came along: the two halves skipped exactly the steps the whole run did.
    assert (first.steps_computed + resumed.steps_computed, first.steps_skipped + resumed.steps_skipped) == (
        whole.steps_computed, whole.steps_skipped)
    if cache == "balanced":
        assert whole.steps_skipped > 0


def test_a_checkpoint_of_another_request_model_or_a_corrupt_one_is_refused(staged, tiny_config):
    denoiser = staged.denoiser
    state = denoiser.prepare(_request(staged, tiny_config))
    denoiser.step([state])
    data = denoiser.checkpoint(state)
    other = denoiser.prepare(_request(staged, tiny_config, seed=6))
    with pytest.raises(CheckpointMismatch, match="another model, request or shape"):
        denoiser.resume(other, data)
    fresh = denoiser.prepare(_request(staged, tiny_config))
    with pytest.raises(CheckpointMismatch, match="'model'"):  # written by other weights
        restore(fresh, data, model="another-model's-fingerprint")
    for corrupt in (b"", b"\x00" * 16, data[: len(data) // 2], b"garbage" + data):
        with pytest.raises(CheckpointMismatch):
            denoiser.resume(fresh, corrupt)
    assert fresh.step_index == 0 and torch.equal(fresh.latents, denoiser.prepare(_request(staged, tiny_config)).latents)
