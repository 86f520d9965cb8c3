"""Dispatcher deployment: the dispatch loop (serving/control_plane/dispatcher.py) in a Serve replica. Any number of
replicas share the job store through leases; Serve replaces one that dies and its jobs are requeued."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.config import load_config
from serving.on_ray.autoscaling import RunningReplicas
from serving.on_ray.metrics import RayMetrics
from serving.on_ray.progress import ServeProgressSink, relay_cancellations
from serving.on_ray.stages import ServeStages
from serving.services import open_dispatcher


@serve.deployment(name="Dispatcher")
class DispatcherDeployment:
    def __init__(self, config: dict[str, Any], text_encoder: DeploymentHandle, denoiser: DeploymentHandle,
                 decoder: DeploymentHandle, hub: DeploymentHandle) -> None:
        stages, app = ServeStages(text_encoder, denoiser, decoder), serve.get_replica_context().app_name
        # The running Denoisers as the handle hears them from Serve (no call: `serve.status()` every 10 s was the
        # largest share of an idle Dispatcher's CPU).
        self.dispatcher = open_dispatcher(load_config(config), stages, RayMetrics(), ServeProgressSink(hub),
                                          denoisers_running=RunningReplicas(denoiser, app, "Denoiser"))
        loop = asyncio.get_event_loop()
        self._tasks = [loop.create_task(self.dispatcher.run(), name="dispatch-loop"),
                       loop.create_task(relay_cancellations(hub, self.dispatcher.cancel), name="cancel-relay")]

    async def wake(self) -> None:
        self.dispatcher.wake()

    async def check_health(self) -> None:  # on the replica's loop: no thread hop every period
        """Serve replaces this replica if a loop died; its jobs' leases expire and are requeued."""
        for task in self._tasks:
            if task.done():
                raise RuntimeError(f"{task.get_name()} stopped: {None if task.cancelled() else task.exception()!r}")

    async def __del__(self) -> None:
        """Stopping (a downscale, an upgrade): hand the jobs back at once instead of waiting out their leases."""
        self._tasks[0].cancel()
        await self.dispatcher.stop()
