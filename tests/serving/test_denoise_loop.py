"""The denoise loop in this process on the tiny engine: no Ray, no cluster."""

from __future__ import annotations

import asyncio
import subprocess
import sys

import numpy as np
import pytest

from engines.denoiser import DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import DenoisedLatents, PromptPair
from serving.data_plane.denoise_loop import DenoiseLoop
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import Denoised, DenoiseEvent


def _request(staged, config, rid: str, *, steps: int = 3, seed: int = 1, size: int = 64) -> DenoiseRequest:
    p = GenerationRequest(prompt=f"prompt {rid}", seed=seed, steps=steps, width=size, height=size).validated(config)
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
        assert [e.step for e in items[:-1]] == list(range(1, steps + 1))
        assert all(isinstance(e, DenoiseEvent) and e.total_steps == steps for e in items[:-1])
        assert isinstance(items[-1], Denoised) and isinstance(items[-1].latents, DenoisedLatents)
    [solo] = staged.denoise([("a", a.params)])
    np.testing.assert_allclose(got["a"][-1].latents.video, solo.video, atol=1e-4)
    np.testing.assert_allclose(got["a"][-1].latents.audio, solo.audio, atol=1e-4)


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
    assert good_end is None and isinstance(good[-1], Denoised)
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
    assert isinstance(whole[-1], Denoised) and [e.step for e in whole[:2]] == [1, 2]
    assert first.step == 1 and not still_there and scheduled == 0


def test_the_same_request_twice_is_refused(staged, tiny_config):
    async def main():
        loop = _loop(staged)
        loop.add(_request(staged, tiny_config, "a"), 5)
        with pytest.raises(ValueError, match="already"):
            loop.add(_request(staged, tiny_config, "a"), 5)

    asyncio.run(main())


def test_the_denoise_loop_imports_no_ray():
    code = "import sys, serving.data_plane.denoise_loop; assert 'ray' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


class SmallDevice(FailsFor):
    """The tiny engine on a pretend device with little memory (this CPU cannot run out): a forward of
    more than `max_rows` rows, or of a request larger than `max_side`, raises OutOfMemory."""

    def __init__(self, engine, max_rows: int, max_side: int) -> None:
        super().__init__(engine, bad="")
        self.max_rows, self.max_side, self.forwards = max_rows, max_side, []

    def step(self, states):
        from engines.errors import OutOfMemory

        self.forwards.append(len(states))
        if sum(s.rows for s in states) > self.max_rows or any(s.params.width > self.max_side for s in states):
            raise OutOfMemory("CUDA out of memory (pretend)")
        return self.engine.step(states)


def test_out_of_memory_retries_each_request_alone_and_fails_only_one_that_never_fits(staged, tiny_config):
    from engines.errors import OutOfMemory

    async def main():
        engine = SmallDevice(staged.denoiser, max_rows=2, max_side=64)
        loop = _loop(staged, engine)
        for rid in ("a", "b", "c"):
            loop.add(_request(staged, tiny_config, rid, steps=2), 5)  # 2 rows each: together they never fit
        loop.add(_request(staged, tiny_config, "huge", steps=2, size=96), 9)
        got = {rid: [] for rid in ("a", "b", "c", "huge")}
        readers = asyncio.gather(*(_collect(loop, rid, got[rid]) for rid in got), return_exceptions=True)
        while await loop.step_once() is not None:
            pass
        return got, await readers, engine.forwards

    got, ends, forwards = asyncio.run(main())
    assert isinstance(ends[3], OutOfMemory)  # "huge" does not fit even alone
    assert all(e is None and isinstance(got[r][-1], Denoised) for r, e in zip("abc", ends[:3], strict=True))
    assert 3 in forwards and forwards.count(1) >= 6  # tried together, then one at a time


class Timed(FailsFor):
    """A pretend device (a fake: this CPU is neither): a step takes `base + per_request x batch` seconds of
    `clock` (a virtual clock the loop reads: a loaded machine's late wake-ups would add a fixed cost per step to
    real sleeps, which looks like batching paying) and only advances the states (the tiny engine prepares them
    and hands out their latents)."""

    def __init__(self, engine, base: float, per_request: float, clock: list[float]) -> None:
        super().__init__(engine, bad="")
        self.base, self.per_request, self.clock = base, per_request, clock

    def step(self, states):
        self.clock[0] += self.base + self.per_request * len(states)
        for s in states:
            s.step_index += 1
        return states


