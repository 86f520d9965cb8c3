"""Following one video: a snapshot now, then its events as they happen, until a terminal one.

Events are pushed (a `ProgressFeed`: every step, as the dispatcher sees it); the store, the truth,
is read for the snapshot, for the end (its error fields), and every `poll_seconds` as the fallback
that also covers a hub that went away and a job run by another cluster during an upgrade. A queued
job's position is read when the queue moves (a nudge), not on a timer.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator

from serving.async_view import AsyncView
from serving.control_plane.progress import QUEUE_TOPIC, Progress, ProgressFeed
from serving.jobs import Job, JobEvent, JobStatus, JobStore

POSITION_SECONDS = 1.0  # a queued watcher reads its position at most this often, however busy the queue


async def queue_position(jobs: AsyncView[JobStore], job: Job) -> int | None:
    return await jobs.queue_position(job.id) if job.status == JobStatus.QUEUED else None


def recorded(video_id: str, ev: JobEvent) -> Progress:
    """A stored event as a watcher sees it."""
    return Progress(video_id=video_id, status=ev.status, stage=ev.stage, at=ev.at, step=ev.step,
                    total_steps=ev.total_steps, progress=ev.progress, eta_seconds=ev.eta_seconds,
                    batch_size=ev.batch_size, message=ev.message)


async def follow(jobs: AsyncView[JobStore], video_id: str, feed: ProgressFeed | None = None,
                 poll_seconds: float = 0.1, history: bool = False) -> AsyncIterator[Progress]:
    """A snapshot now, then every event, until a terminal one (the caller checked the right to watch).

    `history`: first the events the store recorded before now (the job's state changes: queued, each stage, each
    checkpoint; not every step), oldest first, so a watcher that came late or reconnects sees how the job got here.

    With a feed, the store is read for what was not pushed every `poll_seconds`, and a queued job's position
    when the queue moves (a dispatcher claimed a job, a job was queued: the QUEUE_TOPIC nudge), at most every
    POSITION_SECONDS; without one, everything is read every `poll_seconds`."""
    pushed: AsyncIterator[Progress] | None = None
    moves: AsyncIterator[None] | None = None
    next_push: asyncio.Future[Progress] | None = None
    next_move: asyncio.Future[None] | None = None
    try:
        if feed is not None:  # subscribed (registered) before the snapshot is read, so nothing falls between them
            pushed = await feed.subscribe(video_id)
            moves = await feed.nudges(QUEUE_TOPIC)
            next_push, next_move = asyncio.ensure_future(anext(pushed)), asyncio.ensure_future(anext(moves))
        # Events first, then the job: a finish landing between the two reads shows in the snapshot,
        # or after it; read the other way round, its event would be skipped and the watch never end.
        before = await jobs.events(video_id)
        seen = max((e.id for e in before), default=0)
        job = await jobs.get(video_id)
        if history:
            for ev in before:
                if not ev.status.terminal:  # the end comes below, with its error fields
                    yield recorded(video_id, ev)
        last = Progress.of_job(job, await queue_position(jobs, job), "snapshot")
        positioned = time.monotonic()
        yield last
        if last.terminal:
            return
        fallback_at = positioned + poll_seconds  # the store is read when nothing was pushed for this long
        position_due: float | None = None  # when a queued job reads its position again (the queue moved)
        while True:
            queued = last.status == JobStatus.QUEUED
            waiting = {f for f in (next_push, next_move if queued else None) if f}
            deadline = min(fallback_at, position_due) if queued and position_due is not None else fallback_at
            timeout = max(0.0, deadline - time.monotonic())
            done: set = set()
            if waiting:
                done, _ = await asyncio.wait(waiting, timeout=timeout, return_when=asyncio.FIRST_COMPLETED)
            else:
                await asyncio.sleep(timeout)
            now = time.monotonic()
            news: list[Progress] = []
            if next_push is not None and next_push in done:
                try:
                    news.append(next_push.result())
                    next_push = asyncio.ensure_future(anext(pushed))
                except (StopAsyncIteration, Exception):  # noqa: BLE001 - the feed went away: the store remains
                    next_push = None
                fallback_at = now + poll_seconds
            if next_move is not None and next_move in done:
                try:
                    next_move.result()
                    next_move = asyncio.ensure_future(anext(moves))
                except (StopAsyncIteration, Exception):  # noqa: BLE001 - no nudges: the fallback reads the position
                    next_move = None
                if position_due is None:  # at most every POSITION_SECONDS, however busy the queue
                    position_due = max(now, positioned + POSITION_SECONDS)
            if now >= fallback_at:  # nothing pushed in a while: read the store
                fallback_at = now + poll_seconds
                position_due = now if position_due is None else position_due
                for ev in await jobs.events(video_id, seen):
                    seen = ev.id
                    news.append(recorded(video_id, ev))
            for p in news:
                if p.terminal:  # the end as the store has it, with its error
                    final = await jobs.get(video_id)
                    yield Progress.of_job(final, None, p.message)
                    return
                if p.is_news_after(last):
                    last = p
                    yield p
            if last.status != JobStatus.QUEUED:
                position_due = None
            elif position_due is not None and time.monotonic() >= position_due:
                current = await jobs.get(video_id)
                position, positioned, position_due = await queue_position(jobs, current), time.monotonic(), None
                if position is not None and position != last.queue_position:
                    last = Progress.of_job(current, position, "queue position")
                    yield last
    finally:
        for waiting_on in (next_push, next_move):
            if waiting_on is not None:
                waiting_on.cancel()
                with contextlib.suppress(BaseException):
                    await waiting_on
        for stream in (pushed, moves):
            if stream is not None:
                await stream.aclose()
