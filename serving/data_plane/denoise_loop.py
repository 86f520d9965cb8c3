"""The Denoiser's step loop, free of its transport (as vLLM keeps EngineCore's loop apart from its server).

One `DenoiseLoop` per Denoiser replica. Requests join and leave at any time; at every step
boundary the `StepScheduler` picks the requests that share the next batched forward.

    loop = DenoiseLoop(engine, scheduler, metrics)
    async for item in loop.denoise(request, priority):   # add + stream + remove
        ...  # a DenoiseEvent per step, then Denoised(DenoisedLatents) (the last item)

The pieces, for callers (and tests) that drive it by hand:
- `add(request, priority)`: prepare the request's state (its own noise and schedule) and queue it;
- `stream(request_id)`: what the request produces, ending with its latents (or raising its error);
- `step_once()`: one step boundary: a batch from the scheduler, one engine step, events out;
- `remove(request_id)`: drop a request before the next step (a cancel, or its caller went away);
- `run()`: step while there is work, sleep while there is none (`denoise` starts it).

Checkpoints: a request with `Checkpointing` has its state written to the artifact store at most every
`every_seconds` and when its denoising ends (the write runs beside the steps; `Checkpointed` follows it), and
one with `resume` starts from the state there (`Resumed` first), or over, with a log line, if that cannot be
read. `drain()` (a replica told to stop) ends the loop at a step boundary, checkpoints what it holds and ends
each stream with `HandedBack`.

A failing step fails only the requests of its batch; every other request keeps its state and goes
on. A step that runs out of device memory is retried with each of its requests alone, and only a
request that does not fit alone fails (`OutOfMemory`). Step counts live in one place, each request's
engine state: the loop tells the scheduler which requests took their last step.

Batch sizes are measured, not assumed: when a shape bucket first appears the loop times a step of it
at batch sizes 1, 2, 4, ... (probe copies of its first request, thrown away) and caps the bucket
where requests x steps per second stop rising by `min_gain`; on a compute-bound device that is often
1, on a GPU much wider. Nothing here imports Ray or torch (a test checks).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
from collections.abc import AsyncIterator, Hashable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol, Union

from engines.errors import InvalidParameter, OutOfMemory
from serving.artifacts import ArtifactStore
from serving.data_plane.scheduler import Batch, StepScheduler
from serving.data_plane.stages import (
    Checkpointed,
    Checkpointing,
    Denoised,
    DenoiseEvent,
    HandedBack,
    Resumed,
    job_of,
)
from serving.metrics import Metrics, NoMetrics

if TYPE_CHECKING:
    from engines.denoiser import DenoiseRequest, DenoiseState
    from engines.stage_io import DenoisedLatents

log = logging.getLogger(__name__)

LoopItem = Union[DenoiseEvent, Denoised["DenoisedLatents"], Resumed, Checkpointed, HandedBack]  # one request's stream


class DenoiseEngine(Protocol):
    """What the loop needs of an engine (`engines.denoiser.Denoiser` is one)."""

    def prepare(self, request: DenoiseRequest) -> DenoiseState: ...

    def step(self, states: Sequence[DenoiseState]) -> Sequence[DenoiseState]: ...

    def result(self, state: DenoiseState) -> DenoisedLatents: ...

    def checkpoint(self, state: DenoiseState) -> bytes: ...

    def resume(self, state: DenoiseState, data: bytes) -> int: ...


@dataclass(frozen=True)
class BatchMeasure:
    """Whether and how long to measure new buckets (the `batching` config's measure_* keys)."""

    enabled: bool = False
    seconds: float = 3.0
    min_gain: float = 0.1


@dataclass
class _Running:
    request: DenoiseRequest
    state: DenoiseState
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # LoopItems, or an exception
    priority: int = 0
    checkpointing: Checkpointing | None = None
    checkpointed_at: float = field(default_factory=time.monotonic)  # when its last checkpoint was taken
    writing: asyncio.Task | None = None  # its checkpoint being written
    removed: bool = False  # its caller has gone: no checkpoint is written for it any more


def tokens_of(state: DenoiseState) -> int:
    """What a request adds to one forward: its rows x (video + audio latent tokens)."""
    return state.rows * (state.shape.video_tokens + state.shape.audio_frames)


class DenoiseLoop:
    def __init__(self, engine: DenoiseEngine, scheduler: StepScheduler, metrics: Metrics | None = None,
                 measure: BatchMeasure | None = None, checkpoints: ArtifactStore | None = None) -> None:
        """`checkpoints`: where requests with `Checkpointing` keep their state (None: they keep none)."""
        self.engine, self.scheduler, self.checkpoints = engine, scheduler, checkpoints
        self.metrics = metrics or NoMetrics()
        self.measure = measure or BatchMeasure()
        self.measured: dict[Hashable, dict[int, float]] = {}  # bucket -> batch size -> seconds of one step
        self.request_step_seconds: float | None = None  # moving average: a step's seconds / its requests
        self._requests: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._draining = False

    # -- requests come and go -----------------------------------------------------------------
    async def denoise(self, request: DenoiseRequest, priority: int,
                      checkpointing: Checkpointing | None = None) -> AsyncIterator[LoopItem]:
        """Add `request` (from its checkpoint, when `checkpointing` says to resume), yield what it produces, and
        free its slot however the caller leaves."""
        self.start()
        resume = checkpointing is not None and checkpointing.resume and self.checkpoints is not None
        self.add(request, priority, checkpointing, hold=resume)
        try:
            if resume:
                await self._resume(request.request_id)
            async for item in self.stream(request.request_id):
                yield item
        finally:
            running = self._requests.get(request.request_id)
            self.remove(request.request_id)
            if running is not None and running.writing is not None and not running.writing.done():
                # A checkpoint write in flight lands before the stream ends: the caller, once it has closed the
                # stream, may delete the checkpoint (a job that ended), and no write may come after.
                with contextlib.suppress(asyncio.CancelledError):  # cancelled again: the write goes on regardless
                    await asyncio.shield(running.writing)

    def add(self, request: DenoiseRequest, priority: int, checkpointing: Checkpointing | None = None, *,
            hold: bool = False) -> None:
        """Prepare `request` and queue it for steps (`hold`: not yet; `_resume` queues it once its checkpoint is
        read)."""
        if self._draining:
            raise RuntimeError("this denoiser is stopping: it takes no new request")
        if request.request_id in self._requests:
            raise ValueError(f"request {request.request_id} is already being denoised here")
        for older in [rid for rid in self._requests if job_of(rid) == job_of(request.request_id)]:
            # An earlier attempt of the same job whose dispatcher is gone: its stream has no reader left.
            log.warning("request %s supersedes %s", request.request_id, older)
            self._fail((older,), RuntimeError(f"superseded by {request.request_id}"))
            self._requests.pop(older, None)
        state = self.engine.prepare(request)
        tokens, budget = tokens_of(state), self.scheduler.max_tokens
        if budget is not None and tokens > budget:  # the front door refuses these at create
            raise InvalidParameter("size", f"{request.params.size} for {request.params.seconds:g} s",
                                   f"at most {budget} latent tokens per forward (batching.max_tokens); "
                                   f"this one needs {tokens}")
        self._requests[request.request_id] = _Running(request, state, priority=priority,
                                                      checkpointing=checkpointing if self.checkpoints else None)
        if not hold:
            self._schedule(request.request_id)

    def _schedule(self, request_id: str) -> None:
        running = self._requests[request_id]
        if running.state.done:  # resumed from the checkpoint its last step wrote: nothing left to step
            running.inbox.put_nowait(Denoised(self.engine.result(running.state)))
            return
        self.scheduler.add(request_id, running.state.shape, running.priority, tokens_of(running.state))
        self._wake.set()

    async def _resume(self, request_id: str) -> None:
        """Put the request's checkpoint into its state, then queue it; a checkpoint that is missing, corrupt or
        another model's is skipped with a log line (the request starts over, never fails for it)."""
        running = self._requests[request_id]
        assert running.checkpointing is not None and self.checkpoints is not None
        key = running.checkpointing.key
        try:
            data = await asyncio.to_thread(lambda: b"".join(self.checkpoints.read_chunks(key, 1 << 22)))
            await asyncio.to_thread(self.engine.resume, running.state, data)
            state = running.state
            running.inbox.put_nowait(Resumed(step=state.steps_done, total_steps=state.steps_total))
            log.info("request %s resumed at step %d of %d from %s", request_id, state.steps_done,
                     state.steps_total, key)
        except Exception as e:  # noqa: BLE001 - whatever the store or the bytes raise: start over
            log.warning("request %s: checkpoint %s not used (%s: %s); starting at step 0", request_id, key,
                        type(e).__name__, e)
            running.state = self.engine.prepare(running.request)  # a half-restored state is not to be trusted
        if request_id in self._requests:
            self._schedule(request_id)

    async def stream(self, request_id: str) -> AsyncIterator[LoopItem]:
        inbox = self._requests[request_id].inbox
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if isinstance(item, Denoised | HandedBack):  # always the last item
                return

    def remove(self, request_id: str) -> None:
        self.scheduler.remove(request_id)
        running = self._requests.pop(request_id, None)
        if running is not None:
            running.removed = True

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

    @property
    def max_tokens(self) -> int:
        """Latent tokens one forward holds (its scheduler's budget): what the front door checks a request against."""
        return self.scheduler.max_tokens

    @property
    def steps_per_request(self) -> float:
        """Mean denoising steps of the requests held now (0 when idle)."""
        states = [r.state for r in self._requests.values()]
        return sum(s.steps_total for s in states) / len(states) if states else 0.0

    # -- the loop -------------------------------------------------------------------------------
    def start(self) -> None:
        """Run the loop on the current event loop (once; again if it stopped)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(self.run(), name="denoise-loop")

    def check(self) -> None:
        """Raise if the loop died (a replica's health check: its streams would wait forever)."""
        if self._task is not None and self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"the denoise loop stopped: {exc!r}")

    async def run(self) -> None:
        try:
            while not self._draining:
                if await self.step_once() is None:
                    self._wake.clear()
                    await self._wake.wait()
        except Exception as e:  # a defect of the loop itself: its streams end with it instead of waiting forever
            log.exception("the denoise loop stopped")
            self._fail(list(self._requests), e)
            raise

    async def drain(self) -> int:
        """Stop at the next step boundary, checkpoint every request held here (those with `Checkpointing`) and
        end each stream with `HandedBack`: a replica told to stop hands its work over, not away. The number
        handed back."""
        self._draining = True
        self._wake.set()
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        handed = 0
        for rid, running in list(self._requests.items()):
            if running.state.done:
                continue  # its latents are on their way (a final checkpoint being written)
            self.scheduler.remove(rid)
            handed += 1
            if running.checkpointing is not None:
                self._checkpoint(running, then=HandedBack(running.state.steps_done))
            else:
                running.inbox.put_nowait(HandedBack(running.state.steps_done))
        writes = [r.writing for r in self._requests.values() if r.writing is not None]
        await asyncio.gather(*writes, return_exceptions=True)
        return handed

    async def step_once(self) -> Batch | None:
        """One step boundary; the batch that ran (None: nothing to run)."""
        batch = self.scheduler.next_batch()
        if batch is None:
            return None
        if self.measure.enabled and not self.scheduler.has_cap(batch.bucket):
            await self._measure(batch.bucket, self._requests[batch.request_ids[0]].request)
            batch = self.scheduler.next_batch()
            assert batch is not None
        await self._step(batch.bucket, batch.request_ids)
        return batch

    async def _step(self, bucket: Hashable, request_ids: tuple[str, ...]) -> None:
        states = [self._requests[rid].state for rid in request_ids]
        skipped_before = sum(s.steps_skipped for s in states)
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.engine.step, states)
        except OutOfMemory as e:
            if len(request_ids) > 1:  # the engine freed the memory: each request alone may fit
                log.warning("out of memory stepping %d requests together; stepping them one at a time", len(states))
                for rid in request_ids:
                    if rid in self._requests:
                        await self._step(bucket, (rid,))
                return
            self._fail(request_ids, e)
            return
        except Exception as e:  # noqa: BLE001 - fail these requests, keep serving the others
            log.exception("denoising step failed for %s", request_ids)
            self._fail(request_ids, e)
            return
        took = time.perf_counter() - started
        self.metrics.denoise_step(took, len(states), sum(map(tokens_of, states)))
        skipped = sum(s.steps_skipped for s in states) - skipped_before
        self.metrics.step_cache(computed=len(states) - skipped, skipped=skipped)
        per_request = took / len(states)
        self.request_step_seconds = per_request if self.request_step_seconds is None else (
            0.9 * self.request_step_seconds + 0.1 * per_request)
        self.scheduler.complete(Batch(bucket, request_ids), {s.request_id for s in states if s.done})
        now = time.monotonic()
        for state in states:
            if (running := self._requests.get(state.request_id)) is None:
                continue  # removed while its step ran
            running.inbox.put_nowait(DenoiseEvent(step=state.steps_done, total_steps=state.steps_total,
                                                  batch_size=len(states)))
            every = running.checkpointing.every_seconds if running.checkpointing is not None else None
            if state.done:
                try:
                    done = Denoised(self.engine.result(state))
                except Exception as e:  # noqa: BLE001 - fail this request, keep serving the others
                    log.exception("the result of %s could not be taken", state.request_id)
                    self._fail((state.request_id,), e)
                    continue
                if every is None:
                    running.inbox.put_nowait(done)
                else:  # always at the end: a lost decoder, or stage 2 of a two-stage job, costs no denoising
                    self._checkpoint(running, then=done)
            elif every is not None and (running.writing is None or running.writing.done()) \
                    and now - running.checkpointed_at >= every:
                self._checkpoint(running)

    def _checkpoint(self, running: _Running, then: LoopItem | None = None) -> None:
        """Take the request's state now (at a step boundary) and write it beside the steps; `Checkpointed` follows
        the write, then `then` (the stream's last item: it waits for the write). A write that fails is logged:
        the request goes on, its previous checkpoint stands."""
        assert running.checkpointing is not None and self.checkpoints is not None
        store, key, state = self.checkpoints, running.checkpointing.key, running.state
        started = time.perf_counter()
        running.checkpointed_at = time.monotonic()
        try:
            data, step = self.engine.checkpoint(state), state.steps_done
        except Exception as e:  # noqa: BLE001 - a checkpoint never fails its request
            log.warning("checkpoint of %s at step %d not taken: %s: %s", state.request_id, state.steps_done,
                        type(e).__name__, e)
            if then is not None:
                running.inbox.put_nowait(then)
            return
        previous = running.writing

        async def write() -> None:
            if previous is not None:
                await asyncio.gather(previous, return_exceptions=True)
            if running.removed:
                return
            try:
                await asyncio.to_thread(store.put_bytes, key, data)
                running.inbox.put_nowait(Checkpointed(step))
                self.metrics.checkpoint_written(len(data), time.perf_counter() - started)
            except Exception as e:  # noqa: BLE001 - a checkpoint never fails its request
                log.warning("checkpoint of %s at step %d not written: %s: %s", state.request_id, step,
                            type(e).__name__, e)
            if then is not None:
                running.inbox.put_nowait(then)

        running.writing = asyncio.get_running_loop().create_task(write(), name=f"checkpoint-{state.request_id}")

    def _fail(self, request_ids: Sequence[str], error: BaseException) -> None:
        for rid in request_ids:
            self.scheduler.remove(rid)
            if (running := self._requests.get(rid)) is not None:
                running.inbox.put_nowait(error)

    async def _measure(self, bucket: Hashable, sample: DenoiseRequest) -> None:
        """Cap `bucket` where a wider batch stops paying: time one step of probe copies of `sample`."""
        seconds: dict[int, float] = {}
        started, best_rate, cap = time.perf_counter(), 0.0, 1
        budget = self.scheduler.max_tokens

        def probes(n: int) -> list[DenoiseState]:
            return [self.engine.prepare(dataclasses.replace(sample, request_id=f"probe-{i}")) for i in range(n)]

        def timed(n: int) -> float:
            states = probes(n)
            t = time.perf_counter()
            self.engine.step(states)
            return time.perf_counter() - t

        per_request = tokens_of(self.engine.prepare(sample))
        try:
            await asyncio.to_thread(timed, 1)  # warm-up: first forwards of a shape allocate
            size = 1
            while size <= self.scheduler.max_batch_size:
                if budget is not None and size * per_request > budget:
                    break
                seconds[size] = min([await asyncio.to_thread(timed, size) for _ in range(2)])
                rate = size / seconds[size]
                if rate < best_rate * (1 + self.measure.min_gain):
                    break
                best_rate, cap = rate, size
                if time.perf_counter() - started > self.measure.seconds:
                    break
                size *= 2
        except OutOfMemory:
            pass  # the largest size tried does not fit: the cap stays below it
        self.scheduler.set_cap(bucket, cap)
        self.measured[bucket] = seconds
        log.info("bucket %s: step seconds by batch size %s -> batches capped at %d",
                 bucket, {b: round(t, 4) for b, t in seconds.items()}, cap)
        self.metrics.batch_measured(str(bucket), seconds, cap)
