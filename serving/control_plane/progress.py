"""Pushed progress: what a job's watchers see as it happens, without polling the store.

Dispatchers publish every event of the jobs they run (`ProgressSink`); watchers subscribe to one job
(`ProgressFeed`); clients cancel through the same hub, which every dispatcher listens to, so a
cancel reaches whichever dispatcher runs the job. `ProgressHub` is the in-memory fan-out between
them (one per cluster, in a Serve deployment). A front door does not subscribe there once per watcher:
it holds one `relay` (the events and nudges it declared an `interest` in, in batches) and fans them out to
its own watchers through a `ProgressHub` of its own. The store stays the truth: a watcher that connects
late, or whose hub is gone, or whose job runs in another cluster (an upgrade), reads it there.
"""

from __future__ import annotations

import asyncio
import time
from abc import ABC, abstractmethod
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Generic, TypeVar

from serving.jobs import Job, JobStatus, Stage

_STAGE_ORDER = {s: i for i, s in enumerate(Stage)}
QUEUE_TOPIC = "queue"  # nudged when the queue moves (a claim, a create): queued watchers read their position
RELAY_BACKLOG = 10_000  # a relay's pending items before it drops step events (never a terminal one, never a nudge)
ORPHAN_SECONDS = 60.0  # an interest whose relay stream never came (or left) is forgotten after this long
T = TypeVar("T")


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
    async def subscribe(self, video_id: str) -> AsyncIterator[Progress]:
        """Events of `video_id` from the moment this returns (the subscription is registered by then, so a
        snapshot read after it misses nothing); ends after a terminal one (or when the feed goes away). The
        caller closes it (`aclose()`), read or not."""

    @abstractmethod
    def nudge(self, topic: str) -> None:
        """Wake the watchers of `topic` (best effort, never blocking)."""

    @abstractmethod
    async def nudges(self, topic: str) -> AsyncIterator[None]:
        """One item per nudge of `topic` from the moment this returns: read the store. Ends when the feed goes
        away; the caller closes it (`aclose()`)."""

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


class Subscription(Generic[T]):
    """One watcher's queue at a hub, registered from its creation (an async generator would register only when
    first read); `aclose()` unregisters it, read or not."""

    def __init__(self, queue: asyncio.Queue[T], leave: Callable[[], None], *, ends: Callable[[T], bool]) -> None:
        self._queue, self._leave, self._ends = queue, [leave], ends
        self._closed = False

    def on_close(self, leave: Callable[[], None]) -> None:
        """Also call `leave` when it closes (a front door's feed forgets the watcher)."""
        self._leave.append(leave)

    def __aiter__(self) -> Subscription[T]:
        return self

    async def __anext__(self) -> T:
        if self._closed:
            raise StopAsyncIteration
        item = await self._queue.get()
        if self._ends(item):
            await self.aclose()
        return item

    async def aclose(self) -> None:
        if not self._closed:
            self._closed = True
            for leave in self._leave:
                leave()


@dataclass
class _Relay:
    """What one front door asked for, and what waits for its relay stream."""

    videos: set[str] = field(default_factory=set)
    topics: set[str] = field(default_factory=set)
    events: list[Progress] = field(default_factory=list)
    nudged: dict[str, None] = field(default_factory=dict)  # topics to deliver, in order, each once
    ready: asyncio.Event = field(default_factory=asyncio.Event)
    streaming: bool = False
    since: float = field(default_factory=time.monotonic)  # when its interest was first declared

    def add(self, progress: Progress, backlog: int) -> None:
        if len(self.events) >= backlog:  # a slow front door misses steps, never an end: the older half goes
            drop, kept = len(self.events) // 2, []
            for p in self.events:
                if drop and not p.terminal:
                    drop -= 1
                else:
                    kept.append(p)
            self.events = kept
        self.events.append(progress)
        self.ready.set()

    def take(self) -> list[Progress | str]:
        batch: list[Progress | str] = [*self.events, *self.nudged]
        self.events, self.nudged = [], {}
        self.ready.clear()
        return batch


