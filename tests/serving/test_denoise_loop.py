"""The denoise loop in this process on the tiny engine: no Ray, no cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from engines.denoiser import DenoiseRequest
from engines.params import GenerationParams
from engines.stage_io import DenoisedLatents, PromptPair
from serving.denoise_loop import DenoiseLoop
from serving.scheduler import StepScheduler
from serving.stages import DenoiseEvent, LatentsFollow


def _request(staged, config, rid: str, *, steps: int = 3, seed: int = 1, size: int = 64) -> DenoiseRequest:
    p = GenerationParams(prompt=f"prompt {rid}", seed=seed, steps=steps, width=size, height=size).validated(config)
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt)])
    return DenoiseRequest(rid, p, emb)


def _loop(staged, engine=None, max_batch_size: int = 4) -> DenoiseLoop:
    return DenoiseLoop(engine or staged.denoiser, StepScheduler(max_batch_size, max_running=8))


async def _collect(loop: DenoiseLoop, rid: str, into: list) -> None:
    async for item in loop.stream(rid):
        into.append(item)


def test_stream_is_one_event_per_step_then_the_latents_last_equal_to_a_solo_run(staged, tiny_config):
    a, b = _request(staged, tiny_config, "a", steps=3, seed=1), _request(staged, tiny_config, "b", steps=2, seed=2)

    async def main():
        loop = _loop(staged)
        got: dict[str, list] = {"a": [], "b": []}
        loop.add(a, priority=5)
        loop.add(b, priority=5)
        readers = [asyncio.create_task(_collect(loop, rid, got[rid])) for rid in got]
        batches = []
        while (batch := await loop.step_once()) is not None:
            batches.append(batch.request_ids)
        await asyncio.gather(*readers)
        return got, batches

    got, batches = asyncio.run(main())
    assert batches == [("a", "b"), ("a", "b"), ("a",)]  # b finished first and left the batch
    for rid, steps in (("a", 3), ("b", 2)):
        items = got[rid]
        assert [e.step for e in items[:-2]] == list(range(1, steps + 1))
        assert all(isinstance(e, DenoiseEvent) and e.total_steps == steps for e in items[:-2])
        assert isinstance(items[-2], LatentsFollow) and isinstance(items[-1], DenoisedLatents)
    [solo] = staged.denoise([("a", a.params)])
    np.testing.assert_allclose(got["a"][-1].video, solo.video, atol=1e-4)
    np.testing.assert_allclose(got["a"][-1].audio, solo.audio, atol=1e-4)


def test_a_cancel_between_steps_removes_the_request_before_the_next_step(staged, tiny_config):
    async def main():
        loop = _loop(staged)
        loop.add(_request(staged, tiny_config, "keep", steps=3), 5)
        loop.add(_request(staged, tiny_config, "cancel", steps=3), 5)
        first = await loop.step_once()
        loop.remove("cancel")  # what closing the stream does
        rest = []
        while (batch := await loop.step_once()) is not None:
            rest.append(batch.request_ids)
        return first.request_ids, rest, "cancel" in loop, "cancel" in loop.scheduler

    first, rest, still_there, still_scheduled = asyncio.run(main())
    assert first == ("keep", "cancel")
    assert rest == [("keep",), ("keep",)]
    assert not still_there and not still_scheduled


class FailsFor:
    """The tiny engine, except that a step with `bad` in its batch raises (a device error, say)."""

    def __init__(self, engine, bad: str) -> None:
        self.engine, self.bad = engine, bad

    def prepare(self, request):
        return self.engine.prepare(request)

    def step(self, states):
        if any(s.request_id == self.bad for s in states):
            raise RuntimeError("injected step failure")
        return self.engine.step(states)

    def result(self, state):
        return self.engine.result(state)


def test_a_failing_step_fails_only_its_requests(staged, tiny_config):
    async def main():
        loop = _loop(staged, FailsFor(staged.denoiser, "bad"))
        loop.add(_request(staged, tiny_config, "bad", steps=2, size=64), 9)  # its own shape: its own batch
        loop.add(_request(staged, tiny_config, "good", steps=2, size=96), 5)
        good: list = []
        readers = asyncio.gather(_collect(loop, "good", good), _collect(loop, "bad", []), return_exceptions=True)
        while await loop.step_once() is not None:
            pass
        return good, await readers

    good, (good_end, bad_end) = asyncio.run(main())
    assert good_end is None and isinstance(good[-1], DenoisedLatents)
    assert isinstance(bad_end, RuntimeError) and "injected" in str(bad_end)


def test_a_high_priority_arrival_overtakes_at_the_next_boundary(staged, tiny_config):
    async def main():
        loop = _loop(staged, max_batch_size=1)
        loop.add(_request(staged, tiny_config, "low", steps=3), 1)
        order = [(await loop.step_once()).request_ids]
        loop.add(_request(staged, tiny_config, "high", steps=2), 9)
        while (batch := await loop.step_once()) is not None:
            order.append(batch.request_ids)
        return order

    assert asyncio.run(main()) == [("low",), ("high",), ("high",), ("low",), ("low",)]


def test_denoise_runs_the_loop_by_itself_and_frees_the_slot_when_the_caller_leaves(staged, tiny_config):
    async def main():
        loop = _loop(staged)
        whole = [item async for item in loop.denoise(_request(staged, tiny_config, "a", steps=2), 5)]
        stream = loop.denoise(_request(staged, tiny_config, "b", steps=4), 5)
        first = await stream.__anext__()
        await stream.aclose()  # the dispatcher cancelled the job
        loop.check()
        return whole, first, "b" in loop, loop.scheduler.num_running + loop.scheduler.num_waiting

    whole, first, still_there, scheduled = asyncio.run(main())
    assert isinstance(whole[-1], DenoisedLatents) and [e.step for e in whole[:2]] == [1, 2]
    assert first.step == 1 and not still_there and scheduled == 0


def test_the_same_request_twice_is_refused(staged, tiny_config):
    async def main():
        loop = _loop(staged)
        loop.add(_request(staged, tiny_config, "a"), 5)
        with pytest.raises(ValueError, match="already"):
            loop.add(_request(staged, tiny_config, "a"), 5)

    asyncio.run(main())


def test_the_denoise_loop_imports_no_ray():
    code = "import sys, serving.denoise_loop; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
