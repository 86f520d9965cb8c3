"""Assembly: the domain services and the dispatcher over one database, from the config.

The Serve deployments (and tests, and `kino run`) build what they host here, so each deployment
stays a thin wrapper and every host wires the same objects the same way.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from cachetools import TTLCache

from engines.geometry import latent_geometry
from serving.accounts.service import AccountService
from serving.accounts.store import AccountStore
from serving.artifacts import open_artifact_store
from serving.cameos.service import CameoService, notify_finished
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.control_plane.autoscaling import dispatch_window
from serving.control_plane.dispatcher import Dispatcher
from serving.control_plane.job_runner import JobCheckpoints
from serving.control_plane.progress import ProgressFeed, ProgressSink
from serving.data_plane.denoise_loop import BatchMeasure, DenoiseLoop
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import StageClient
from serving.db import Database
from serving.jobs import JobStatus
from serving.jobs.sql_store import SqlJobStore
from serving.metrics import Metrics
from serving.moderation import RuleModerator
from serving.videos import DispatcherLink, VideoService
from serving.videos.capacity import DenoiseCapacity

if TYPE_CHECKING:
    from engines.decoder import Decoder
    from engines.denoiser import Denoiser
    from engines.media_encoder import MediaEncoder
    from engines.parallel.world import EngineLead
    from serving.data_plane.rendering import Renderer

log = logging.getLogger(__name__)


@dataclass
class DomainServices:
    """What the front door serves: videos, cameos, accounts."""

    videos: VideoService
    cameos: CameoService
    accounts: AccountService

    @classmethod
    def open(cls, cfg: KinoConfig, dispatcher: DispatcherLink, metrics: Metrics,
             progress: ProgressFeed | None = None,
             denoise_budget: Callable[[], int | None] = lambda: None) -> DomainServices:
        """`denoise_budget`: the token budget a Denoiser replica reported (None until one has: the config's)."""
        db = Database(cfg.storage.database_url)
        jobs, accounts, cameo_store = SqlJobStore(db), AccountStore(db), CameoStore(db)
        artifacts = open_artifact_store(cfg.storage)
        capacity = DenoiseCapacity(cfg.model, latent_geometry(cfg.model), cfg.batching.max_tokens,
                                   reported=denoise_budget)
        videos = VideoService(cfg, jobs, artifacts, dispatcher, moderator=RuleModerator.from_file(
            cfg.moderation.rules_file), accounts=accounts, cameos=cameo_store, metrics=metrics, progress=progress,
            capacity=capacity)
        account_service = AccountService(accounts, cfg.auth)
        if cfg.auth.bootstrap_keys_file:
            added = account_service.bootstrap(cfg.auth.bootstrap_keys_file)
            log.info("registered %d bootstrap API keys", added)
        cameos = CameoService(cfg, cameo_store, jobs, artifacts, videos, dispatcher, progress)
        return cls(videos, cameos, account_service)


def open_denoise_loop(cfg: KinoConfig, metrics: Metrics, lead: Callable[[], EngineLead] | None = None,
                      engine: Denoiser | None = None) -> DenoiseLoop:
    """A Denoiser replica's loop: the engine, its token budget (the config's, or less where the GPU's memory
    profile says so: `DenoiseLoop.max_tokens`, which the replica reports to the front doors) and the scheduler.
    `lead`: an engine over several ranks (model.parallel), called once this replica's own parts are loaded (its
    followers load meanwhile); `engine`: one already loaded (`kino run`'s)."""
    from engines.denoiser import Denoiser
    from engines.memory import device_token_budget
    from engines.model_loader import DENOISER_PARTS, ComponentSource

    b = cfg.batching
    if engine is None and lead is None:
        engine = Denoiser(cfg.model)
    elif engine is None and lead is not None:
        components = ComponentSource(cfg.model).load(DENOISER_PARTS)
        engine = Denoiser(cfg.model, components, backend=lead().backend(components.transformer))
    if engine.adapters is not None:  # its LoRA bank's loads and evictions, as the replica's metrics
        bank = engine.adapters
        bank.observe(on_load=lambda _adapter, seconds: metrics.lora_loaded(len(bank.loaded), seconds),
                     on_evict=lambda _adapter: metrics.lora_evicted())  # (under the bank's lock: no reads)
    max_tokens = min(b.max_tokens, device_token_budget(engine, b.gpu_memory_utilization) or b.max_tokens)
    scheduler = StepScheduler(b.max_batch_size, b.max_running, policy=b.policy, rotate_buckets=b.rotate_buckets,
                              max_tokens=max_tokens)
    return DenoiseLoop(engine, scheduler, metrics, BatchMeasure(b.measure_batches, b.measure_seconds, b.min_gain),
                       checkpoints=open_artifact_store(cfg.storage) if cfg.checkpoints.enabled else None)


def open_renderer(cfg: KinoConfig, decoder: Decoder | None = None, media: MediaEncoder | None = None) -> Renderer:
    """The Decoder stage: latents -> the marked, signed MP4 in the artifact store. `decoder` and `media`: engines
    already loaded (`kino run`'s); by default a Decoder replica's, the encoder side sharing the decoder's VAE."""
    from engines.decoder import Decoder
    from engines.media_encoder import MediaEncoder
    from engines.model_loader import Components, ComponentSource
    from serving.data_plane.rendering import Renderer
    from serving.provenance.credentials import ContentCredentials

    if decoder is None or media is None:
        geometry = ComponentSource(cfg.model).geometry()
        decoder = decoder or Decoder(cfg.model, geometry=geometry)
        media = MediaEncoder(cfg.model, components=Components(vae=decoder.vae), geometry=geometry)
    return Renderer(decoder, media, open_artifact_store(cfg.storage), ContentCredentials(cfg.provenance),
                    cfg.provenance.watermark)


def open_dispatcher(cfg: KinoConfig, stages: StageClient, metrics: Metrics, progress: ProgressSink | None = None,
                    denoisers_running: Callable[[], int] | None = None) -> Dispatcher:
    """A dispatcher over the job store, telling cameo owners when their videos finish; its window follows
    the Denoiser replicas running (`denoisers_running`) when given."""
    db = Database(cfg.storage.database_url)
    cameos = CameoStore(db)
    window = None
    if denoisers_running is not None:
        def window() -> int:
            return dispatch_window(denoisers_running(), cfg.batching.max_running, cfg.queue.max_in_flight)
    checkpoints = JobCheckpoints(open_artifact_store(cfg.storage), cfg.checkpoints.every_seconds) \
        if cfg.checkpoints.enabled else None
    return Dispatcher(SqlJobStore(db), stages, cfg.queue, on_finished=lambda job: notify_finished(cameos, job),
                      metrics=metrics, moderator=RuleModerator.from_file(cfg.moderation.rules_file),
                      progress=progress, window=window, schedule=cfg.model.schedule,
                      events_retention_seconds=cfg.storage.events_retention_days * 86400, checkpoints=checkpoints)


def denoise_figures(cfg: KinoConfig, loop: DenoiseLoop) -> dict[str, float]:
    """A Denoiser replica's own figures for the autoscaling policy (serving/on_ray/autoscaling.py); the job
    store's backlog joins them from the head (`Backlog`): a replica never opens the database."""
    return {"per_replica": cfg.batching.max_running, "steps_per_job": loop.steps_per_request,
            "request_step_seconds": loop.request_step_seconds or 0.0,
            "drain_seconds": cfg.autoscaling.drain_seconds}


class Backlog:
    """The job store's queued and running counts, read on the head (in the ProgressHub replica) for the Denoiser
    replicas' autoscaling figures, at most once a second however many replicas ask."""

    def __init__(self, cfg: KinoConfig) -> None:
        self.store = SqlJobStore(Database(cfg.storage.database_url))
        self._cache: TTLCache[str, dict[str, int]] = TTLCache(maxsize=1, ttl=1.0)

    def read(self) -> dict[str, int]:
        if (counts := self._cache.get("counts")) is None:
            by_status = self.store.count_by_status(JobStatus.QUEUED, JobStatus.IN_PROGRESS)
            counts = self._cache["counts"] = {"queued": by_status[JobStatus.QUEUED],
                                              "in_progress": by_status[JobStatus.IN_PROGRESS]}
        return counts
