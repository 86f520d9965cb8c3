"""The dispatcher: holds queued jobs under leases and hands each to its job runner (job_runner.py).

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

A job's walk through the stages, its progress and how it ended are the `JobRunner`'s; this module keeps
the leases and the window, and moves a held job between `HeldState`s: a client cancel (through the hub, or,
for a job whose hub did not hear it, such as another cluster's front door during an upgrade, the store's
flag read with every heartbeat), a lease lost, a stop. It imports no Ray and no torch.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import time
import uuid
from collections.abc import Callable

from engines.config import ScheduleConfig
from serving.async_view import AsyncView
from serving.config import QueueConfig
from serving.control_plane.job_runner import Held, HeldState, JobCheckpoints, JobRunner
from serving.control_plane.progress import QUEUE_TOPIC, NoProgress, Progress, ProgressSink
from serving.data_plane.stages import StageClient
from serving.jobs import DispatchQueue, Job, JobStatus
from serving.metrics import Metrics, NoMetrics
from serving.moderation import Moderator

log = logging.getLogger(__name__)

PRUNE_SECONDS = 3600.0  # how often a dispatcher deletes finished jobs' old progress events


def dispatcher_id() -> str:
    """A dispatcher's lease owner name: unique per process, readable in logs and the job record."""
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:6]}"


