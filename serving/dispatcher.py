"""The dispatcher: takes queued jobs and drives them through encode -> denoise -> decode.

It owns in-progress jobs through a store epoch (see `serving.jobs.store`): on start it takes a
new epoch, which puts every job left in progress by a dead dispatcher back in the queue, and
then claims jobs in priority, then arrival order, up to `max_in_flight` at once. Every state
change is written to the store before it is acted on.

The stages are reached through a `StageClient` (Ray Serve handles in the cluster), so this
module imports no Ray and no torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import time
from collections.abc import Callable
from typing import Any

from engines.params import GenerationParams
from serving.async_view import AsyncView, in_thread
from serving.config import QueueConfig
from serving.errors import ErrorCode, KinoError, as_kino_error
from serving.jobs import Artifact, DispatchQueue, Job, JobStatus, Stage, StaleEpoch
from serving.metrics import Metrics, NoMetrics
from serving.moderation import Moderator
from serving.provenance.claim import Claim, prompt_sha256
from serving.stages import StageClient, StageUnavailable

log = logging.getLogger(__name__)

# Share of the progress bar each stage fills.
_ENCODED, _DENOISE_SPAN, _DECODING = 0.03, 0.87, 0.92


class _CancelRequested(Exception):
    pass


class Dispatcher:
    def __init__(self, store: DispatchQueue, stages: StageClient, config: QueueConfig,
                 on_finished: Callable[[Job], None] | None = None, metrics: Metrics | None = None,
                 moderator: Moderator | None = None) -> None:
        self.store, self.stages, self.config = AsyncView(store), stages, config
        self.moderator = moderator  # checks what the prompt enhancer writes, as the front door checked the prompt
        self.on_finished = on_finished  # e.g. tell a cameo's owner
        self.metrics = metrics or NoMetrics()
        self.epoch: int | None = None
        self._tasks: dict[str, asyncio.Task] = {}
        self._cancelling: set[str] = set()
        self._settling: set[str] = set()  # jobs whose end (completed, failed, cancelled) is being recorded
        self._wake = asyncio.Event()
        self._decode_seconds: float | None = None  # moving average, for ETAs

    # -- control -------------------------------------------------------------------------
    async def run(self) -> None:
        """Resume what a previous dispatcher left, then keep the stages fed until cancelled."""
        self.epoch = await self.store.begin_epoch()
        log.info("dispatcher epoch %d started", self.epoch)
        last_reconcile = last_counts = time.monotonic()
        while True:
            try:
                await self._fill()
                if time.monotonic() - last_counts > 1.0:
                    counts = await self.store.count_by_status()
                    self.metrics.job_counts(counts[JobStatus.QUEUED], counts[JobStatus.IN_PROGRESS])
                    last_counts = time.monotonic()
                if time.monotonic() - last_reconcile > self.config.reconcile_seconds:
                    await self._reconcile()
                    last_reconcile = time.monotonic()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop the loop; retry next round
                log.exception("dispatch round failed; retrying")
            self._wake.clear()
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=self.config.poll_seconds)
            except TimeoutError:
                pass

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    async def cancel(self, job_id: str) -> bool:
        """Stop a running job within one denoising step (the store already holds the request)."""
        task = self._tasks.get(job_id)
        if task is None:
            return False
        if job_id not in self._cancelling and job_id not in self._settling:
            # Once, and never while the job's end is being recorded: that would interrupt the
            # recording and leave the job in progress until reconcile requeued it.
            self._cancelling.add(job_id)
            task.cancel()
        return True

    async def _fill(self) -> None:
        while len(self._tasks) < self.config.max_in_flight:
            job = await self.store.claim_next(self.epoch)
            if job is None:
                return
            if job.started_at is not None:
                self.metrics.queue_wait(max(0.0, job.started_at - job.created_at))
            task = asyncio.create_task(self._run(job), name=f"job-{job.id}")
            self._tasks[job.id] = task
            task.add_done_callback(lambda t, jid=job.id: self._done(jid, t))

    async def _reconcile(self) -> None:
        """Safety net: a job of this epoch in progress with no task here would wait forever; requeue it."""
        for job_id in await self.store.in_progress(self.epoch):
            if job_id not in self._tasks:
                log.error("job %s was in progress with no task; requeueing it", job_id)
                try:
                    await self.store.requeue(job_id, self.epoch,
                                            "requeued: its dispatcher task ended without recording a result")
                except StaleEpoch:
                    pass

    def _done(self, job_id: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: task ended with %r; reconcile will requeue it", job_id, task.exception())
        self._tasks.pop(job_id, None)
        self._cancelling.discard(job_id)
        self._settling.discard(job_id)
        self._wake.set()

    # -- one job ---------------------------------------------------------------------------
    async def _run(self, job: Job) -> None:
        assert self.epoch is not None
        epoch = self.epoch
        try:
            params = job.generation
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    artifact = await self._stages(job, params, epoch)
                    break
                except StageUnavailable as e:
                    if attempt == self.config.max_attempts:
                        raise
                    log.warning("job %s: %s; retrying (attempt %d of %d)", job.id, e, attempt + 1,
                                self.config.max_attempts)
                    await self._progress(job, epoch, Stage.ENCODING, message=f"retrying after: {e}")
                    await asyncio.sleep(min(2.0 * attempt, 5.0))
            self._settling.add(job.id)
            done = await self.store.finish(job.id, epoch, JobStatus.COMPLETED, artifact=artifact)
            log.info("job %s completed: %s (%d bytes)", job.id, artifact.key, artifact.size_bytes)
            await self._finished(done)
        except asyncio.CancelledError:
            if job.id not in self._cancelling:
                raise  # the dispatcher is stopping: the job stays in progress and is resumed later
            await self._finish_cancelled(job, epoch)
        except _CancelRequested:
            self._settling.add(job.id)
            await self._finish_cancelled(job, epoch)
        except StaleEpoch:
            log.warning("job %s now belongs to a newer dispatcher; dropping it here", job.id)
        except StageUnavailable as e:
            self._settling.add(job.id)
            await self._fail(job, epoch, "unavailable", f"a stage stayed unavailable after "
                                                        f"{self.config.max_attempts} attempts: {e}")
        except Exception as e:  # noqa: BLE001 - every failure is recorded with a reason
            self._settling.add(job.id)
            err: KinoError = as_kino_error(e)
            if err.code == ErrorCode.INTERNAL:
                log.exception("job %s failed", job.id)
                await self._fail(job, epoch, "internal", f"{type(e).__name__}: {e}")
            else:
                await self._fail(job, epoch, err.code.value, err.message)

    async def _stages(self, job: Job, params: GenerationParams, epoch: int) -> Artifact:
        params = await self._enhance(job, params, epoch)
        await self._progress(job, epoch, Stage.ENCODING, progress=0.0, message="encoding prompt")
        embedding = self.stages.encode(job.id, params)
        conditioning = self.stages.condition(job.id, params, job.conditioning)
        started = time.monotonic()
        first_step: float | None = None
        latents = None
        stream = self.stages.denoise(job.id, params, embedding, job.priority, conditioning)
        try:
            async for ev in stream:
                if ev.latents is not None:
                    latents = ev.latents
                    continue
                if first_step is None:
                    first_step = time.monotonic()
                    self.metrics.stage_seconds("encode", first_step - started)  # encode + wait for a slot
                elapsed = time.monotonic() - started
                eta = elapsed / ev.step * (ev.total_steps - ev.step) + (self._decode_seconds or 0.0)
                await self._progress(job, epoch, Stage.DENOISING, step=ev.step, total_steps=ev.total_steps,
                                     progress=_ENCODED + _DENOISE_SPAN * ev.step / ev.total_steps,
                                     eta_seconds=eta, batch_size=ev.batch_size)
        finally:
            await stream.aclose()
        if latents is None:
            raise StageUnavailable("the denoiser ended the stream without latents")
        self.metrics.stage_seconds("denoise", time.monotonic() - (first_step or started))
        await self._progress(job, epoch, Stage.DECODING, step=params.steps, total_steps=params.steps,
                             progress=_DECODING, eta_seconds=self._decode_seconds, message="decoding")
        t = time.monotonic()
        claim = Claim(video_id=job.id, model=job.model, prompt_sha256=prompt_sha256(params.prompt),
                      parent_video_id=job.conditioning.parent_id)
        result = await self.stages.decode(job.id, params, latents, f"{job.tenant}/{job.id}.mp4", claim,
                                          job.conditioning.parent_key)
        took = time.monotonic() - t
        self.metrics.stage_seconds("decode", took)
        self._decode_seconds = took if self._decode_seconds is None else 0.8 * self._decode_seconds + 0.2 * took
        return result

    async def _enhance(self, job: Job, params: GenerationParams, epoch: int) -> GenerationParams:
        """The params with the enhanced prompt, when the request asked for one. A rewrite is
        stored before it is used, so a resumed job encodes the same text again."""
        if not params.enhance_prompt:
            return params
        text = job.enhanced_prompt
        if text is None:
            await self._progress(job, epoch, Stage.ENCODING, progress=0.0, message="enhancing prompt")
            text = await self.stages.enhance(job.id, params)
            message = "prompt enhanced"
            verdict = self.moderator.check(text, uses_cameo=job.conditioning.cameo_id is not None) \
                if self.moderator is not None else None
            if verdict is not None and not verdict.allowed:
                text = params.prompt
                message = (f"enhanced prompt rejected by moderation (category {verdict.category}); "
                           "using the prompt as written")
            await self.store.set_enhanced_prompt(job.id, epoch, text, message)
        return dataclasses.replace(params, prompt=text)

    async def _progress(self, job: Job, epoch: int, stage: Stage, **values: Any) -> None:
        cancel = await self.store.record_progress(job.id, epoch, stage=stage, **values)
        if cancel:
            raise _CancelRequested()

    async def _finish_cancelled(self, job: Job, epoch: int) -> None:
        try:
            current = await self.store.get(job.id)
            done = await self.store.finish(job.id, epoch, JobStatus.CANCELLED,
                                           error_code=current.cancel_reason or "cancelled",
                                           error_message=current.error_message or "cancelled by the client")
            await self._finished(done)
        except StaleEpoch:
            pass

    async def _fail(self, job: Job, epoch: int, code: str, message: str) -> None:
        try:
            done = await self.store.finish(job.id, epoch, JobStatus.FAILED, error_code=code,
                                           error_message=message)
            await self._finished(done)
        except StaleEpoch:
            pass

    async def _finished(self, job: Job) -> None:
        self.metrics.job_finished(job.tenant, job.status.value, max(0.0, (job.completed_at or time.time())
                                                                    - job.created_at))
        if self.on_finished is not None:
            try:
                await in_thread(self.on_finished, job)
            except Exception:  # noqa: BLE001 - a notification must not undo a finished job
                log.exception("on_finished hook failed for %s", job.id)
