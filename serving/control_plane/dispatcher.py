"""The dispatcher: takes queued jobs and drives them through encode -> denoise -> decode.

Any number of dispatchers share one job store (replicas of one cluster, or two clusters during an
upgrade). Each holds the jobs it runs with leases (see `serving.jobs.store`):

- it claims a job (priority, then arrival) with a lease under its own id while fewer than
  `max_in_flight` jobs are in progress in the whole cluster (the window all dispatchers share);
- a heartbeat renews the leases of the jobs it is working on; a job whose lease is lost (another
  dispatcher requeued it after it expired) is dropped here without another write;
- every dispatcher requeues jobs whose lease expired, so a dispatcher killed mid-job (kill -9, a
  node gone, a KubeRay upgrade deleting the old cluster) loses nothing;
- every write carries the lease and is refused when stale, so a job is finished once;
- stopping (`stop()`) hands its jobs back to the queue at once, without using an attempt.

Progress is pushed to watchers at every step (`ProgressSink`); the store, the truth for a late watcher
and for resume, gets the state changes only: queued, started, each stage change (with the step it was
reached at), the upsampling between two stages, the last step and the end. A cancel comes through the hub
(`cancel`), or, for a job whose hub did not hear it (another cluster's front door during an upgrade),
from the store's flag, read with every heartbeat. The stages are reached through a `StageClient`, so
this module imports no Ray and no torch.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.config import ScheduleConfig
from engines.errors import OutOfMemory
from engines.params import GenerationParams
from engines.two_stage import stage_one, stage_two
from serving.async_view import AsyncView, in_thread
from serving.config import QueueConfig
from serving.control_plane.progress import NoProgress, Progress, ProgressSink
from serving.data_plane.stages import Denoised, StageClient, StageUnavailable, attempt_id
from serving.errors import ErrorCode, KinoError, as_kino_error
from serving.jobs import Artifact, DispatchQueue, Job, JobStatus, Lease, Stage, StaleLease
from serving.metrics import Metrics, NoMetrics
from serving.moderation import Moderator
from serving.provenance.claim import Claim, prompt_sha256

log = logging.getLogger(__name__)

PRUNE_SECONDS = 3600.0  # how often a dispatcher deletes finished jobs' old progress events

# Share of the progress bar each stage fills.
_ENCODED, _DENOISE_SPAN, _DECODING = 0.03, 0.87, 0.92


def dispatcher_id() -> str:
    """A dispatcher's lease owner name: unique per process, readable in logs and the job record."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class _CancelRequested(Exception):
    pass


class _Stop(Exception):
    """This dispatcher lets go of the job: `hand_back` requeues it, else another dispatcher has it."""

    def __init__(self, hand_back: bool) -> None:
        self.hand_back = hand_back


@dataclass
class _Held:
    """A job this dispatcher runs: its lease and when its progress was last written."""

    job: Job
    lease: Lease
    task: asyncio.Task | None = None
    written_stage: Stage | None = None
    step: int | None = None  # the last denoising step pushed: where a cancelled or failed job's record ends
    stop: _Stop | None = None  # set when the task is cancelled to let go of the job
    cancelling: bool = False  # a client cancel is stopping it
    settling: bool = False  # its end (completed, failed, cancelled) is being recorded


@dataclass
class _DenoiseRun:
    """The denoise part of one job's attempt: its steps (stage 1, stage 2 of a two-stage job, else 0), how much
    a stage-2 step costs against a stage-1 step (its tokens: 4x), and the ETA over both."""

    started: float
    decode_seconds: float
    steps: tuple[int, int] = (0, 0)
    cost_ratio: float = 1.0
    first_step: float | None = None

    def plan(self, stage_one: int, stage_two: int, cost_ratio: float = 1.0) -> None:
        self.steps, self.cost_ratio = (stage_one, stage_two), cost_ratio

    @property
    def total(self) -> int:
        return self.steps[0] + self.steps[1]

    def _cost(self, step: int) -> float:
        one = min(step, self.steps[0])
        return one + (step - one) * self.cost_ratio

    def done_share(self, step: int) -> float:
        """Share of the denoise work done after `step` steps of the job."""
        return self._cost(step) / self._cost(self.total)

    def eta(self, step: int) -> float:
        elapsed = time.monotonic() - self.started
        done = self._cost(step)
        return elapsed / done * (self._cost(self.total) - done) + self.decode_seconds


