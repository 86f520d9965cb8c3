"""Assembly: the domain services and the dispatcher over one database, from the config.

The Serve deployments (and tests, and `kino run`) build what they host here, so each deployment
stays a thin wrapper and every host wires the same objects the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from serving.accounts.service import AccountService
from serving.accounts.store import AccountStore
from serving.artifacts import LocalArtifactStore
from serving.cameos.service import CameoService, notify_finished
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.db import Database
from serving.dispatcher import Dispatcher
from serving.jobs.sql_store import SqlJobStore
from serving.metrics import Metrics
from serving.moderation import RuleModerator
from serving.progress import ProgressFeed, ProgressSink
from serving.stages import StageClient
from serving.videos import DispatcherLink, VideoService

log = logging.getLogger(__name__)


@dataclass
class DomainServices:
    """What the front door serves: videos, cameos, accounts."""

    videos: VideoService
    cameos: CameoService
    accounts: AccountService

    @classmethod
    def open(cls, cfg: KinoConfig, dispatcher: DispatcherLink, metrics: Metrics,
             progress: ProgressFeed | None = None) -> DomainServices:
        db = Database(cfg.storage.database_url)
        jobs, accounts, cameo_store = SqlJobStore(db), AccountStore(db), CameoStore(db)
        artifacts = LocalArtifactStore(cfg.storage.artifacts_dir)
        videos = VideoService(cfg, jobs, artifacts, dispatcher, moderator=RuleModerator.from_file(
            cfg.moderation.rules_file), accounts=accounts, cameos=cameo_store, metrics=metrics, progress=progress)
        account_service = AccountService(accounts, cfg.auth)
        if cfg.auth.bootstrap_keys_file:
            added = account_service.bootstrap(cfg.auth.bootstrap_keys_file)
            log.info("registered %d bootstrap API keys", added)
        return cls(videos, CameoService(cfg, cameo_store, jobs, artifacts, videos, dispatcher), account_service)


def open_dispatcher(cfg: KinoConfig, stages: StageClient, metrics: Metrics,
                    progress: ProgressSink | None = None) -> Dispatcher:
    """A dispatcher over the job store, telling cameo owners when their videos finish."""
    db = Database(cfg.storage.database_url)
    cameos = CameoStore(db)
    return Dispatcher(SqlJobStore(db), stages, cfg.queue, on_finished=lambda job: notify_finished(cameos, job),
                      metrics=metrics, moderator=RuleModerator.from_file(cfg.moderation.rules_file),
                      progress=progress)
