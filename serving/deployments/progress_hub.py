"""ProgressHub deployment: a cluster's fan-out of pushed progress and cancels (serving/control_plane/progress.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

from ray import serve

from serving.control_plane.progress import Progress, ProgressHub


@serve.deployment(name="ProgressHub", num_replicas=1)
class ProgressHubDeployment:
    def __init__(self) -> None:
        self.hub = ProgressHub()

    async def publish(self, events: list[Progress]) -> None:
        for progress in events:
            self.hub.publish(progress)

    async def follow(self, video_id: str) -> AsyncIterator[Progress]:
        async for progress in self.hub.subscribe(video_id):
            yield progress

    async def latest(self, video_ids: list[str]) -> dict[str, Progress]:
        return await self.hub.latest(video_ids)

    async def nudge(self, topic: str) -> None:
        self.hub.nudge(topic)

    async def follow_nudges(self, topic: str) -> AsyncIterator[None]:
        async for _ in self.hub.nudges(topic):
            yield None

    async def cancel(self, video_id: str) -> None:
        self.hub.cancel(video_id)

    async def cancellations(self) -> AsyncIterator[str]:
        async for video_id in self.hub.cancellations():
            yield video_id
