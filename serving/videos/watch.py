"""Following one video: a snapshot now, then every stored event until a terminal one.

The store is the truth: a watcher that connects late or reconnects replays from it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass

from serving.async_view import AsyncView
from serving.jobs import Job, JobEvent, JobStatus, JobStore, Stage


@dataclass(frozen=True)
class Progress:
    video_id: str
    status: JobStatus
    stage: Stage
    at: float
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    queue_position: int | None = None
    eta_seconds: float | None = None
    batch_size: int = 0
    message: str = ""
    error_code: str | None = None
    error_message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal

    @classmethod
    def of_job(cls, job: Job, queue_position: int | None, message: str) -> Progress:
        return cls(video_id=job.id, status=job.status, stage=job.stage, at=time.time(), step=job.step,
                   total_steps=job.total_steps, progress=job.progress, queue_position=queue_position,
                   eta_seconds=job.eta_seconds, error_code=job.error_code, error_message=job.error_message,
                   message=message)

    @classmethod
    def of_event(cls, ev: JobEvent, final: Job | None) -> Progress:
        return cls(video_id=ev.job_id, status=ev.status, stage=ev.stage, at=ev.at, step=ev.step,
                   total_steps=ev.total_steps, progress=ev.progress, eta_seconds=ev.eta_seconds,
                   batch_size=ev.batch_size, message=ev.message,
                   error_code=final.error_code if final else None, error_message=final.error_message if final else None)


async def queue_position(jobs: AsyncView[JobStore], job: Job) -> int | None:
    return await jobs.queue_position(job.id) if job.status == JobStatus.QUEUED else None


async def follow(jobs: AsyncView[JobStore], video_id: str, poll_seconds: float = 0.1) -> AsyncIterator[Progress]:
    """A snapshot now, then every stored event, until a terminal one (the caller checked the right to watch)."""
    # Events first, then the job: a finish landing between the two reads shows in the snapshot,
    # or after it; read the other way round, its event would be skipped and the watch never end.
    seen = max((e.id for e in await jobs.events(video_id)), default=0)
    job = await jobs.get(video_id)
    snapshot = Progress.of_job(job, await queue_position(jobs, job), "snapshot")
    yield snapshot
    if snapshot.terminal:
        return
    last_position = snapshot.queue_position
    while True:
        await asyncio.sleep(poll_seconds)
        events = await jobs.events(video_id, seen)
        for ev in events:
            seen = ev.id
            final = await jobs.get(video_id) if ev.status.terminal else None
            yield Progress.of_event(ev, final)
            if final is not None:
                return
        if not events:  # queued: tell the caller when it moves up
            current = await jobs.get(video_id)
            position = await queue_position(jobs, current)
            if position is not None and position != last_position:
                last_position = position
                yield Progress.of_job(current, position, "queue position")
