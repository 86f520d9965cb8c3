"""Pushed progress over Serve handles to the ProgressHub deployment: the sink dispatchers publish to,
the feed a Frontend replica's watchers subscribe to, and the relay that brings client cancels to every dispatcher.

All of it is best effort: when the hub is gone (being replaced) events are dropped here and watchers
read the store, which every dispatcher still writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Any

from serving.control_plane.progress import Progress, ProgressFeed, ProgressHub, ProgressSink, Subscription
from serving.videos import DispatcherLink

if TYPE_CHECKING:
    from ray.serve.handle import DeploymentHandle

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.01  # events of one moment travel in one call
REGISTER_SECONDS = 2.0  # a watcher waits at most this long for the hub to take its interest (else: the store)
INTEREST_SECONDS = 10.0  # an interest call that takes longer is given up, and tried again
RECONNECT_SECONDS = 1.0
VIDEO, TOPIC = "video", "topic"


class ServeProgressSink(ProgressSink):
    def __init__(self, hub: DeploymentHandle) -> None:
        self.hub = hub
        self._pending: list[Progress] = []

    def publish(self, progress: Progress) -> None:
        if not self._pending:
            asyncio.get_running_loop().call_later(FLUSH_SECONDS, self._flush)
        self._pending.append(progress)

    def _flush(self) -> None:
        events, self._pending = self._pending, []
        self.hub.publish.remote(events)  # fire and forget

    def nudge(self, topic: str) -> None:
        self.hub.nudge.remote(topic)  # fire and forget


class ServeProgressFeed(ProgressFeed):
    """A Frontend replica's feed: ONE relay stream from the hub for all its watchers, fanned out here by a
    `ProgressHub` of its own (`local`), however many watch.

    The first local watcher of a video (or of a nudge topic) adds it to this replica's interest at the hub, and
    `subscribe` returns once the hub has it (so the watcher's store snapshot, read after, misses nothing); the last
    one leaving takes it out. Interest changes travel one call at a time, each carrying every change made since
    the last (so they never overtake each other, and a thousand watchers arriving at once cost a few calls). When
    the relay breaks (the hub is being replaced), it reconnects under a new subscriber id and declares the whole
    interest again; the watchers stay subscribed here meanwhile, and read the store while nothing is pushed."""

    def __init__(self, hub: DeploymentHandle | Any, reconnect_seconds: float = RECONNECT_SECONDS) -> None:
        self.hub = hub
        self.id = uuid.uuid4().hex
        self.local = ProgressHub(keep_latest=False)
        self.reconnect_seconds = reconnect_seconds
        self._want: Counter[tuple[str, str]] = Counter()  # (VIDEO | TOPIC, name) -> local watchers
        self._connections = 0
        self.subscriber: str | None = None  # this replica's id at the hub, for the relay stream of the moment
        self._confirmed: set[tuple[str, str]] = set()  # what the hub holds for `subscriber` (calls answered)
        self._sending: set[tuple[str, str]] | None = None  # what the call in flight declares
        self._waiting: list[asyncio.Future[None]] = []  # watchers waiting for the next call's answer
        self._dirty = False
        self._syncer: asyncio.Task[None] | None = None
        self._relay: asyncio.Task[None] | None = None

    # -- watchers ----------------------------------------------------------------------------------------------------
    async def subscribe(self, video_id: str) -> AsyncIterator[Progress]:
        return await self._joined(await self.local.subscribe(video_id), (VIDEO, video_id))

    async def nudges(self, topic: str) -> AsyncIterator[None]:
        return await self._joined(await self.local.nudges(topic), (TOPIC, topic))

    async def _joined(self, sub: Subscription[Any], key: tuple[str, str]) -> Subscription[Any]:
        self._want[key] += 1
        sub.on_close(lambda: self._leave(key))
        try:
            self._start()
            if not self._held(key):
                done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
                self._waiting.append(done)
                self._kick()
                try:
                    await asyncio.wait_for(done, REGISTER_SECONDS)
                except TimeoutError:  # the hub is slow or away: the watcher reads the store meanwhile
                    log.info("the progress hub has not taken %s yet", key)
        except BaseException:
            await sub.aclose()
            raise
        return sub

    def _leave(self, key: tuple[str, str]) -> None:
        self._want[key] -= 1
        if self._want[key] <= 0:
            del self._want[key]
            self._kick()  # the hub stops relaying it (with the next call: nobody waits for that one)

    def _held(self, key: tuple[str, str]) -> bool:
        return key in self._confirmed and (self._sending is None or key in self._sending)

    # -- the interest at the hub -------------------------------------------------------------------------------------
    def _kick(self) -> None:
        self._dirty = True
        if self._syncer is None:
            self._syncer = asyncio.get_running_loop().create_task(self._sync(), name="progress interest")

    async def _sync(self) -> None:
        try:
            while self._dirty:
                self._dirty = False
                subscriber, want, waiting = self.subscriber, set(self._want), self._waiting
                self._waiting = []
                add, drop = want - self._confirmed, self._confirmed - want
                self._sending = want
                failed = False
                try:
                    if add or drop:  # (a call that hangs, to a hub being replaced, is tried again)
                        await asyncio.wait_for(self.hub.interest.remote(
                            subscriber, watch=_names(add, VIDEO), unwatch=_names(drop, VIDEO),
                            topics=_names(add, TOPIC), untopics=_names(drop, TOPIC)), INTEREST_SECONDS)
                    if subscriber == self.subscriber:  # not a relay replaced meanwhile
                        self._confirmed = want
                except Exception as e:  # noqa: BLE001 - the hub is away: try again in a while
                    log.info("progress interest not declared (%r); trying again", e)
                    failed = True
                finally:
                    self._sending = None
                    for done in waiting:
                        if not done.done():
                            done.set_result(None)
                if failed:
                    await asyncio.sleep(self.reconnect_seconds)
                    self._dirty = True
        finally:
            self._syncer = None

    # -- the relay ---------------------------------------------------------------------------------------------------
    def _start(self) -> None:
        if self._relay is None:
            self._connect()
            self._relay = asyncio.get_running_loop().create_task(self._follow(), name="progress relay")

    def _connect(self) -> None:
        """A new relay stream: a new subscriber id, whose interest the hub has yet to hear (all of it)."""
        self._connections += 1
        self.subscriber, self._confirmed = f"{self.id}-{self._connections}", set()

    async def _follow(self) -> None:
        while True:
            stream = None
            try:
                stream = self.hub.options(stream=True).relay.remote(self.subscriber)
                async for batch in stream:
                    for item in batch:
                        if isinstance(item, str):
                            self.local.nudge(item)
                        else:
                            self.local.publish(item)
                log.info("progress relay ended; reconnecting")
            except asyncio.CancelledError:
                raise
            except Exception as e:  # noqa: BLE001 - the hub is being replaced: watchers read the store meanwhile
                log.info("progress relay interrupted (%r); reconnecting", e)
            finally:
                if stream is not None:
                    stream.cancel()
            await asyncio.sleep(self.reconnect_seconds)
            self._connect()
            if self._want:
                self._kick()

    async def close(self) -> None:
        for task in (self._relay, self._syncer):
            if task is not None:
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
        self._relay = self._syncer = None

    # -- calls to the hub --------------------------------------------------------------------------------------------
    def nudge(self, topic: str) -> None:
        self.hub.nudge.remote(topic)  # fire and forget: watchers also read the store now and then

    async def latest(self, video_ids: Sequence[str]) -> dict[str, Progress]:
        if not video_ids:
            return {}
        try:
            return await self.hub.latest.remote(list(video_ids))
        except Exception as e:  # noqa: BLE001 - the hub is being replaced: the store's stage-level progress remains
            log.info("latest progress unavailable: %r", e)
            return {}


def _names(keys: set[tuple[str, str]], kind: str) -> list[str]:
    return sorted(name for k, name in keys if k == kind)


class ServeDispatcherLink(DispatcherLink):
    """How a front door reaches the dispatchers: a create wakes one (any), a cancel goes through the hub to all."""

    def __init__(self, dispatcher: DeploymentHandle, hub: DeploymentHandle) -> None:
        self.dispatcher, self.hub = dispatcher, hub

    async def wake(self) -> None:
        self.dispatcher.wake.remote()  # fire and forget: every dispatcher also polls the store

    async def cancel(self, job_id: str) -> None:
        try:  # every dispatcher hears it through the hub (relay_cancellations); the one running the job stops it
            await self.hub.cancel.remote(job_id)
        except Exception:  # noqa: BLE001 - the store flag still stops the job at its next progress write
            log.warning("could not reach the progress hub to cancel %s; the store flag will", job_id)


async def relay_cancellations(hub: DeploymentHandle, cancel: Callable[[str], Awaitable[bool]]) -> None:
    """Forever: hand every cancel a client asks for to `cancel` (the dispatcher stops it if it runs it)."""
    while True:
        try:
            async for video_id in hub.options(stream=True).cancellations.remote():
                await cancel(video_id)
        except asyncio.CancelledError:
            raise
        except Exception as e:  # noqa: BLE001 - the hub is being replaced: listen again
            log.info("cancel relay interrupted (%r); reconnecting", e)
        await asyncio.sleep(1.0)
