"""Frontend deployment: the front door (gRPC + REST, serving/frontend/front_door.py) in a Serve replica."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ApplicationStatus

from serving.async_view import in_thread
from serving.config import load_config
from serving.frontend.front_door import FrontDoor
from serving.on_ray.cached import CachedFigure
from serving.on_ray.compat import app_status
from serving.on_ray.metrics import RayMetrics
from serving.on_ray.progress import ServeDispatcherLink, ServeProgressFeed
from serving.services import DomainServices


@serve.deployment(name="Frontend", num_replicas=1)
class FrontendDeployment:
    async def __init__(self, config: dict[str, Any], dispatcher: DeploymentHandle, hub: DeploymentHandle,
                       denoiser: DeploymentHandle) -> None:
        cfg, metrics, self.app_name = load_config(config), RayMetrics(), serve.get_replica_context().app_name
        self.denoise_budget = CachedFigure(denoiser.max_tokens.remote, every_seconds=10.0, initial=None)
        self._budget_task = asyncio.get_running_loop().create_task(self.denoise_budget.refresh_forever())
        self.progress = ServeProgressFeed(hub)  # one relay stream from the hub for all of this replica's watchers
        services = await in_thread(DomainServices.open, cfg, ServeDispatcherLink(dispatcher, hub), metrics,
                                   self.progress, self.denoise_budget.value)
        self.door = await FrontDoor.start(cfg, services, metrics, health_probe=self._app_running)

    async def _app_running(self) -> bool:  # the application's status alone: serve.status() costs ~60 ms of CPU
        return await in_thread(app_status, self.app_name) == ApplicationStatus.RUNNING

    async def grpc_port(self) -> int:
        return self.door.grpc.port

    async def __del__(self) -> None:
        self._budget_task.cancel()
        await self.door.stop()
        await self.progress.close()  # the hub forgets this replica's interest
