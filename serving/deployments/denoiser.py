"""Denoiser deployment: one step loop per replica, driven by the StepScheduler.

Each `denoise` call adds a request to the scheduler and streams one event per step; the loop
asks the scheduler for a batch at every step boundary and runs one transformer forward for
it. Closing a stream (the dispatcher cancels a job) removes the request before the next step.
The finished latents are the stream's last item, announced by a `LATENTS_FOLLOW` event, so the
caller can hand that item's object reference to the Decoder without fetching it. (Yielding a
`ray.put` reference inside an item instead loses the reference count under load: Ray bug
ray-project/ray#58080; we measured decodes failing with ReferenceCountingAssertionError.)
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from typing import Any

from ray import serve

from engines.denoiser import Denoiser, DenoiseRequest, DenoiseState
from engines.params import GenerationParams
from engines.stage_io import PromptEmbedding, VideoConditioning
from serving.config import load_config
from serving.deployments.ray_metrics import RayMetrics
from serving.scheduler import StepScheduler
from serving.stages import LATENTS_FOLLOW, DenoiseEvent, LatentsFollow

log = logging.getLogger(__name__)


@serve.deployment(name="Denoiser")
class DenoiserDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = load_config(config)
        self.engine = Denoiser(cfg.model)
        b = cfg.batching
        self.scheduler = StepScheduler(b.max_batch_size, b.max_running, policy=b.policy,
                                       rotate_buckets=b.rotate_buckets)
        self._states: dict[str, DenoiseState] = {}
        self._inbox: dict[str, asyncio.Queue] = {}
        self._wake = asyncio.Event()
        self._loop: asyncio.Task | None = None
        self.metrics = RayMetrics()

    async def denoise(self, request_id: str, params: GenerationParams, embedding: PromptEmbedding,
                      priority: int, conditioning: VideoConditioning | None = None) -> AsyncIterator[Any]:
        if self._loop is None or self._loop.done():
            self._loop = asyncio.create_task(self._step_loop(), name="step-loop")
        if request_id in self.scheduler:
            raise ValueError(f"request {request_id} is already being denoised here")
        state = self.engine.prepare(DenoiseRequest(request_id, params, embedding, conditioning))
        inbox: asyncio.Queue = asyncio.Queue()
        self._states[request_id], self._inbox[request_id] = state, inbox
        self.scheduler.add(request_id, state.shape, priority, state.steps_total)
        self._wake.set()
        try:
            while True:
                item = await inbox.get()
                if isinstance(item, BaseException):
                    raise item
                yield item
                if not isinstance(item, DenoiseEvent | LatentsFollow):  # the latents: always the last item
                    return
        finally:  # finished, failed, or the caller went away: free the slot before the next step
            self.scheduler.remove(request_id)
            self._states.pop(request_id, None)
            self._inbox.pop(request_id, None)

    async def _step_loop(self) -> None:
        while True:
            batch = self.scheduler.next_batch()
            if batch is None:
                self._wake.clear()
                await self._wake.wait()
                continue
            states = [self._states[r] for r in batch.request_ids]
            t = time.perf_counter()
            try:
                await asyncio.to_thread(self.engine.step, states)
            except Exception as e:  # noqa: BLE001 - fail these requests, keep serving the others
                log.exception("denoising step failed for %s", batch.request_ids)
                for rid in batch.request_ids:
                    self.scheduler.remove(rid)
                    if (q := self._inbox.get(rid)) is not None:
                        q.put_nowait(e)
                continue
            tokens = sum(s.rows * (s.shape.video_tokens + s.shape.audio_frames) for s in states)
            self.metrics.denoise_step(time.perf_counter() - t, len(batch), tokens)
            finished = set(self.scheduler.complete(batch))
            for rid, state in zip(batch.request_ids, states, strict=True):
                if (q := self._inbox.get(rid)) is None:
                    continue  # cancelled while its step ran
                q.put_nowait(DenoiseEvent(step=state.steps_done, total_steps=state.steps_total, batch_size=len(batch)))
                if rid in finished:
                    q.put_nowait(LATENTS_FOLLOW)
                    q.put_nowait(self.engine.result(state))

    def stats(self) -> dict[str, int]:
        return {"running": self.scheduler.num_running, "waiting": self.scheduler.num_waiting}
