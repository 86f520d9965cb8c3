"""The server's pieces in one process, without Ray: what `kino run` drives.

As vLLM's `LLM` class drives the same engine core its server runs, `LocalEngine` wires the objects the Serve
deployments host, built by the same functions (serving/services.py), over a job store and an artifact
directory of its own (a temporary directory unless the config names others):

- the front door's domain (`VideoService`): one validation of the request, moderation, the token budget's
  refusal at create, the job row;
- the job runner (`Dispatcher`): claims the job, drives encode -> denoise -> decode, records its end;
- the stages (`LocalStages`): the text encoder, the Denoiser's `DenoiseLoop` with the replica's scheduler
  and token budget (`open_denoise_loop`), the renderer that marks, muxes and signs;
- a `ProgressHub` between them, which `watch` reads as WatchVideo does.

So a feature of the serving path (a budget, a cache policy, a cap, the OOM split) acts the same in `kino run`.

    with LocalEngine.open(cfg, StagedPipeline(cfg.model)) as engine:
        job = engine.generate(CreateVideo(prompt="a cat"), on_progress=print)   # submit + wait
        engine.save(job, "cat.mp4")
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import tempfile
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING

from serving.accounts import Principal
from serving.config import KinoConfig
from serving.control_plane.progress import Progress, ProgressHub
from serving.errors import FailedPrecondition
from serving.jobs import Job
from serving.metrics import NoMetrics
from serving.migrations import upgrade
from serving.services import DomainServices, open_denoise_loop, open_dispatcher, open_renderer
from serving.videos import CreateVideo, DispatcherLink

if TYPE_CHECKING:
    from engines.config import ModelConfig
    from engines.decoder import Decoder
    from engines.parallel.world import EngineLead, LocalRanks
    from engines.staged_pipeline import StagedPipeline, StageTimes
    from serving.control_plane.dispatcher import Dispatcher
    from serving.data_plane.local_stages import LocalStages


class _InProcessLink(DispatcherLink):
    """The front door's nudge, straight to the dispatcher of this process."""

    def __init__(self) -> None:
        self.dispatcher: Dispatcher | None = None

    async def wake(self) -> None:
        if self.dispatcher is not None:
            self.dispatcher.wake()

    async def cancel(self, job_id: str) -> None:
        if self.dispatcher is not None:
            await self.dispatcher.cancel(job_id)


@dataclasses.dataclass
class LoadedModel:
    """A model loaded in this process for a `LocalEngine`: its pipeline, and where `model.parallel` spans several
    ranks, the lead of those ranks (the pipeline's DiT and `decoder` run over them) and the follower processes."""

    pipeline: StagedPipeline
    decoder: Decoder | None = None
    lead: EngineLead | None = None
    ranks: LocalRanks | None = None

    @classmethod
    @contextlib.contextmanager
    def load(cls, config: ModelConfig) -> Iterator[LoadedModel]:
        """Load every part of `config`'s model; over several ranks, the followers start first (in processes of
        their own, loading beside rank 0) and are stopped on exit."""
        from engines.decoder import Decoder
        from engines.model_loader import ALL_PARTS, ComponentSource
        from engines.parallel.world import LocalRanks
        from engines.staged_pipeline import StagedPipeline

        ranks = LocalRanks(config) if config.parallel.world_size > 1 else None
        try:
            components = ComponentSource(config).load(ALL_PARTS)
            lead = ranks.lead() if ranks is not None else None  # waits for the followers to load and join
            backend = lead.backend(components.transformer) if lead is not None else None
            yield cls(StagedPipeline(config, components, backend=backend),
                      Decoder(config, components, runner=lead.runner()) if lead is not None else None, lead, ranks)
        finally:
            if ranks is not None:
                ranks.close()