class ProgressHub(ProgressSink, ProgressFeed):
    """In-memory fan-out of progress events and cancel requests, on one event loop: to its own subscribers, and
    to each front door's relay (one stream per front door, carrying what its watchers follow)."""

    def __init__(self, backlog: int = 64, relay_backlog: int = RELAY_BACKLOG, *, keep_latest: bool = True) -> None:
        """`keep_latest`: remember each running job's last event for `latest` (a front door's own hub does not: it
        hears a job only while someone there watches it, and asks the cluster's hub)."""
        self.backlog, self.relay_backlog, self.keep_latest = backlog, relay_backlog, keep_latest
        self._watchers: dict[str, set[asyncio.Queue[Progress]]] = defaultdict(set)
        self._cancel_listeners: set[asyncio.Queue[str]] = set()
        self._latest: dict[str, Progress] = {}  # running jobs only: a terminal event removes its job
        self._nudged: dict[str, set[asyncio.Queue[None]]] = defaultdict(set)
        self._relays: dict[str, _Relay] = {}

    def publish(self, progress: Progress) -> None:
        if progress.terminal:
            self._latest.pop(progress.video_id, None)
        elif self.keep_latest:
            self._latest[progress.video_id] = progress
        for queue in self._watchers.get(progress.video_id, ()):
            if queue.full():  # a slow watcher misses steps, never the end
                queue.get_nowait()
            queue.put_nowait(progress)
        for relay in self._relays.values():
            if progress.video_id in relay.videos:
                relay.add(progress, self.relay_backlog)

    async def subscribe(self, video_id: str) -> Subscription[Progress]:
        queue: asyncio.Queue[Progress] = asyncio.Queue(self.backlog)
        self._watchers[video_id].add(queue)

        def leave() -> None:
            self._watchers[video_id].discard(queue)
            if not self._watchers[video_id]:
                del self._watchers[video_id]

        return Subscription(queue, leave, ends=lambda p: p.terminal)

    async def latest(self, video_ids: Sequence[str]) -> dict[str, Progress]:
        return {v: self._latest[v] for v in video_ids if v in self._latest}

    def nudge(self, topic: str) -> None:
        for queue in self._nudged.get(topic, ()):
            if not queue.full():  # one pending nudge says it all: the watcher reads everything new
                queue.put_nowait(None)
        for relay in self._relays.values():
            if topic in relay.topics:
                relay.nudged[topic] = None
                relay.ready.set()

    async def nudges(self, topic: str) -> Subscription[None]:
        queue: asyncio.Queue[None] = asyncio.Queue(1)
        self._nudged[topic].add(queue)

        def leave() -> None:
            self._nudged[topic].discard(queue)
            if not self._nudged[topic]:
                del self._nudged[topic]

        return Subscription(queue, leave, ends=lambda _: False)

    # -- one relay per front door ----------------------------------------------------------------------------------
    def interest(self, subscriber_id: str, watch: Sequence[str] = (), unwatch: Sequence[str] = (),
                 topics: Sequence[str] = (), untopics: Sequence[str] = ()) -> None:
        """Change what `subscriber_id`'s relay carries: the events of the videos in `watch` from now on (not those
        of `unwatch`), the nudges of `topics` (not `untopics`). Takes effect at once, whether its relay stream has
        started or not: what comes meanwhile waits for it."""
        self._forget_orphans()
        relay = self._relays.get(subscriber_id)
        if relay is None:
            relay = self._relays[subscriber_id] = _Relay()
        relay.videos.difference_update(unwatch)
        relay.videos.update(watch)
        relay.topics.difference_update(untopics)
        relay.topics.update(topics)

    async def relay(self, subscriber_id: str) -> AsyncIterator[list[Progress | str]]:
        """Forever: everything pending for `subscriber_id` (events it watches, topics nudged: a `str`) in one batch,
        as it comes. When the stream ends (its front door went away), its interest is forgotten."""
        self._forget_orphans()
        relay = self._relays.get(subscriber_id)
        if relay is None:
            relay = self._relays[subscriber_id] = _Relay()
        relay.streaming = True
        try:
            while True:
                await relay.ready.wait()
                batch = relay.take()
                if batch:
                    yield batch
        finally:
            if self._relays.get(subscriber_id) is relay:
                del self._relays[subscriber_id]

    def _forget_orphans(self) -> None:
        """Interests whose relay stream never came (its front door died between the two calls) go after a while."""
        too_old = time.monotonic() - ORPHAN_SECONDS
        for sid in [s for s, r in self._relays.items() if not r.streaming and r.since < too_old]:
            del self._relays[sid]

    @property
    def relays(self) -> dict[str, tuple[frozenset[str], frozenset[str]]]:
        """Each subscriber's interest: (videos, topics)."""
        return {s: (frozenset(r.videos), frozenset(r.topics)) for s, r in self._relays.items()}

    # -- cancels ---------------------------------------------------------------------------------------------------
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
