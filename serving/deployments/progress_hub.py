"""ProgressHub deployment: a cluster's fan-out of pushed progress and cancels (serving/control_plane/progress.py),
and the head's answer to what worker stages may not read themselves (the job store's backlog)."""

from __future__ import annotations

from collections.abc import AsyncIterator, Sequence
from typing import Any

from ray import serve

from serving.async_view import in_thread
from serving.config import load_config
from serving.control_plane.progress import Progress, ProgressHub
from serving.services import Backlog


@serve.deployment(name="ProgressHub", num_replicas=1)
class ProgressHubDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        self.hub = ProgressHub()
        self._backlog = Backlog(load_config(config))

    async def backlog(self) -> dict[str, int]:
        """The job store's queued and running counts, for the Denoiser replicas' autoscaling figures: they run
        on worker nodes, which never open the database."""
        return await in_thread(self._backlog.read)

    async def publish(self, events: list[Progress]) -> None:
        for progress in events:
            self.hub.publish(progress)

    async def interest(self, subscriber_id: str, watch: Sequence[str] = (), unwatch: Sequence[str] = (),
                       topics: Sequence[str] = (), untopics: Sequence[str] = ()) -> None:
        self.hub.interest(subscriber_id, watch, unwatch, topics, untopics)

    async def relay(self, subscriber_id: str) -> AsyncIterator[list[Progress | str]]:
        """A Frontend replica's one stream: the events and nudges it declared an interest in, in batches."""
        async for batch in self.hub.relay(subscriber_id):
            yield batch

    async def latest(self, video_ids: list[str]) -> dict[str, Progress]:
        return await self.hub.latest(video_ids)

    async def nudge(self, topic: str) -> None:
        self.hub.nudge(topic)

    async def cancel(self, video_id: str) -> None:
        self.hub.cancel(video_id)

    async def cancellations(self) -> AsyncIterator[str]:
        async for video_id in self.hub.cancellations():
            yield video_id
