"""One claimed job's walk through the stages to its end: the job runner a dispatcher hands each job it holds.

    encode (and condition) -> denoise (two requests for a two-stage job) -> decode -> completed
                                                         | failed with a reason | cancelled | handed back

A stage replica lost under the job is retried within the claim (`queue.max_attempts`), from the job's denoise
checkpoint when it has one (`JobCheckpoints`: the Denoiser writes it, the runner records it under the lease, a
retried attempt or a later claim resumes from it, and it is deleted when the job ends); the end is
recorded under the job's lease, so a runner whose lease another dispatcher took writes nothing. Progress
is pushed at every step (`ProgressSink`); the store gets the state changes only: each stage change (with
the step it was reached at), the upsampling between two stages, the last step and the end. The stages are
reached through a `StageClient`: nothing here imports Ray or torch.

The lease side (claiming, renewing, reaping, letting go) is the dispatcher's (serving/control_plane/dispatcher.py);
the two share a job's `Held` record, whose `HeldState` is the one place a held job's state lives.
"""

from __future__ import annotations

import asyncio
import dataclasses
import enum
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from engines.config import ScheduleConfig
from engines.errors import OutOfMemory
from engines.params import GenerationParams
from engines.two_stage import stage_one, stage_two
from serving.artifacts import ArtifactStore
from serving.async_view import AsyncView, in_thread
from serving.config import QueueConfig
from serving.control_plane.progress import Progress, ProgressSink
from serving.data_plane.stages import (
    Checkpointed,
    Checkpointing,
    Denoised,
    HandedBack,
    Resumed,
    StageClient,
    StageUnavailable,
    attempt_id,
)
from serving.errors import ErrorCode, KinoError, as_kino_error
from serving.jobs import Artifact, DispatchQueue, Job, JobStatus, Lease, Stage, StaleLease, denoise_checkpoint_key
from serving.metrics import Metrics
from serving.moderation import Moderator
from serving.provenance.claim import Claim, prompt_sha256

log = logging.getLogger(__name__)

# Share of the progress bar each stage fills.
_ENCODED, _DENOISE_SPAN, _DECODING = 0.03, 0.87, 0.92


class HeldState(enum.Enum):
    """Where a held job is, as far as its dispatcher is concerned."""

    RUNNING = "running"  # its runner walks it through the stages
    CANCELLING = "cancelling"  # a client cancel is stopping it (its runner records the cancel)
    LETTING_GO = "letting_go"  # the dispatcher lets go of it: handed back to the queue, or lost to another
    SETTLING = "settling"  # its end (completed, failed, cancelled) is being recorded: nothing may interrupt it


@dataclass
class Held:
    """A job a dispatcher holds: its lease, its runner's task, and its state."""

    job: Job
    lease: Lease
    task: asyncio.Task | None = None
    state: HeldState = HeldState.RUNNING
    hand_back: bool = False  # LETTING_GO: requeue it (this dispatcher stops) rather than leave it to another
    written_stage: Stage | None = None  # the last stage the store holds
    step: int | None = None  # the last denoising step pushed: where a cancelled or failed job's record ends
    steps_run: int = 0  # denoising steps this claim's attempts computed (a retry from step 0 computes some twice)


@dataclass(frozen=True)
class JobCheckpoints:
    """Resumable denoising: where jobs' denoise checkpoints live (the artifact store the Denoisers write to) and
    how often a running job's is written (config `checkpoints`)."""

    store: ArtifactStore
    every_seconds: float


class _CancelRequested(Exception):
    pass


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


