"""Following one video: a snapshot now, then its events as they happen, until a terminal one.

Events are pushed (a `ProgressFeed`: every step, as the dispatcher sees it); the store, the truth,
is read for the snapshot, for the end (its error fields), and every `poll_seconds` as the fallback
that also covers a hub that went away and a job run by another cluster during an upgrade.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

from serving.async_view import AsyncView
from serving.control_plane.progress import Progress, ProgressFeed
from serving.jobs import Job, JobStatus, JobStore


async def queue_position(jobs: AsyncView[JobStore], job: Job) -> int | None:
    return await jobs.queue_position(job.id) if job.status == JobStatus.QUEUED else None


async def follow(jobs: AsyncView[JobStore], video_id: str, feed: ProgressFeed | None = None,
                 poll_seconds: float = 0.1) -> AsyncIterator[Progress]:
    """A snapshot now, then every event, until a terminal one (the caller checked the right to watch)."""
    pushed: AsyncIterator[Progress] | None = feed.subscribe(video_id) if feed is not None else None
    next_push: asyncio.Task | None = None
    if pushed is not None:  # subscribed before the snapshot is read, so nothing falls between them
        next_push = asyncio.ensure_future(anext(pushed))
    try:
        # Events first, then the job: a finish landing between the two reads shows in the snapshot,
        # or after it; read the other way round, its event would be skipped and the watch never end.
        seen = max((e.id for e in await jobs.events(video_id)), default=0)
        job = await jobs.get(video_id)
        last = Progress.of_job(job, await queue_position(jobs, job), "snapshot")
        yield last
        if last.terminal:
            return
        while True:
            news: list[Progress] = []
            if next_push is not None:
                done, _ = await asyncio.wait({next_push}, timeout=poll_seconds)
                if done:
                    try:
                        news.append(next_push.result())
                        next_push = asyncio.ensure_future(anext(pushed))
                    except (StopAsyncIteration, Exception):  # noqa: BLE001 - the feed went away: the store remains
                        next_push = None
            else:
                await asyncio.sleep(poll_seconds)
            if not news:  # nothing pushed in a while: read the store
                for ev in await jobs.events(video_id, seen):
                    seen = ev.id
                    news.append(Progress(video_id=video_id, status=ev.status, stage=ev.stage, at=ev.at, step=ev.step,
                                         total_steps=ev.total_steps, progress=ev.progress,
                                         eta_seconds=ev.eta_seconds, batch_size=ev.batch_size, message=ev.message))
            for p in news:
                if p.terminal:  # the end as the store has it, with its error
                    final = await jobs.get(video_id)
                    yield Progress.of_job(final, None, p.message)
                    return
                if p.is_news_after(last):
                    last = p
                    yield p
            if not news and last.status == JobStatus.QUEUED:  # tell the caller when it moves up
                current = await jobs.get(video_id)
                position = await queue_position(jobs, current)
                if position is not None and position != last.queue_position:
                    last = Progress.of_job(current, position, "queue position")
                    yield last
    finally:
        if next_push is not None:
            next_push.cancel()
            with contextlib.suppress(BaseException):
                await next_push
        if pushed is not None:
            await pushed.aclose()