class Dispatcher:
    def __init__(self, store: DispatchQueue, stages: StageClient, config: QueueConfig,
                 on_finished: Callable[[Job], str | None] | None = None, metrics: Metrics | None = None,
                 moderator: Moderator | None = None, progress: ProgressSink | None = None,
                 owner: str | None = None, window: Callable[[], int] | None = None,
                 schedule: ScheduleConfig | None = None, events_retention_seconds: float = 30 * 86400,
                 checkpoints: JobCheckpoints | None = None) -> None:
        """`window`: how many jobs the stages hold now (all dispatchers together), within `max_in_flight`;
        `schedule`: the model's (how many steps the refine of a two-stage job takes);
        `events_retention_seconds`: how long a finished job's progress events are kept (storage config)."""
        self.store, self.stages, self.config = AsyncView(store), stages, config
        self.metrics = metrics or NoMetrics()
        self.progress = progress or NoProgress()
        self.runner = JobRunner(store, stages, config, metrics=self.metrics, progress=self.progress,
                                moderator=moderator, on_finished=on_finished, schedule=schedule,
                                checkpoints=checkpoints)
        self.owner = owner or dispatcher_id()
        self.window = window or (lambda: config.max_in_flight)
        self.events_retention_seconds = events_retention_seconds
        self._held: dict[str, Held] = {}
        self._stopping = False
        self._wake = asyncio.Event()
        self._claimed = asyncio.Event()  # the heartbeat of a dispatcher holding nothing sleeps until it is set

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
            if not self._held:  # no lease to renew: sleep until a claim, not a beat at a time
                self._claimed.clear()
                await self._claimed.wait()
            await asyncio.sleep(self.config.heartbeat_seconds)
            try:
                await self._heartbeat()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop renewing; retry next beat
                log.exception("lease renewal failed; retrying")

    async def _dispatch_forever(self) -> None:
        """Rounds: on a wake, else every `poll_seconds` (and every `heartbeat_seconds` while any job is in progress,
        to reap). A round counts the queue first (at most once a second): a round of an idle cluster is that one
        read, since with no job queued there is nothing to claim, and with none in progress no lease to expire
        before the next count."""
        c = self.config
        due = {"reap": 0.0, "counts": 0.0, "prune": 0.0}
        queued = in_progress = 1  # unknown until counted: look for both
        while True:
            self._wake.clear()  # before the round: a wake that comes during it runs another at once
            try:
                now = time.monotonic()
                counted = now >= due["counts"]
                if counted:
                    counts = await self.store.count_by_status(JobStatus.QUEUED, JobStatus.IN_PROGRESS)
                    queued, in_progress = counts[JobStatus.QUEUED], counts[JobStatus.IN_PROGRESS]
                    self.metrics.job_counts(queued, in_progress)
                    due["counts"] = now + 1.0
                leased = bool(in_progress or self._held)
                if leased and now >= due["reap"]:
                    await self._reap()
                    due["reap"] = now + c.heartbeat_seconds
                if now >= due["prune"]:
                    pruned = await self.store.prune_events(time.time() - self.events_retention_seconds)
                    due["prune"] = now + (1.0 if pruned else PRUNE_SECONDS)  # a backlog goes batch by batch
                    if pruned:
                        log.info("pruned %d progress events of jobs that ended over %.0f days ago", pruned,
                                 self.events_retention_seconds / 86400)
                if queued or leased or not counted:  # (a reaped job is queued again: `leased` covers it)
                    await self._fill()
            except Exception:  # noqa: BLE001 - a store hiccup must not stop the loop; retry next round
                log.exception("dispatch round failed; retrying")
            timeout = c.poll_seconds
            if in_progress or self._held:
                timeout = max(0.0, min(timeout, due["reap"] - time.monotonic()))
            try:  # asyncio.timeout, not wait_for: 3.11's wait_for swallows a cancel that meets a wake
                async with asyncio.timeout(timeout):
                    await self._wake.wait()
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
        if held.state == HeldState.RUNNING:
            # Once, and never while the job's end is being recorded (SETTLING): that would interrupt the
            # recording and leave the job in progress until its lease expired.
            held.state = HeldState.CANCELLING
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
            held = Held(job, job.lease)
            self._held[job.id] = held
            self._claimed.set()
            held.task = asyncio.create_task(self.runner.run(held), name=f"job-{job.id}")
            held.task.add_done_callback(lambda t, jid=job.id: self._done(jid, t))
            self.progress.publish(Progress.of_job(job, None, "started"))
            self.progress.nudge(QUEUE_TOPIC)  # the jobs behind it moved up

    async def _heartbeat(self) -> None:
        """Renew the leases of the jobs being worked on; drop those another dispatcher now holds."""
        working = [jid for jid, h in self._held.items() if h.state != HeldState.LETTING_GO]
        if not working:
            return  # an idle dispatcher holds no lease: nothing to write or read
        still = await self.store.renew(self.owner, working, self.config.lease_seconds)
        for jid in set(working) - still:
            held = self._held.get(jid)
            if held is not None and held.state != HeldState.SETTLING:
                log.warning("job %s: lease lost (it expired and was requeued); dropping it here", jid)
                self._let_go(held, hand_back=False)
        for jid in await self.store.cancels_requested(still) if still else ():
            await self.cancel(jid)  # flagged in the store, not heard through this cluster's hub

    async def _reap(self) -> None:
        """Requeue jobs whose lease expired, whoever held them (the round's claims follow)."""
        for job in await self.store.reap_expired(self.config.max_attempts):
            log.warning("job %s: %s", job.id, "lease expired; " + job.status.value)
            self.progress.publish(Progress.of_job(job, None, "lease expired"))
            if job.status.terminal:
                await self.runner.finished(job)

    def _let_go(self, held: Held, *, hand_back: bool) -> asyncio.Task | None:
        """Cancel the job's runner to let go of it: `hand_back` requeues it (this dispatcher stops), else
        another dispatcher holds it already."""
        if held.task is None or held.task.done() or held.state == HeldState.SETTLING:
            return None
        held.state, held.hand_back = HeldState.LETTING_GO, hand_back
        held.task.cancel()
        return held.task

    def _done(self, job_id: str, task: asyncio.Task) -> None:
        if not task.cancelled() and task.exception() is not None:
            log.error("job %s: task ended with %r; its lease will expire and it is requeued", job_id, task.exception())
        self._held.pop(job_id, None)
        self._wake.set()