class LocalEngine:
    """Jobs through the front door's domain, the dispatcher and the stages, on one event loop of this thread."""

    def __init__(self, cfg: KinoConfig, pipeline: StagedPipeline, *, decoder: Decoder | None = None) -> None:
        """`pipeline`: the loaded engines (its DiT backend over several ranks where model.parallel says so);
        `decoder`: one whose VAE runs over those ranks (else the pipeline's)."""
        from serving.data_plane.local_stages import LocalStages

        self.cfg = cfg
        self._loop = asyncio.new_event_loop()
        self.hub = ProgressHub()
        link = _InProcessLink()
        metrics = NoMetrics()
        self.denoise_loop = open_denoise_loop(cfg, metrics, engine=pipeline.denoiser)
        self.services = DomainServices.open(cfg, link, metrics, progress=self.hub,
                                            denoise_budget=lambda: self.denoise_loop.max_tokens)
        renderer = open_renderer(cfg, decoder or pipeline.decoder, pipeline.media)
        self.stages: LocalStages = LocalStages(pipeline, renderer, loop=self.denoise_loop)
        self.dispatcher = open_dispatcher(cfg, self.stages, metrics, progress=self.hub)
        link.dispatcher = self.dispatcher
        self.principal: Principal = self.services.accounts.local_principal()
        self._runner = self._loop.create_task(self.dispatcher.run(), name="dispatcher")

    @classmethod
    @contextlib.contextmanager
    def open(cls, cfg: KinoConfig, pipeline: StagedPipeline, *, decoder: Decoder | None = None,
             state_dir: str | Path | None = None) -> Iterator[LocalEngine]:
        """An engine over a job store and artifacts under `state_dir` (default: a temporary directory, removed
        after), whatever database the config names: `kino run` keeps nothing."""
        with contextlib.ExitStack() as stack:
            root = Path(state_dir) if state_dir is not None else Path(
                stack.enter_context(tempfile.TemporaryDirectory(prefix="kino-run-")))
            storage = dataclasses.replace(cfg.storage, database_url=f"sqlite:///{root}/jobs.db",
                                          artifacts_dir=str(root / "artifacts"))
            upgrade(storage.database_url)
            engine = cls(dataclasses.replace(cfg, storage=storage), pipeline, decoder=decoder)
            try:
                yield engine
            finally:
                engine.close()

    def close(self) -> None:
        tasks = asyncio.all_tasks(self._loop)
        for task in tasks:
            task.cancel()
        # Each to its end (one turn of the loop left some mid-cancel, destroyed pending at exit), for a few
        # seconds at most: a step running in a thread finishes first, and close must not wait on anything longer.
        if tasks:
            self._loop.run_until_complete(asyncio.wait(tasks, timeout=10))
        self._loop.close()

    # -- one video ---------------------------------------------------------------------------------
    def submit(self, request: CreateVideo) -> Job:
        """Create the video as a client of the server would: the queued job, or the front door's error
        (InvalidArgument naming the field, FailedPrecondition for moderation)."""
        job, _ = self._loop.run_until_complete(self.services.videos.create(self.principal, request))
        return job

    def wait(self, job: Job, on_progress: Callable[[Progress], None] | None = None) -> Job:
        """Follow `job` as WatchVideo does to its end; the finished job (completed, failed or cancelled: its
        record says which). Ctrl-C leaves the job where it is: `close` stops the dispatcher, and `kino run`'s
        temporary store goes with it."""
        return self._loop.run_until_complete(self._wait(job.id, on_progress))

    def generate(self, request: CreateVideo, on_progress: Callable[[Progress], None] | None = None) -> Job:
        return self.wait(self.submit(request), on_progress)

    async def _wait(self, job_id: str, on_progress: Callable[[Progress], None] | None) -> Job:
        videos = self.services.videos
        try:
            async for event in videos.watch(self.principal, job_id):
                if on_progress is not None:
                    on_progress(event)
        except (asyncio.CancelledError, KeyboardInterrupt):
            with contextlib.suppress(FailedPrecondition):
                await videos.cancel(self.principal, job_id)
            raise
        return await videos.get(self.principal, job_id)

    def save(self, job: Job, path: str | Path) -> Path:
        """Write a completed job's MP4 to `path` (as DownloadVideo streams it)."""
        return self._loop.run_until_complete(self._save(job, Path(path)))

    async def _save(self, job: Job, path: Path) -> Path:
        download = await self.services.videos.download(self.principal, job.id)
        path.parent.mkdir(parents=True, exist_ok=True)
        with open(path, "wb") as out:
            async for chunk in download.chunks:
                out.write(chunk)
        return path

    def times(self, job: Job) -> StageTimes:
        """What each stage of `job` took in this process (encode, denoise, decode; the split of a two-stage one)."""
        return self.stages.times(job.id)