class JobRunner:
    """Runs held jobs through the stages and records how each ended (`run`), and tells the world when a job
    ends, whoever ended it (`finished`)."""

    def __init__(self, store: DispatchQueue, stages: StageClient, config: QueueConfig, *, metrics: Metrics,
                 progress: ProgressSink, moderator: Moderator | None = None,
                 on_finished: Callable[[Job], str | None] | None = None,
                 schedule: ScheduleConfig | None = None, checkpoints: JobCheckpoints | None = None) -> None:
        """`moderator`: checks what the prompt enhancer writes, as the front door checked the prompt;
        `on_finished`: e.g. tell a cameo's owner, returning a topic whose watchers to nudge;
        `schedule`: the model's (how many steps the refine of a two-stage job takes);
        `checkpoints`: resumable denoising (None: a retried job starts over)."""
        self.store, self.stages, self.config = AsyncView(store), stages, config
        self.metrics, self.progress, self.moderator = metrics, progress, moderator
        self.on_finished = on_finished
        self.schedule = schedule or ScheduleConfig()
        self.checkpoints = checkpoints
        self._decode_seconds: float | None = None  # moving average, for ETAs

    async def run(self, held: Held) -> None:
        """Walk `held` to its end. The dispatcher cancels the task to cancel the job or let go of it; `held.state`
        (CANCELLING, LETTING_GO) says which."""
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
            held.state = HeldState.SETTLING
            done = await self.store.finish(held.lease, JobStatus.COMPLETED, artifact=artifact,
                                           steps_run=held.steps_run)
            log.info("job %s completed: %s (%d bytes)", job.id, artifact.key, artifact.size_bytes)
            await self.finished(done)
        except asyncio.CancelledError:
            if held.state == HeldState.LETTING_GO:
                await self._let_go(held)
            elif held.state == HeldState.CANCELLING:
                await self._finish_cancelled(held)
            else:
                raise  # the event loop is closing: the lease expires and another dispatcher resumes it
        except _CancelRequested:
            held.state = HeldState.SETTLING
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

    async def _stages(self, held: Held, params: GenerationParams) -> Artifact:
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
                      parent_video_id=job.conditioning.parent_id, loras=params.loras)
        result = await self.stages.decode(job.id, params, latents, f"{job.tenant}/{job.id}.mp4", claim,
                                          job.conditioning.parent_key)
        took = time.monotonic() - t
        self.metrics.stage_seconds("decode", took)
        self._decode_seconds = took if self._decode_seconds is None else 0.8 * self._decode_seconds + 0.2 * took
        return result

    async def _denoise(self, held: Held, run: _DenoiseRun, params: GenerationParams, embedding: Any,
                       conditioning: Any, *, stage: int) -> Any:
        """One denoise request of the job (a two-stage job makes two), its steps pushed as progress counted
        over the whole job; returns the latents' reference."""
        job, latents = held.job, None
        offset = 0 if stage == 1 else run.steps[0]
        checkpointing = None
        if stage == 1 and self.checkpoints is not None:  # a refine is three steps: it starts over from stage 1's
            checkpointing = Checkpointing(denoise_checkpoint_key(job.tenant, job.id), self.checkpoints.every_seconds,
                                          resume=held.job.checkpoint_step is not None)
        stream = self.stages.denoise(attempt_id(job.id, held.lease.generation, stage), params, embedding,
                                     job.priority, conditioning, checkpointing)
        try:
            async for ev in stream:
                if isinstance(ev, Denoised):
                    latents = ev.latents
                    continue
                if isinstance(ev, Checkpointed):
                    assert checkpointing is not None
                    await self.store.record_checkpoint(held.lease, checkpointing.key, ev.step)
                    held.job = dataclasses.replace(held.job, checkpoint_key=checkpointing.key, checkpoint_step=ev.step)
                    continue
                if isinstance(ev, Resumed):
                    await self._resumed(held, run, ev)
                    continue
                if isinstance(ev, HandedBack):
                    raise StageUnavailable(f"the denoiser stopped at step {ev.step} and handed the job back")
                held.steps_run += 1
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

    async def _resumed(self, held: Held, run: _DenoiseRun, ev: Resumed) -> None:
        """The attempt started at its checkpoint's step: say so to watchers and on the job."""
        message = f"resumed at step {ev.step} of {ev.total_steps}"
        log.info("job %s %s", held.job.id, message)
        values: dict[str, Any] = dict(step=ev.step, total_steps=run.total, message=message,
                                      progress=_ENCODED + _DENOISE_SPAN * run.done_share(ev.step))
        self._push(held, Stage.DENOISING, **values)
        held.step, held.written_stage = ev.step, Stage.DENOISING
        if await self.store.record_progress(held.lease, stage=Stage.DENOISING, resumed_from_step=ev.step, **values):
            raise _CancelRequested()

    async def _enhance(self, held: Held, params: GenerationParams) -> GenerationParams:
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

    async def _progress(self, held: Held, stage: Stage, *, milestone: bool = False, **values: Any) -> None:
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

    def _push(self, held: Held, stage: Stage, **values: Any) -> None:
        self.progress.publish(Progress(video_id=held.job.id, status=JobStatus.IN_PROGRESS, stage=stage,
                                       at=time.time(), **values))

    async def _let_go(self, held: Held) -> None:
        if not held.hand_back:
            return  # another dispatcher holds it now
        try:
            why = f"handed back: dispatcher {held.lease.owner} is stopping"
            await asyncio.shield(self.store.requeue(held.lease, why, count_attempt=False))
            log.info("job %s handed back to the queue", held.job.id)
        except StaleLease:
            pass

    async def _finish_cancelled(self, held: Held) -> None:
        held.state = HeldState.SETTLING
        try:
            current = await self.store.get(held.job.id)
            done = await self.store.finish(held.lease, JobStatus.CANCELLED,
                                           error_code=current.cancel_reason or "cancelled",
                                           error_message=current.error_message or "cancelled by the client",
                                           step=held.step, steps_run=held.steps_run)
            await self.finished(done)
        except StaleLease:
            pass

    async def _fail(self, held: Held, code: str, message: str) -> None:
        held.state = HeldState.SETTLING
        try:
            done = await self.store.finish(held.lease, JobStatus.FAILED, error_code=code, error_message=message,
                                           step=held.step, steps_run=held.steps_run)
            await self.finished(done)
        except StaleLease:
            pass

    async def finished(self, job: Job) -> None:
        """A job ended (here, or reaped by its dispatcher): push its end, count it, delete its denoise checkpoint,
        run the on_finished hook."""
        self.progress.publish(Progress.of_job(job, None, job.error_message or job.status.value))
        if self.checkpoints is not None:
            try:
                await in_thread(self.checkpoints.store.delete, denoise_checkpoint_key(job.tenant, job.id))
            except Exception:  # noqa: BLE001 - an ended job stays ended; the object is only space
                log.exception("could not delete the denoise checkpoint of %s", job.id)
        self.metrics.job_finished(job.tenant, job.status.value, max(0.0, (job.completed_at or time.time())
                                                                    - job.created_at))
        if self.on_finished is not None:
            try:
                if (topic := await in_thread(self.on_finished, job)) is not None:
                    self.progress.nudge(topic)
            except Exception:  # noqa: BLE001 - a notification must not undo a finished job
                log.exception("on_finished hook failed for %s", job.id)
