"""Assembly: the domain services and the dispatcher over one database, from the config.

The Serve deployments (and tests, and `kino run`) build what they host here, so each deployment
stays a thin wrapper and every host wires the same objects the same way.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from engines.model_loader import ComponentSource
from serving.accounts.service import AccountService
from serving.accounts.store import AccountStore
from serving.artifacts import LocalArtifactStore
from serving.cameos.service import CameoService, notify_finished
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.db import Database
from serving.denoise_loop import BatchMeasure, DenoiseLoop
from serving.dispatcher import Dispatcher
from serving.jobs.sql_store import SqlJobStore
from serving.metrics import Metrics
from serving.moderation import RuleModerator
from serving.progress import ProgressFeed, ProgressSink
from serving.scheduler import StepScheduler
from serving.stages import StageClient
from serving.videos import DispatcherLink, VideoService
from serving.videos.capacity import DenoiseCapacity

DENOISE_MAX_TOKENS = "denoise_max_tokens"  # what Denoiser replicas record they hold per forward

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
        capacity = DenoiseCapacity(cfg.model, ComponentSource(cfg.model).geometry(), cfg.batching.max_tokens,
                                   recorded=lambda: jobs.capacity(DENOISE_MAX_TOKENS))
        videos = VideoService(cfg, jobs, artifacts, dispatcher, moderator=RuleModerator.from_file(
            cfg.moderation.rules_file), accounts=accounts, cameos=cameo_store, metrics=metrics, progress=progress,
            capacity=capacity)
        account_service = AccountService(accounts, cfg.auth)
        if cfg.auth.bootstrap_keys_file:
            added = account_service.bootstrap(cfg.auth.bootstrap_keys_file)
            log.info("registered %d bootstrap API keys", added)
        return cls(videos, CameoService(cfg, cameo_store, jobs, artifacts, videos, dispatcher), account_service)


def open_denoise_loop(cfg: KinoConfig, metrics: Metrics) -> DenoiseLoop:
    """A Denoiser replica's loop: the engine, its token budget (the config's, or less where the GPU's memory
    profile says so, recorded for every front door) and the scheduler."""
    from engines.denoiser import Denoiser
    from engines.memory import device_token_budget

    b = cfg.batching
    engine = Denoiser(cfg.model)
    max_tokens = min(b.max_tokens, device_token_budget(engine, b.gpu_memory_utilization) or b.max_tokens)
    store = SqlJobStore(Database(cfg.storage.database_url))
    try:
        store.record_capacity(DENOISE_MAX_TOKENS, max_tokens)
    finally:
        store.close()
    scheduler = StepScheduler(b.max_batch_size, b.max_running, policy=b.policy, rotate_buckets=b.rotate_buckets,
                              max_tokens=max_tokens)
    return DenoiseLoop(engine, scheduler, metrics, BatchMeasure(b.measure_batches, b.measure_seconds, b.min_gain))


def open_dispatcher(cfg: KinoConfig, stages: StageClient, metrics: Metrics,
                    progress: ProgressSink | None = None) -> Dispatcher:
    """A dispatcher over the job store, telling cameo owners when their videos finish."""
    db = Database(cfg.storage.database_url)
    cameos = CameoStore(db)
    return Dispatcher(SqlJobStore(db), stages, cfg.queue, on_finished=lambda job: notify_finished(cameos, job),
                      metrics=metrics, moderator=RuleModerator.from_file(cfg.moderation.rules_file),
                      progress=progress)
