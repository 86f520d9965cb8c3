"""Pushed progress over Serve handles to the ProgressHub deployment: the sink dispatchers publish to,
the feed watchers subscribe to, and the relay that brings client cancels to every dispatcher.

All of it is best effort: when the hub is gone (being replaced) events are dropped here and watchers
read the store, which every dispatcher still writes."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from ray.serve.handle import DeploymentHandle

from serving.control_plane.progress import Progress, ProgressFeed, ProgressSink

log = logging.getLogger(__name__)
FLUSH_SECONDS = 0.01  # events of one moment travel in one call


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
    def __init__(self, hub: DeploymentHandle) -> None:
        self.hub = hub

    async def subscribe(self, video_id: str) -> AsyncIterator[Progress]:
        stream = self.hub.options(stream=True).follow.remote(video_id)
        try:
            async for progress in stream:
                yield progress
        except Exception as e:  # noqa: BLE001 - the hub went away: the watcher reads the store instead
            log.info("progress feed for %s ended: %r", video_id, e)
        finally:
            stream.cancel()


    def nudge(self, topic: str) -> None:
        self.hub.nudge.remote(topic)  # fire and forget: watchers also read the store now and then

    async def nudges(self, topic: str) -> AsyncIterator[None]:
        stream = self.hub.options(stream=True).follow_nudges.remote(topic)
        try:
            async for _ in stream:
                yield None
        except Exception as e:  # noqa: BLE001 - the hub went away: the watcher reads the store on its own
            log.info("nudges of %s ended: %r", topic, e)
        finally:
            stream.cancel()

    async def latest(self, video_ids: Sequence[str]) -> dict[str, Progress]:
        if not video_ids:
            return {}
        try:
            return await self.hub.latest.remote(list(video_ids))
        except Exception as e:  # noqa: BLE001 - the hub is being replaced: the store's stage-level progress remains
            log.info("latest progress unavailable: %r", e)
            return {}


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
