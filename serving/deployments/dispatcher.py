"""Dispatcher deployment: the dispatch loop (serving/dispatcher.py) in a Serve replica; Serve restarts it if it dies."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.config import load_config
from serving.on_ray.metrics import RayMetrics
from serving.on_ray.stages import ServeStages
from serving.services import open_dispatcher


@serve.deployment(name="Dispatcher", num_replicas=1)
class DispatcherDeployment:
    def __init__(self, config: dict[str, Any], text_encoder: DeploymentHandle, denoiser: DeploymentHandle,
                 decoder: DeploymentHandle) -> None:
        stages = ServeStages(text_encoder, denoiser, decoder)
        self.dispatcher = open_dispatcher(load_config(config), stages, RayMetrics())
        self._task = asyncio.get_event_loop().create_task(self.dispatcher.run(), name="dispatch-loop")

    async def wake(self) -> None:
        self.dispatcher.wake()

    async def cancel(self, job_id: str) -> bool:
        return await self.dispatcher.cancel(job_id)

    def check_health(self) -> None:
        """Serve replaces this replica if the loop died; the new one resumes every job."""
        if self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"dispatch loop stopped: {exc!r}")