@pytest.mark.parametrize("base, per_request, cap", [
    (0.0, 0.06, 1),   # compute-bound (this CPU): a wider forward takes as much longer, so it never pays
    (0.06, 0.0, 4),   # a GPU at small batches: the same time for more requests, so it pays up to the limit
])
def test_a_new_bucket_is_measured_and_capped_where_batching_stops_paying(staged, tiny_config, base, per_request, cap,
                                                                        monkeypatch):
    import time
    import types

    from serving.data_plane import denoise_loop
    from serving.data_plane.denoise_loop import BatchMeasure

    clock = [0.0]
    monkeypatch.setattr(denoise_loop, "time", types.SimpleNamespace(
        perf_counter=lambda: clock[0], monotonic=time.monotonic, time=time.time))

    async def main():
        loop = DenoiseLoop(Timed(staged.denoiser, base, per_request, clock), StepScheduler(4, max_running=8),
                           measure=BatchMeasure(True, seconds=5.0, min_gain=0.1))
        for i in range(4):
            loop.add(_request(staged, tiny_config, f"r{i}", steps=1), 5)
        first = await loop.step_once()
        return first, loop

    first, loop = asyncio.run(main())
    bucket = first.bucket
    assert loop.scheduler.cap(bucket) == cap and len(first) == cap
    assert sorted(loop.measured[bucket]) == [1, 2, 4][: len(loop.measured[bucket])] and 1 in loop.measured[bucket]


def test_a_new_attempt_of_a_job_supersedes_the_old_one_whose_dispatcher_is_gone(staged, tiny_config):
    from serving.data_plane.stages import attempt_id

    async def main():
        loop = _loop(staged)
        loop.add(_request(staged, tiny_config, attempt_id("video_1", 1)), 5)
        await loop.step_once()
        loop.add(_request(staged, tiny_config, attempt_id("video_1", 2)), 5)  # claimed again elsewhere
        return [rid for rid in (attempt_id("video_1", 1), attempt_id("video_1", 2)) if rid in loop]

    assert asyncio.run(main()) == ["video_1@2"]


class FailsAtTheEnd(FailsFor):
    """The tiny engine, except that taking `bad`'s result raises, and so does every checkpoint."""

    def step(self, states):
        return self.engine.step(states)

    def result(self, state):
        if state.request_id == self.bad:
            raise RuntimeError("injected result failure")
        return self.engine.result(state)

    def checkpoint(self, state):
        raise TypeError("injected checkpoint failure")


def test_a_failing_result_or_checkpoint_fails_at_most_its_request_and_the_loop_serves_on(staged, tiny_config):
    """What ends a request outside its step (its result, its checkpoint) fails that request alone: a checkpoint
    never fails its request, and the loop's task lives on (it died, and every stream in it waited forever)."""
    from serving.data_plane.stages import Checkpointing

    class Store:
        def put_bytes(self, key, data):
            raise AssertionError("nothing to write: every checkpoint fails before")

    async def main():
        loop = DenoiseLoop(FailsAtTheEnd(staged.denoiser, "bad"), StepScheduler(4, max_running=8),
                           checkpoints=Store())
        got = {}

        async def one(rid: str, seed: int):
            got[rid] = [item async for item in loop.denoise(_request(staged, tiny_config, rid, steps=2, seed=seed), 5,
                                                             Checkpointing(f"ck/{rid}", every_seconds=0.0))]

        results = await asyncio.wait_for(asyncio.gather(one("bad", 1), one("good", 2), return_exceptions=True), 60)
        later = await asyncio.wait_for(asyncio.gather(one("after", 3), return_exceptions=True), 60)
        loop.check()
        return got, results, later

    got, (bad, good), [after] = asyncio.run(main())
    assert isinstance(bad, RuntimeError) and "injected result failure" in str(bad)
    assert good is None and isinstance(got["good"][-1], Denoised)
    assert after is None and isinstance(got["after"][-1], Denoised)
