"""Dispatcher deployment: exactly one replica runs the dispatch loop; Serve restarts it if it dies."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.cameos.service import notify_finished
from serving.cameos.store import CameoStore
from serving.config import load_config
from serving.db import Database
from serving.deployments.ray_metrics import RayMetrics
from serving.deployments.stage_client import ServeStages
from serving.dispatcher import Dispatcher
from serving.jobs.sql_store import SqlJobStore
from serving.moderation import RuleModerator

log = logging.getLogger(__name__)


@serve.deployment(name="Dispatcher", num_replicas=1)
class DispatcherDeployment:
    def __init__(self, config: dict[str, Any], text_encoder: DeploymentHandle, denoiser: DeploymentHandle,
                 decoder: DeploymentHandle) -> None:
        cfg = load_config(config)
        db = Database(cfg.storage.database_url)
        self.store, cameos = SqlJobStore(db), CameoStore(db)
        self.dispatcher = Dispatcher(self.store, ServeStages(text_encoder, denoiser, decoder), cfg.queue,
                                     on_finished=lambda job: notify_finished(cameos, job), metrics=RayMetrics(),
                                     moderator=RuleModerator.from_file(cfg.moderation.rules_file))
        self._task = asyncio.get_event_loop().create_task(self.dispatcher.run(), name="dispatch-loop")

    async def wake(self) -> None:
        self.dispatcher.wake()

    async def cancel(self, job_id: str) -> bool:
        return await self.dispatcher.cancel(job_id)

    async def in_flight(self) -> int:
        return self.dispatcher.in_flight

    def check_health(self) -> None:
        """Serve replaces this replica if the loop died; the new one resumes every job."""
        if self._task.done():
            exc = None if self._task.cancelled() else self._task.exception()
            raise RuntimeError(f"dispatch loop stopped: {exc!r}")
