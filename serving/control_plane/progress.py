"""Pushed progress: what a job's watchers see as it happens, without polling the store.

Dispatchers publish every event of the jobs they run (`ProgressSink`); watchers subscribe to one job
(`ProgressFeed`); clients cancel through the same hub, which every dispatcher listens to, so a
cancel reaches whichever dispatcher runs the job. `ProgressHub` is the in-memory fan-out between
them (one per cluster, in a Serve deployment). The store stays the truth: a watcher that connects
late, or whose hub is gone, or whose job runs in another cluster (an upgrade), reads it there.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass

from serving.jobs import Job, JobStatus, Stage

_STAGE_ORDER = {s: i for i, s in enumerate(Stage)}
QUEUE_TOPIC = "queue"  # nudged when the queue moves (a claim, a create): queued watchers read their position


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

    def is_news_after(self, last: Progress) -> bool:
        """Whether a watcher that has seen `last` should see this too (pushed and stored copies of an
        event arrive twice; a requeue moves a job back to queued, which is news)."""
        if self.status != last.status:
            return True
        here, there = (_STAGE_ORDER[self.stage], self.step), (_STAGE_ORDER[last.stage], last.step)
        return here > there or (here == there and self.message not in ("", last.message))

    @classmethod
    def of_job(cls, job: Job, queue_position: int | None, message: str) -> Progress:
        return cls(video_id=job.id, status=job.status, stage=job.stage, at=time.time(), step=job.step,
                   total_steps=job.total_steps, progress=job.progress, queue_position=queue_position,
                   eta_seconds=job.eta_seconds, error_code=job.error_code, error_message=job.error_message,
                   message=message)


class ProgressSink(ABC):
    """Where a dispatcher pushes events (best effort, never blocking: the store write is the truth)."""

    @abstractmethod
    def publish(self, progress: Progress) -> None: ...

    @abstractmethod
    def nudge(self, topic: str) -> None:
        """Wake the watchers of `topic` (e.g. a cameo owner's notifications): something to read in the store."""


class ProgressFeed(ABC):
    """Where a watcher gets one job's pushed events, and where a client's cancel is announced."""

    @abstractmethod
    def subscribe(self, video_id: str) -> AsyncIterator[Progress]:
        """Events of `video_id` from now on; ends after a terminal one (or when the feed goes away)."""

    @abstractmethod
    def nudge(self, topic: str) -> None:
        """Wake the watchers of `topic` (best effort, never blocking)."""

    @abstractmethod
    def nudges(self, topic: str) -> AsyncIterator[None]:
        """One item per nudge of `topic` from now on: read the store. Ends when the feed goes away."""

    @abstractmethod
    async def latest(self, video_ids: Sequence[str]) -> dict[str, Progress]:
        """The last event pushed for each of `video_ids` still running (none for the others): a running job's
        step lives here, the store holds its stage changes (best effort: {} when the feed is unreachable)."""


class NoProgress(ProgressSink):
    """For a dispatcher with no watchers to push to (tests, `kino run`)."""

    def publish(self, progress: Progress) -> None:
        pass

    def nudge(self, topic: str) -> None:
        pass


class ProgressHub(ProgressSink, ProgressFeed):
    """In-memory fan-out of progress events and cancel requests, on one event loop."""

    def __init__(self, backlog: int = 64) -> None:
        self.backlog = backlog
        self._watchers: dict[str, set[asyncio.Queue[Progress]]] = defaultdict(set)
        self._cancel_listeners: set[asyncio.Queue[str]] = set()
        self._latest: dict[str, Progress] = {}  # running jobs only: a terminal event removes its job
        self._nudged: dict[str, set[asyncio.Queue[None]]] = defaultdict(set)

    def publish(self, progress: Progress) -> None:
        if progress.terminal:
            self._latest.pop(progress.video_id, None)
        else:
            self._latest[progress.video_id] = progress
        for queue in self._watchers.get(progress.video_id, ()):
            if queue.full():  # a slow watcher misses steps, never the end
                queue.get_nowait()
            queue.put_nowait(progress)

    async def subscribe(self, video_id: str) -> AsyncIterator[Progress]:
        queue: asyncio.Queue[Progress] = asyncio.Queue(self.backlog)
        self._watchers[video_id].add(queue)
        try:
            while True:
                progress = await queue.get()
                yield progress
                if progress.terminal:
                    return
        finally:
            self._watchers[video_id].discard(queue)
            if not self._watchers[video_id]:
                del self._watchers[video_id]

    async def latest(self, video_ids: Sequence[str]) -> dict[str, Progress]:
        return {v: self._latest[v] for v in video_ids if v in self._latest}

    def nudge(self, topic: str) -> None:
        for queue in self._nudged.get(topic, ()):
            if not queue.full():  # one pending nudge says it all: the watcher reads everything new
                queue.put_nowait(None)

    async def nudges(self, topic: str) -> AsyncIterator[None]:
        queue: asyncio.Queue[None] = asyncio.Queue(1)
        self._nudged[topic].add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._nudged[topic].discard(queue)
            if not self._nudged[topic]:
                del self._nudged[topic]

    def cancel(self, video_id: str) -> None:
        for queue in self._cancel_listeners:
            queue.put_nowait(video_id)

    async def cancellations(self) -> AsyncIterator[str]:
        """Ids of the videos clients asked to cancel, from now on (each dispatcher listens)."""
        queue: asyncio.Queue[str] = asyncio.Queue()
        self._cancel_listeners.add(queue)
        try:
            while True:
                yield await queue.get()
        finally:
            self._cancel_listeners.discard(queue)

    @property
    def watchers(self) -> int:
        return sum(len(q) for q in self._watchers.values())
