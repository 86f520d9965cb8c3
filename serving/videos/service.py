"""The domain: what a client can do with videos, whatever protocol it speaks.

The gRPC servicer and the REST adapter translate their messages into these calls and these
results back; validation (serving/videos/parsing.py), moderation, tenancy, consent and every
decision live here, once.

Visibility rules: a tenant sees its own videos; another tenant's video exists for it only if
it is public, completed and not held for a cameo owner's approval, and then it may only be
read (get, download) or remixed. Everything else answers NOT_FOUND, never revealing it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path

from engines import stills
from engines.adapter_files import AdapterSummary, catalog
from engines.config import ModelConfig
from engines.params import GenerationParams, params_to_dict
from serving.accounts import Principal
from serving.accounts.store import AccountStore
from serving.artifacts import Artifact, ArtifactStore
from serving.async_view import AsyncView, in_thread
from serving.cameos.consent import owns, usable_cameo
from serving.cameos.models import Cameo, owner_topic
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.control_plane.progress import QUEUE_TOPIC, Progress, ProgressFeed
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied, Reason, Unavailable
from serving.jobs import Conditioning, Job, JobStatus, JobStore, NewJob, Review, Visibility, denoise_checkpoint_key
from serving.metrics import Metrics, NoMetrics
from serving.moderation import Moderator
from serving.provenance.claim import prompt_sha256
from serving.videos import parsing as rq
from serving.videos.capacity import DenoiseCapacity
from serving.videos.parsing import CreateVideo, RemixVideo
from serving.videos.references import reference_image
from serving.videos.watch import follow

WATCH_FALLBACK_SECONDS = 5.0  # with pushed events, a watcher reads the store this often for what was not pushed
# A download's variants: how each is made from the MP4, its file extension and content type.
VARIANTS: dict[str, tuple[Callable[[Path], bytes] | None, str, str]] = {
    "video": (None, "", "video/mp4"),
    "thumbnail": (stills.thumbnail, "webp", "image/webp"),
    "spritesheet": (stills.spritesheet, "jpg", "image/jpeg"),
}
STOP_WAIT_SECONDS = 60.0  # a delete that stops a running video waits this long for it to stop

@dataclass(frozen=True)
class Download:
    artifact: Artifact
    filename: str
    chunks: AsyncIterator[bytes]


@dataclass(frozen=True)
class Page:
    """One page of a list, and the token of the next (None at the end)."""

    jobs: list[Job]
    next_token: str | None

    @property
    def has_more(self) -> bool:
        return self.next_token is not None


class DispatcherLink(ABC):
    """How the front door nudges the dispatcher (best effort: the store is the truth)."""

    @abstractmethod
    async def wake(self) -> None: ...

    @abstractmethod
    async def cancel(self, job_id: str) -> None: ...


class VideoService:
    def __init__(self, config: KinoConfig, store: JobStore, artifacts: ArtifactStore, dispatcher: DispatcherLink,
                 *, moderator: Moderator, accounts: AccountStore, cameos: CameoStore,
                 metrics: Metrics | None = None, progress: ProgressFeed | None = None,
                 capacity: DenoiseCapacity | None = None) -> None:
        self.config, self.dispatcher, self.moderator = config, dispatcher, moderator
        self.store, self.artifacts = AsyncView(store), AsyncView(artifacts)
        self.accounts, self.cameos = AsyncView(accounts), AsyncView(cameos)
        self.metrics = metrics or NoMetrics()
        self.progress = progress  # pushed events; without it watchers poll the store
        self.capacity = capacity  # what one denoising forward holds; None: unchecked
        self.model: ModelConfig = config.model

    def _priority(self, principal: Principal, asked: int | None) -> int:
        """A tenant's jobs run at its priority; a request may ask for less, never more."""
        ceiling = principal.tenant.priority
        return ceiling if asked is None else min(asked, ceiling)

    async def _moderate(self, principal: Principal, text: str, *, uses_cameo: bool, field: str = "prompt") -> None:
        verdict = self.moderator.check(text, uses_cameo=uses_cameo)
        if not verdict.allowed:
            await self.accounts.record_audit(principal.tenant_id, "moderation_rejected", category=verdict.category,
                                             reason=verdict.reason,
                                             detail={"field": field, "prompt_sha256": prompt_sha256(text)})
            raise FailedPrecondition(f"{field} rejected by moderation: category {verdict.category}: {verdict.reason}",
                                     field=field, reason=Reason.MODERATION_BLOCKED)

    # -- create ------------------------------------------------------------------------------
    async def create(self, principal: Principal, req: CreateVideo) -> tuple[Job, bool]:
        """Validate, moderate, check consent, then queue a job (or return the one this key made)."""
        params = rq.generation_params(req, self.model, aliases=self.config.rest.model_aliases,
                                      defaults=self.config.rest.defaults)
        if self.capacity is not None:
            try:
                await in_thread(self.capacity.check, params)
            except InvalidArgument as e:
                d = self.config.rest.defaults
                if not (req.openai_api and (not req.size or req.seconds is None)):
                    raise
                raise InvalidArgument(f"{e.message}. This request left size or seconds to the server's defaults "
                                      f"(rest.defaults: {d.size or 'the model default'}, {d.seconds:g} s): send a "
                                      "smaller size or fewer seconds", field=e.field) from None
        if req.image_ref is not None:
            if req.image:
                raise InvalidArgument("input_reference is not allowed twice: an uploaded file or an image_url, "
                                      "not both", field="input_reference")
            req = replace(req, image=await reference_image(req.image_ref, self.config.rest.fetch))
        if req.image and req.cameo_id:
            raise InvalidArgument("image and cameo_id cannot be combined: a cameo brings its own reference frame",
                                  field="image")
        image = rq.decode_image(req.image) if req.image else None
        cameo = await self._usable_cameo(principal, req.cameo_id) if req.cameo_id else None
        await self._moderate(principal, params.prompt, uses_cameo=cameo is not None)
        job_id = f"video_{uuid.uuid4().hex}"
        image_key = cameo.reference_key if cameo else None
        if image is not None:
            image_key = f"{principal.tenant_id}/{job_id}/first_frame.png"
            await self.artifacts.put_png(image_key, image)
        conditioning = Conditioning(image_key=image_key, cameo_id=cameo.id if cameo else None)
        return await self._queue(principal, job_id, params, req.priority, req.idempotency_key, rq.request_hash(req),
                                 conditioning, req.visibility, cameo, cleanup=image_key if image else None)

    async def remix(self, principal: Principal, req: RemixVideo) -> tuple[Job, bool]:
        """A new video from one the caller may read and a new prompt (video-to-video)."""
        rq.check_idempotency_key(req.idempotency_key)
        rq.check_printable("prompt", req.prompt)
        parent = await self._readable(principal, req.video_id, field="video_id")
        if parent.status != JobStatus.COMPLETED or parent.artifact is None:
            raise FailedPrecondition(f"video_id {req.video_id} is {parent.status.value}; only a completed video "
                                     "can be remixed", field="video_id", reason=Reason.NOT_READY)
        strength = rq.remix_strength(req.strength, self.config.cameos.default_remix_strength)
        loras = parent.generation.loras if req.loras is None else req.loras
        params = rq.validated(parent.generation.as_request(prompt=req.prompt, negative_prompt=None, seed=req.seed,
                                      enhance_prompt=req.enhance_prompt, two_stage=False, loras=loras),
                              self.model)
        if self.capacity is not None:
            await in_thread(self.capacity.check, params)
        cameo = None
        if parent.conditioning.cameo_id:  # the person in the source is in the remix too: same consent rule
            cameo = await self._usable_cameo(principal, parent.conditioning.cameo_id)
        await self._moderate(principal, params.prompt, uses_cameo=cameo is not None)
        conditioning = Conditioning(parent_id=parent.id, parent_key=parent.artifact.key, strength=strength,
                                    cameo_id=cameo.id if cameo else None)
        return await self._queue(principal, f"video_{uuid.uuid4().hex}", params, None, req.idempotency_key,
                                 rq.request_hash(req), conditioning, req.visibility, cameo)

    async def loras(self, principal: Principal) -> list[AdapterSummary]:
        """The LoRA adapters a request may name (model.lora.dir): any caller may list them."""
        return await in_thread(catalog, self.model.lora.dir)

    async def _usable_cameo(self, principal: Principal, cameo_id: str) -> Cameo:
        return await in_thread(usable_cameo, self.cameos.blocking, principal, cameo_id)

    async def _queue(self, principal: Principal, job_id: str, params: GenerationParams, priority: int | None,
                     idempotency_key: str | None, request_hash: str, conditioning: Conditioning,
                     visibility: Visibility, cameo: Cameo | None, cleanup: str | None = None) -> tuple[Job, bool]:
        held = cameo is not None and cameo.require_approval and not owns(principal, cameo)
        new = NewJob(id=job_id, tenant=principal.tenant_id, user=principal.user, model=self.model.model_id,
                     priority=self._priority(principal, priority), params=params_to_dict(params),
                     request_hash=request_hash, idempotency_key=idempotency_key or None,
                     visibility=Visibility.PRIVATE if held else visibility, conditioning=conditioning,
                     review=Review.PENDING if held else Review.NONE)
        try:
            job, created = await self.store.create(new, max_queued=self.config.queue.max_queued,
                                                   quota=principal.tenant.quota)
        except BaseException:
            if cleanup:
                await self.artifacts.delete(cleanup)
            raise
        if created:
            self.metrics.job_created(principal.tenant_id)
            if cameo is not None and not await self.cameos.may_use(cameo, principal.tenant_id, principal.user):
                # Revoked between the check above and the insert: the revocation did not see this job.
                await self.store.request_cancel(job.id, reason="consent_revoked",
                                                message="the cameo owner revoked consent")
                raise PermissionDenied(f"cameo_id {cameo.id!r}: consent was revoked while the video was created",
                                       field="cameo_id")
            if cameo is not None:
                await self.cameos.notify(cameo, "used", job.id, principal.tenant_id,
                                         "held for your approval" if held else "")
                if self.progress is not None:
                    self.progress.nudge(owner_topic(cameo.owner_tenant))
            await self.dispatcher.wake()
            if self.progress is not None:
                self.progress.nudge(QUEUE_TOPIC)  # a higher-priority job may move queued watchers back
        elif cleanup:
            await self.artifacts.delete(cleanup)
        return job, created

    # -- read ------------------------------------------------------------------------------
    async def own(self, principal: Principal, video_id: str, field: str = "id") -> Job:
        """The caller's own video; NOT_FOUND for anything else (another tenant's video does not exist here)."""
        if not video_id:
            raise InvalidArgument(f"{field} is required: the video id (video_...)", field=field)
        try:
            job = await self.store.get(video_id)
        except NotFound:
            job = None
        if job is None or job.tenant != principal.tenant_id:
            raise NotFound(f"{field} {video_id!r} not found: no such video", field=field)
        return job

    async def _readable(self, principal: Principal, video_id: str, field: str = "id") -> Job:
        """Own videos, and other tenants' public, completed, released ones."""
        try:
            return await self.own(principal, video_id, field)
        except NotFound:
            job = await self.store.get(video_id)
            if job.visibility == Visibility.PUBLIC and job.status == JobStatus.COMPLETED \
                    and job.review != Review.PENDING:
                return job
            raise NotFound(f"{field} {video_id!r} not found: no such video", field=field) from None

    async def get(self, principal: Principal, video_id: str) -> Job:
        """The caller's own video, or another tenant's public one as the public sees it."""
        try:
            job = await self._readable(principal, video_id)
        except NotFound as e:
            raise NotFound(f"id {video_id!r} not found: no such video", field="id") from e
        [job] = await self._live([job])
        return job if job.tenant == principal.tenant_id else _public_view(job)

    async def _live(self, jobs: list[Job]) -> list[Job]:
        """The jobs with their running ones' latest pushed step: the store holds a running job's stage
        changes, its steps travel by push (GetVideo, ListVideos and REST retrieve show them all the same)."""
        running = [j.id for j in jobs if j.status == JobStatus.IN_PROGRESS]
        if not running or self.progress is None:
            return jobs
        latest = await self.progress.latest(running)
        out = []
        for job in jobs:
            live = latest.get(job.id)
            if live is not None and live.status == job.status and live.is_news_after(Progress.of_job(job, None, "")):
                job = replace(job, stage=live.stage, step=live.step, total_steps=live.total_steps,
                              progress=live.progress, eta_seconds=live.eta_seconds)
            out.append(job)
        return out

    async def list(self, principal: Principal, *, status: str | None = None, page_size: int | None = None,
                   page_token: str | None = None, after_id: str | None = None, ascending: bool = False,
                   page_size_field: str = "page_size") -> Page:
        """The caller's videos, newest first (or oldest first), filtered by status name."""
        jobs, token = await self.store.list(principal.tenant_id, status=rq.status_filter(status),
                                            page_size=rq.page_size(page_size, page_size_field),
                                            page_token=page_token or None, after_id=after_id or None,
                                            ascending=ascending)
        return Page(await self._live(jobs), token)

    async def list_public(self, page_size: int | None = None, page_token: str | None = None) -> Page:
        jobs, token = await self.store.list_public(page_size=rq.page_size(page_size), page_token=page_token or None)
        return Page(jobs, token)

    # -- change ------------------------------------------------------------------------------
    async def cancel(self, principal: Principal, video_id: str) -> Job:
        """A queued job is cancelled at once; a running one stops at its next denoising step. The dispatcher
        that runs it is told beside the store write, not after it: under load a write waits its turn for the
        database, and every step run meanwhile is one the client did not want."""
        job = await self.own(principal, video_id)
        told = asyncio.ensure_future(self.dispatcher.cancel(video_id)) if job.status == JobStatus.IN_PROGRESS \
            else None
        try:
            job = await self.store.request_cancel(video_id)
        finally:
            if told is not None:
                await told
        if told is None and job.status == JobStatus.IN_PROGRESS:  # it started between the two reads
            await self.dispatcher.cancel(video_id)
        return job

    async def delete(self, principal: Principal, video_id: str, *, stop_active: bool = False) -> Job:
        """Delete a finished video; with `stop_active` (OpenAI's DELETE) a queued or running one is cancelled
        first and deleted once it has stopped (within a step), shielded from the caller going away."""
        job = await self.own(principal, video_id)
        if stop_active and not job.status.terminal:
            return await asyncio.shield(self._stop_then_delete(principal, video_id))
        return await self.delete_job(video_id)

    async def _stop_then_delete(self, principal: Principal, video_id: str,
                                wait_seconds: float = STOP_WAIT_SECONDS) -> Job:
        job = await self.cancel(principal, video_id)
        deadline = asyncio.get_running_loop().time() + wait_seconds
        while not job.status.terminal:
            if asyncio.get_running_loop().time() > deadline:
                raise Unavailable(f"id {video_id} is still stopping; delete it again in a moment", field="id")
            await asyncio.sleep(0.1)
            job = await self.store.get(video_id)
        return await self.delete_job(video_id)

    async def delete_job(self, video_id: str) -> Job:
        """Delete a finished video and its files (callers have checked the right to)."""
        job = await self.store.delete(video_id)
        if job.artifact is not None:
            await self.artifacts.delete(job.artifact.key)
            for variant, (_, ext, _) in VARIANTS.items():
                if ext:
                    await self.artifacts.delete(f"{job.artifact.key}.{variant}.{ext}")
        if job.conditioning.image_key and not job.conditioning.cameo_id:
            await self.artifacts.delete(job.conditioning.image_key)
        # Its dispatcher deleted its denoise checkpoint when it ended; this one covers a delete that failed there.
        await self.artifacts.delete(denoise_checkpoint_key(job.tenant, job.id))
        return job

    async def set_visibility(self, principal: Principal, video_id: str, visibility: Visibility) -> Job:
        job = await self.own(principal, video_id)
        if visibility == Visibility.PUBLIC:
            if job.review == Review.PENDING:
                raise FailedPrecondition(f"visibility: video {video_id} is held for the cameo owner's approval; it "
                                         "cannot be published yet", field="visibility")
            if job.status != JobStatus.COMPLETED:
                raise FailedPrecondition(f"visibility: video {video_id} is {job.status.value}; only a completed "
                                         "video can be public", field="visibility")
        return await self.store.set_visibility(video_id, visibility)

    # -- follow ------------------------------------------------------------------------------
    async def watch(self, principal: Principal, video_id: str, poll_seconds: float | None = None,
                    history: bool = False) -> AsyncIterator[Progress]:
        """A snapshot now, then every event as it happens, until a terminal one (`poll_seconds`: how
        often the store is read when nothing was pushed; default: 5 s with pushed events, else 0.1 s;
        `history`: the job's recorded state changes first, see `follow`)."""
        await self.own(principal, video_id)
        if poll_seconds is None:
            poll_seconds = 0.1 if self.progress is None else WATCH_FALLBACK_SECONDS
        async for progress in follow(self.store, video_id, self.progress, poll_seconds, history):
            yield progress

    async def download(self, principal: Principal, video_id: str, variant: str = "video") -> Download:
        """The MP4, or a still of it (`variant`: thumbnail, a WebP frame; spritesheet, a JPEG grid of frames),
        made from the MP4 on first request and kept beside it."""
        if variant not in VARIANTS:
            raise InvalidArgument(f"variant={variant!r} is not allowed: one of {', '.join(VARIANTS)}",
                                  field="variant")
        job = await self.get(principal, video_id)
        if job.review == Review.PENDING:
            raise FailedPrecondition(f"id {video_id} is held until the cameo owner approves it", field="id")
        if job.status != JobStatus.COMPLETED or job.artifact is None:
            raise FailedPrecondition(f"id {video_id} is {job.status.value}; it can be downloaded once completed",
                                     field="id", reason=Reason.NOT_READY)
        artifact, filename = job.artifact, f"{job.id}.mp4"
        if variant != "video":
            artifact = await in_thread(self._still, artifact, variant)
            filename = f"{job.id}.{variant}.{artifact.key.rsplit('.', 1)[-1]}"
        blocks = iter(self.artifacts.blocking.read_chunks(artifact.key, self.config.storage.download_chunk_bytes))

        async def chunks() -> AsyncIterator[bytes]:
            while (block := await in_thread(next, blocks, None)) is not None:
                yield block

        return Download(artifact=artifact, filename=filename, chunks=chunks())

    def _still(self, video: Artifact, variant: str) -> Artifact:
        """A still of `video` from the store, made and stored on first request (blocking)."""
        make, ext, content_type = VARIANTS[variant]
        key = f"{video.key}.{variant}.{ext}"
        try:
            path = self.artifacts.blocking.local_path(key)
        except NotFound:
            stored = self.artifacts.blocking.put_bytes(key, make(self.artifacts.blocking.local_path(video.key)))
            return replace(stored, content_type=content_type)
        data = path.read_bytes()
        return Artifact(key=key, size_bytes=len(data), sha256=hashlib.sha256(data).hexdigest(),
                        content_type=content_type)


def _public_view(job: Job) -> Job:
    """Another tenant's public video: the video itself, nothing of how or by whom it was made (no user,
    priority, seed, negative or enhanced prompt, cameo, attempts or errors), as the public feed shows it."""
    params = {**job.params, "seed": 0, "negative_prompt": None}
    return replace(job, user="", priority=0, params=params, attempts=0, error_code=None, error_message=None,
                   enhanced_prompt=None, idempotency_key=None, request_hash="",
                   conditioning=Conditioning(parent_id=job.conditioning.parent_id))
