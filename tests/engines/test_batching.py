"""Step-level batching: requests at different steps share one forward and still equal solo runs."""

import numpy as np
import pytest

from engines.denoiser import DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import PromptPair

TOL = 1e-4


def _solo(staged, rid, p):
    [lat] = staged.denoise([(rid, p)])
    return lat


def test_batch_of_requests_at_different_steps_equals_solo_runs(staged, tiny_config):
    params = [
        GenerationRequest(prompt="a cat on a sofa", seed=1, steps=6).validated(tiny_config),
        GenerationRequest(prompt="waves crashing", negative_prompt="noise", seed=2, steps=4,
                         guidance_scale=5.0).validated(tiny_config),
        GenerationRequest(prompt="city at night", seed=3, steps=5, guidance_scale=1.0,
                         audio_guidance_scale=1.0).validated(tiny_config),  # no CFG: one row, not two
        GenerationRequest(prompt="a choir singing", seed=4, steps=3).validated(tiny_config),
    ]
    ids = [f"r{i}" for i in range(len(params))]
    embeddings = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    states = [staged.denoiser.prepare(DenoiseRequest(i, p, e))
              for i, p, e in zip(ids, params, embeddings, strict=True)]
    # Stagger arrivals: r0 runs alone for 2 steps, r1 joins for 1, then all four together.
    staged.denoiser.step(states[:1])
    staged.denoiser.step(states[:1])
    staged.denoiser.step(states[:2])
    assert [s.step_index for s in states] == [3, 1, 0, 0]
    forwards = 3
    while running := [s for s in states if not s.done]:
        staged.denoiser.step(running)
        forwards += 1
    assert [s.step_index for s in states] == [6, 4, 5, 3]
    assert forwards == 3 + 5  # r2 (5 steps from step 0) finishes last
    for rid, p, s in zip(ids, params, states, strict=True):
        solo = _solo(staged, rid, p)
        batched = staged.denoiser.result(s)
        assert np.abs(batched.video - solo.video).max() <= TOL
        assert np.abs(batched.audio - solo.audio).max() <= TOL


def test_requests_differ_from_each_other(staged, tiny_config):
    """Guard against a batch that silently shares state: different seeds give different latents."""
    a = _solo(staged, "a", GenerationRequest(prompt="same", seed=1).validated(tiny_config))
    b = _solo(staged, "b", GenerationRequest(prompt="same", seed=2).validated(tiny_config))
    assert np.abs(a.video - b.video).max() > 0.1


def test_step_rejects_mixed_shapes_and_finished_states(staged, tiny_config):
    p64 = GenerationRequest(prompt="x", seed=1, steps=1).validated(tiny_config)
    p96 = GenerationRequest(prompt="x", seed=1, steps=1, width=96).validated(tiny_config)
    embs = staged.text_encoder.encode([PromptPair("x"), PromptPair("x")])
    s1 = staged.denoiser.prepare(DenoiseRequest("a", p64, embs[0]))
    s2 = staged.denoiser.prepare(DenoiseRequest("b", p96, embs[1]))
    with pytest.raises(ValueError, match="share a latent shape"):
        staged.denoiser.step([s1, s2])
    staged.denoiser.step([s1])
    with pytest.raises(ValueError, match="finished all 1 steps"):
        staged.denoiser.step([s1])
    with pytest.raises(ValueError, match="at step 0 of 1"):
        staged.denoiser.result(s2)


def test_running_out_of_device_memory_is_an_engine_error_and_leaves_the_states_as_they_were(staged, tiny_config):
    import torch

    from engines.denoiser import Denoiser
    from engines.errors import OutOfMemory

    class NoMemory:
        """A backend on a device that is full (a fake: this CPU cannot run out)."""

        name, runs_block_hooks = "full", False

        def forward(self, inputs):
            raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    p = GenerationRequest(prompt="a cat", seed=1, steps=2).validated(tiny_config)
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt)])
    full = Denoiser(tiny_config, staged.components, backend=NoMemory())
    state = full.prepare(DenoiseRequest("a", p, emb))
    before = state.latents.clone()
    with pytest.raises(OutOfMemory, match="ran out of device memory"):
        full.step([state])
    assert state.step_index == 0 and torch.equal(state.latents, before)


def test_a_batchs_contexts_and_coordinates_are_built_once_while_its_members_stay(staged, tiny_config):
    """The persistent part of a batch: rebuilt when a request joins or leaves, not at every step."""
    import torch

    params = [GenerationRequest(prompt=f"request {i}", seed=i, steps=4).validated(tiny_config) for i in range(3)]
    embeddings = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for p in params])
    d = staged.denoiser
    states = [d.prepare(DenoiseRequest(f"persist-{i}", p, e)) for i, (p, e) in enumerate(zip(params, embeddings,
                                                                                             strict=True))]
    first = d._batch(states)
    d.step(states)
    again = d._batch(states)
    assert again.video_context is first.video_context and again.video_coords is first.video_coords
    assert not torch.equal(again.video, first.video)  # the latents moved: they are read every step
    fewer = d._batch(states[:2])  # one left: rebuilt, for the two that stay
    assert fewer.video_context is not first.video_context
    rows = states[0].rows + states[1].rows
    assert torch.equal(fewer.video_context, first.video_context[:rows])
    twin = d.prepare(DenoiseRequest("persist-0", params[0], embeddings[0]))  # a new state under a known id
    assert d._batch([twin, *states[1:]]).video_context is not first.video_context