class Dispatcher:
    def __init__(self, store: DispatchQueue, stages: StageClient, config: QueueConfig,
                 on_finished: Callable[[Job], str | None] | None = None, metrics: Metrics | None = None,
                 moderator: Moderator | None = None, progress: ProgressSink | None = None,
                 owner: str | None = None, window: Callable[[], int] | None = None,
                 schedule: ScheduleConfig | None = None, events_retention_seconds: float = 30 * 86400) -> None:
        """`window`: how many jobs the stages hold now (all dispatchers together), within `max_in_flight`;
        `schedule`: the model's (how many steps the refine of a two-stage job takes);
        `events_retention_seconds`: how long a finished job's progress events are kept (storage config)."""
        self.store, self.stages, self.config = AsyncView(store), stages, config
        self.moderator = moderator  # checks what the prompt enhancer writes, as the front door checked the prompt
        self.on_finished = on_finished  # e.g. tell a cameo's owner; returns a topic whose watchers to nudge
        self.metrics = metrics or NoMetrics()
        self.progress = progress or NoProgress()
        self.owner = owner or dispatcher_id()
        self.window = window or (lambda: config.max_in_flight)
        self.schedule = schedule or ScheduleConfig()
        self.events_retention_seconds = events_retention_seconds
        self._held: dict[str, _Held] = {}
        self._stopping = False
        self._wake = asyncio.Event()
        self._decode_seconds: float | None = None  # moving average, for ETAs

    # -- control -------------------------------------------------------------------------
    async def run(self) -> None:
        """Keep the stages fed, the leases renewed and expired leases reaped, until cancelled. The leases are
        renewed by a task of their own, so a long round (claiming a full window on a busy database) never
        delays a heartbeat past the lease."""
        log.info("dispatcher %s started", self.owner)
        heartbeat = asyncio.create_task(self._renew_forever(), name=f"heartbeat-{self.owner}")
        try:
            await self._dispatch_forever()
        finally:
            heartbeat.cancel()

    async def _renew_forever(self) -> None:
        while True:
            try:
                await self._heartbeat()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop renewing; retry next beat
                log.exception("lease renewal failed; retrying")
            await asyncio.sleep(self.config.heartbeat_seconds)

    async def _dispatch_forever(self) -> None:
        c = self.config
        due = {"reap": 0.0, "counts": 0.0, "prune": 0.0}
        while True:
            try:
                now = time.monotonic()
                if now >= due["reap"]:
                    await self._reap()
                    due["reap"] = now + c.heartbeat_seconds
                if now >= due["prune"]:
                    pruned = await self.store.prune_events(time.time() - self.events_retention_seconds)
                    due["prune"] = now + (1.0 if pruned else PRUNE_SECONDS)  # a backlog goes batch by batch
                    if pruned:
                        log.info("pruned %d progress events of jobs that ended over %.0f days ago", pruned,
                                 self.events_retention_seconds / 86400)
                await self._fill()
                if now >= due["counts"]:
                    counts = await self.store.count_by_status(JobStatus.QUEUED, JobStatus.IN_PROGRESS)
                    self.metrics.job_counts(counts[JobStatus.QUEUED], counts[JobStatus.IN_PROGRESS])
                    due["counts"] = now + 1.0
            except Exception:  # noqa: BLE001 - a store hiccup must not stop the loop; retry next round
                log.exception("dispatch round failed; retrying")
            self._wake.clear()
            timeout = max(0.0, min(c.poll_seconds, due["reap"] - time.monotonic()))
            try:
                await asyncio.wait_for(self._wake.wait(), timeout=timeout)
            except TimeoutError:
                pass

    def wake(self) -> None:
        """A job was queued: look now instead of at the next poll."""
        self._wake.set()

    async def cancel(self, job_id: str) -> bool:
        """Stop a running job within one denoising step (the store already holds the request)."""
        held = self._held.get(job_id)
        if held is None or held.task is None:
            return False
        if not held.cancelling and not held.settling and held.stop is None:
            # Once, and never while the job's end is being recorded: that would interrupt the
            # recording and leave the job in progress until its lease expired.
            held.cancelling = True
            held.task.cancel()
        return True

    async def stop(self) -> None:
        """Claim nothing more and hand every job this dispatcher runs back to the queue (it is stopping: a
        downscale, an upgrade)."""
        self._stopping = True
        tasks = [self._let_go(h, hand_back=True) for h in list(self._held.values())]
        await asyncio.gather(*[t for t in tasks if t is not None], return_exceptions=True)

    @property
    def job_ids(self) -> list[str]:
        return list(self._held)

    async def _fill(self) -> None:
        while not self._stopping:
            job = await self.store.claim_next(self.owner, self.config.lease_seconds,
                                              max_in_progress=min(self.config.max_in_flight, self.window()))
            if job is None:
                return
            assert job.lease is not None
            if job.started_at is not None:
                self.metrics.queue_wait(max(0.0, job.started_at - job.created_at))
            held = _Held(job, job.lease)
            self._held[job.id] = held
            held.task = asyncio.create_task(self._run(held), name=f"job-{job.id}")
            held.task.add_done_callback(lambda t, jid=job.id: self._done(jid, t))
            self.progress.publish(Progress.of_job(job, None, "started"))

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs being worked on; drop those another dispatcher now holds."""
        working = [jid for jid, h in self._held.items() if h.stop is None]
        still = await self.store.renew(self.owner, working, self.config.lease_seconds)
        for jid in set(working) - still:
            held = self._held.get(jid)
            if held is not None and not held.settling:
                log.warning("job %s: lease lost (it expired and was requeued); dropping it here", jid)
                self._let_go(held, hand_back=False)
        for jid in await self.store.cancels_requested(still) if still else ():
            await self.cancel(jid)  # flagged in the store, not heard through this cluster's hub

    async def _reap(self) -> None:
        """Requeue jobs whose lease expired, whoever held them."""
        for job in await self.store.reap_expired(self.config.max_attempts):
            log.warning("job %s: %s", job.id, "lease expired; " + job.status.value)
            self.progress.publish(Progress.of_job(job, None, "lease expired"))
            if job.status.terminal:
                await self._finished(job)
        self._wake.set()

    def _let_go(self, held: _Held, *, hand_back: bool) -> asyncio.Task | None:
        if held.task is None or held.task.done() or held.settling:
            return None
        held.stop = _Stop(hand_back)
        held.task.cancel()
        return held.task

    def _done(self, job_id: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: task ended with %r; its lease will expire and it is requeued", job_id, task.exception())
        self._held.pop(job_id, None)
        self._wake.set()

    # -- one job ---------------------------------------------------------------------------
    async def _run(self, held: _Held) -> None:
        job = held.job
        try:
            for attempt in range(1, self.config.max_attempts + 1):
                try:
                    artifact = await self._stages(held, job.generation)
                    break
                except StageUnavailable as e:
                    if attempt == self.config.max_attempts:
                        raise
                    log.warning("job %s: %s; retrying (attempt %d of %d)", job.id, e, attempt + 1,
                                self.config.max_attempts)
                    await self._progress(held, Stage.ENCODING, message=f"retrying after: {e}")
                    await asyncio.sleep(min(2.0 * attempt, 5.0))
            held.settling = True
            done = await self.store.finish(held.lease, JobStatus.COMPLETED, artifact=artifact)
            log.info("job %s completed: %s (%d bytes)", job.id, artifact.key, artifact.size_bytes)
            await self._finished(done)
        except asyncio.CancelledError:
            if held.stop is not None:
                await self._stopped(held)
            elif held.cancelling:
                await self._finish_cancelled(held)
            else:
                raise  # the event loop is closing: the lease expires and another dispatcher resumes it
        except _CancelRequested:
            held.settling = True
            await self._finish_cancelled(held)
        except StaleLease:
            log.warning("job %s: its lease is no longer ours; dropping it here", job.id)
        except StageUnavailable as e:
            await self._fail(held, "unavailable", f"a stage stayed unavailable after "
                                                  f"{self.config.max_attempts} attempts: {e}")
        except OutOfMemory as e:
            await self._fail(held, "out_of_memory", str(e))
        except Exception as e:  # noqa: BLE001 - every failure is recorded with a reason
            err: KinoError = as_kino_error(e)
            if err.code == ErrorCode.INTERNAL:
                log.exception("job %s failed", job.id)
                await self._fail(held, "internal", f"{type(e).__name__}: {e}")
            else:
                await self._fail(held, err.code.value, err.message)

    async def _stages(self, held: _Held, params: GenerationParams) -> Artifact:
        job = held.job
        params = await self._enhance(held, params)
        await self._progress(held, Stage.ENCODING, progress=0.0, message="encoding prompt")
        embedding = self.stages.encode(job.id, params)
        conditioning = self.stages.condition(job.id, params, job.conditioning)
        run = _DenoiseRun(started=time.monotonic(), decode_seconds=self._decode_seconds or 0.0)
        if params.two_stage:
            one, two = stage_one(params), stage_two(params, self.schedule)
            run.plan(one.steps, two.steps, cost_ratio=(params.width * params.height) / (one.width * one.height))
            low = await self._denoise(held, run, one, embedding, conditioning, stage=1)
            await self._progress(held, Stage.DENOISING, step=one.steps, total_steps=run.total, message="upsampling",
                                 progress=_ENCODED + _DENOISE_SPAN * run.done_share(one.steps), milestone=True)
            latents = await self._denoise(held, run, two, embedding, self.stages.upsample(job.id, low), stage=2)
        else:
            run.plan(params.steps, 0)
            latents = await self._denoise(held, run, params, embedding, conditioning, stage=1)
        self.metrics.stage_seconds("denoise", time.monotonic() - (run.first_step or run.started))
        await self._progress(held, Stage.DECODING, step=run.total, total_steps=run.total,
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

    async def _denoise(self, held: _Held, run: _DenoiseRun, params: GenerationParams, embedding: Any,
                       conditioning: Any, *, stage: int) -> Any:
        """One denoise request of the job (a two-stage job makes two), its steps pushed as progress counted
        over the whole job; returns the latents' reference."""
        job, latents = held.job, None
        offset = 0 if stage == 1 else run.steps[0]
        stream = self.stages.denoise(attempt_id(job.id, held.lease.generation, stage), params, embedding,
                                     job.priority, conditioning)
        try:
            async for ev in stream:
                if isinstance(ev, Denoised):
                    latents = ev.latents
                    continue
                if run.first_step is None:
                    run.first_step = time.monotonic()
                    self.metrics.stage_seconds("encode", run.first_step - run.started)  # encode + wait for a slot
                step = offset + ev.step
                message = f"stage {stage} of 2: step {ev.step}/{ev.total_steps}" if run.steps[1] else ""
                await self._progress(held, Stage.DENOISING, step=step, total_steps=run.total,
                                     progress=_ENCODED + _DENOISE_SPAN * run.done_share(step),
                                     eta_seconds=run.eta(step), batch_size=ev.batch_size, message=message)
        finally:
            await stream.aclose()
        if latents is None:
            raise StageUnavailable("the denoiser ended the stream without latents")
        return latents

    async def _enhance(self, held: _Held, params: GenerationParams) -> GenerationParams:
        """The params with the enhanced prompt, when the request asked for one. A rewrite is
        stored before it is used, so a resumed job encodes the same text again."""
        if not params.enhance_prompt:
            return params
        job = held.job
        text = job.enhanced_prompt
        if text is None:
            await self._progress(held, Stage.ENCODING, progress=0.0, message="enhancing prompt")
            text = await self.stages.enhance(job.id, params)
            message = "prompt enhanced"
            verdict = self.moderator.check(text, uses_cameo=job.conditioning.cameo_id is not None) \
                if self.moderator is not None else None
            if verdict is not None and not verdict.allowed:
                text = params.prompt
                message = (f"enhanced prompt rejected by moderation (category {verdict.category}); "
                           "using the prompt as written")
            # The job as stored from now on: a retry within this claim (a stage replica lost) encodes the
            # same rewrite instead of asking the enhancer again.
            held.job = await self.store.set_enhanced_prompt(held.lease, text, message)
            self._push(held, Stage.ENCODING, message=message)
        return dataclasses.replace(params, prompt=text)

    async def _progress(self, held: _Held, stage: Stage, *, milestone: bool = False, **values: Any) -> None:
        """Push every event; write it to the store only on a stage change, the last step, or a `milestone`
        (the upsampling between two stages): steps travel by push (the write also says whether a cancel
        was requested)."""
        self._push(held, stage, **values)
        if stage == Stage.DENOISING and "step" in values:
            held.step = values["step"]
        last_step = stage == Stage.DENOISING and values.get("step") == values.get("total_steps")
        if stage == held.written_stage and not last_step and not milestone:
            return
        held.written_stage = stage
        if await self.store.record_progress(held.lease, stage=stage, **values):
            raise _CancelRequested()

    def _push(self, held: _Held, stage: Stage, **values: Any) -> None:
        self.progress.publish(Progress(video_id=held.job.id, status=JobStatus.IN_PROGRESS, stage=stage,
                                       at=time.time(), **values))

    async def _stopped(self, held: _Held) -> None:
        assert held.stop is not None
        if not held.stop.hand_back:
            return  # another dispatcher holds it now
        try:
            await asyncio.shield(self.store.requeue(held.lease, f"handed back: dispatcher {self.owner} is stopping",
                                                    count_attempt=False))
            log.info("job %s handed back to the queue", held.job.id)
        except StaleLease:
            pass

    async def _finish_cancelled(self, held: _Held) -> None:
        held.settling = True
        try:
            current = await self.store.get(held.job.id)
            done = await self.store.finish(held.lease, JobStatus.CANCELLED,
                                           error_code=current.cancel_reason or "cancelled",
                                           error_message=current.error_message or "cancelled by the client",
                                           step=held.step)
            await self._finished(done)
        except StaleLease:
            pass

    async def _fail(self, held: _Held, code: str, message: str) -> None:
        held.settling = True
        try:
            done = await self.store.finish(held.lease, JobStatus.FAILED, error_code=code, error_message=message,
                                           step=held.step)
            await self._finished(done)
        except StaleLease:
            pass

    async def _finished(self, job: Job) -> None:
        self.progress.publish(Progress.of_job(job, None, job.error_message or job.status.value))
        self.metrics.job_finished(job.tenant, job.status.value, max(0.0, (job.completed_at or time.time())
                                                                    - job.created_at))
        if self.on_finished is not None:
            try:
                if (topic := await in_thread(self.on_finished, job)) is not None:
                    self.progress.nudge(topic)
            except Exception:  # noqa: BLE001 - a notification must not undo a finished job
                log.exception("on_finished hook failed for %s", job.id)
