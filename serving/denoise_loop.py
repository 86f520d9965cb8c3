"""The Denoiser's step loop, free of its transport (as vLLM keeps EngineCore's loop apart from its server).

One `DenoiseLoop` per Denoiser replica. Requests join and leave at any time; at every step
boundary the `StepScheduler` picks the requests that share the next batched forward.

    loop = DenoiseLoop(engine, scheduler, metrics)
    async for item in loop.denoise(request, priority):   # add + stream + remove
        ...  # a DenoiseEvent per step, then LATENTS_FOLLOW, then the DenoisedLatents (the last item)

The pieces, for callers (and tests) that drive it by hand:
- `add(request, priority)`: prepare the request's state (its own noise and schedule) and queue it;
- `stream(request_id)`: what the request produces, ending with its latents (or raising its error);
- `step_once()`: one step boundary: a batch from the scheduler, one engine step, events out;
- `remove(request_id)`: drop a request before the next step (a cancel, or its caller went away);
- `run()`: step while there is work, sleep while there is none (`denoise` starts it).

A failing step fails only the requests of its batch; every other request keeps its state and goes
on. Step counts live in one place, each request's engine state: the loop tells the scheduler which
requests took their last step. Nothing here imports Ray (a test checks).
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Protocol

from serving.metrics import Metrics, NoMetrics
from serving.scheduler import Batch, StepScheduler
from serving.stages import LATENTS_FOLLOW, DenoiseEvent, LatentsFollow

if TYPE_CHECKING:
    from engines.denoiser import DenoiseRequest, DenoiseState
    from engines.stage_io import DenoisedLatents

log = logging.getLogger(__name__)


class DenoiseEngine(Protocol):
    """What the loop needs of an engine (`engines.denoiser.Denoiser` is one)."""

    def prepare(self, request: DenoiseRequest) -> DenoiseState: ...

    def step(self, states: Sequence[DenoiseState]) -> Sequence[DenoiseState]: ...

    def result(self, state: DenoiseState) -> DenoisedLatents: ...


@dataclass
class _Running:
    state: DenoiseState
    inbox: asyncio.Queue = field(default_factory=asyncio.Queue)  # events, the latents, or an exception


class DenoiseLoop:
    def __init__(self, engine: DenoiseEngine, scheduler: StepScheduler, metrics: Metrics | None = None) -> None:
        self.engine, self.scheduler = engine, scheduler
        self.metrics = metrics or NoMetrics()
        self._requests: dict[str, _Running] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None

    # -- requests come and go -----------------------------------------------------------------
    async def denoise(self, request: DenoiseRequest, priority: int) -> AsyncIterator[Any]:
        """Add `request`, yield what it produces, and free its slot however the caller leaves."""
        self.start()
        self.add(request, priority)
        try:
            async for item in self.stream(request.request_id):
                yield item
        finally:
            self.remove(request.request_id)

    def add(self, request: DenoiseRequest, priority: int) -> None:
        if request.request_id in self._requests:
            raise ValueError(f"request {request.request_id} is already being denoised here")
        state = self.engine.prepare(request)
        self._requests[request.request_id] = _Running(state)
        self.scheduler.add(request.request_id, state.shape, priority)
        self._wake.set()

    async def stream(self, request_id: str) -> AsyncIterator[Any]:
        inbox = self._requests[request_id].inbox
        while True:
            item = await inbox.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if not isinstance(item, DenoiseEvent | LatentsFollow):  # the latents: always the last item
                return

    def remove(self, request_id: str) -> None:
        self.scheduler.remove(request_id)
        self._requests.pop(request_id, None)

    def __contains__(self, request_id: str) -> bool:
        return request_id in self._requests

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
        while True:
            if await self.step_once() is None:
                self._wake.clear()
                await self._wake.wait()

    async def step_once(self) -> Batch | None:
        """One step boundary; the batch that ran (None: nothing to run)."""
        batch = self.scheduler.next_batch()
        if batch is None:
            return None
        states = [self._requests[rid].state for rid in batch.request_ids]
        started = time.perf_counter()
        try:
            await asyncio.to_thread(self.engine.step, states)
        except Exception as e:  # noqa: BLE001 - fail these requests, keep serving the others
            log.exception("denoising step failed for %s", batch.request_ids)
            for rid in batch.request_ids:
                self.scheduler.remove(rid)
                if (running := self._requests.get(rid)) is not None:
                    running.inbox.put_nowait(e)
            return batch
        tokens = sum(s.rows * (s.shape.video_tokens + s.shape.audio_frames) for s in states)
        self.metrics.denoise_step(time.perf_counter() - started, len(batch), tokens)
        self.scheduler.complete(batch, {s.request_id for s in states if s.done})
        for state in states:
            if (running := self._requests.get(state.request_id)) is None:
                continue  # removed while its step ran
            running.inbox.put_nowait(DenoiseEvent(step=state.steps_done, total_steps=state.steps_total,
                                                  batch_size=len(batch)))
            if state.done:
                running.inbox.put_nowait(LATENTS_FOLLOW)
                running.inbox.put_nowait(self.engine.result(state))
        return batch
