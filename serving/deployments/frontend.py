"""Frontend deployment: the gRPC server (and later REST) in front of the domain services."""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from serving.accounts.service import AccountService
from serving.accounts.store import AccountStore
from serving.artifacts import LocalArtifactStore
from serving.cameos.service import CameoService
from serving.cameos.store import CameoStore
from serving.config import load_config
from serving.db import Database
from serving.deployments.ray_metrics import RayMetrics
from serving.frontend.grpc.server import start_grpc_server
from serving.frontend.rest.app import build_app
from serving.frontend.rest.server import RestServer
from serving.jobs.sql_store import SqlJobStore
from serving.moderation import RuleModerator
from serving.videos import DispatcherLink, VideoService

log = logging.getLogger(__name__)


class _ServeDispatcherLink(DispatcherLink):
    def __init__(self, handle: DeploymentHandle) -> None:
        self.handle = handle

    async def wake(self) -> None:
        self.handle.wake.remote()  # fire and forget: the dispatcher also polls the store

    async def cancel(self, job_id: str) -> None:
        try:
            await self.handle.cancel.remote(job_id)
        except Exception:  # noqa: BLE001 - the store flag still stops the job at its next step
            log.warning("could not reach the dispatcher to cancel %s; the store flag will", job_id)


@serve.deployment(name="Frontend", num_replicas=1)
class FrontendDeployment:
    async def __init__(self, config: dict[str, Any], dispatcher: DeploymentHandle) -> None:
        cfg = load_config(config)
        self.app_name = serve.get_replica_context().app_name
        db = Database(cfg.storage.database_url)
        jobs, accounts, cameo_store = SqlJobStore(db), AccountStore(db), CameoStore(db)
        artifacts = LocalArtifactStore(cfg.storage.artifacts_dir)
        link = _ServeDispatcherLink(dispatcher)
        metrics = RayMetrics()
        videos = VideoService(cfg, jobs, artifacts, link, moderator=RuleModerator.from_file(cfg.moderation.rules_file),
                              accounts=accounts, cameos=cameo_store, metrics=metrics)
        cameos = CameoService(cfg, cameo_store, jobs, artifacts, videos, link)
        account_service = AccountService(accounts, cfg.auth)
        if cfg.auth.bootstrap_keys_file:
            added = await asyncio.to_thread(account_service.bootstrap, cfg.auth.bootstrap_keys_file)
            log.info("registered %d bootstrap API keys", added)
        self.grpc = await start_grpc_server(videos, cameos, account_service, cfg.grpc, health_probe=self._app_running,
                                            metrics=metrics)
        self.rest: RestServer | None = None
        if cfg.rest.enabled:
            self.rest = RestServer(build_app(videos, account_service.authenticate, metrics), cfg.rest.host,
                                   cfg.rest.port)
            await self.rest.start()

    async def _app_running(self) -> bool:
        status = await asyncio.to_thread(serve.status)
        app = status.applications.get(self.app_name)
        return app is not None and app.status == "RUNNING"

    async def grpc_port(self) -> int:
        return self.grpc.port

    async def __del__(self) -> None:
        await self.grpc.stop(grace=2.0)
        if self.rest is not None:
            await self.rest.stop()
