"""The domain: what a client can do with videos, whatever protocol it speaks.

The gRPC servicer (and the REST adapter) translate their messages into these calls and
these results back; validation, moderation, tenancy, consent and every decision live here, once.

Visibility rules: a tenant sees its own videos; another tenant's video exists for it only if
it is public, completed and not held for a cameo owner's approval, and then it may only be
read (get, download) or remixed. Everything else answers NOT_FOUND, never revealing it exists.
"""

from __future__ import annotations

import asyncio
import hashlib
import io
import json
import time
import uuid
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import asdict, dataclass, replace

import PIL.Image

from engines.config import ModelConfig
from engines.errors import InvalidParameter
from engines.params import GenerationParams, params_from_dict, params_to_dict, parse_fps
from serving.accounts import Principal
from serving.accounts.store import AccountStore
from serving.artifacts import ArtifactStore
from serving.cameos.models import Cameo
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, PermissionDenied
from serving.jobs import Artifact, Conditioning, Job, JobStatus, JobStore, NewJob, Review, Stage, Visibility
from serving.metrics import Metrics, NoMetrics
from serving.moderation import Moderator
from serving.provenance.claim import prompt_sha256

MAX_IDEMPOTENCY_KEY = 128
MAX_PAGE_SIZE = 100
MAX_IMAGE_PIXELS = 4096 * 4096
# Engine parameter names -> the API field that carries them.
_API_FIELD = {"width": "size", "height": "size"}


@dataclass(frozen=True)
class CreateVideo:
    """A create request as the domain sees it (None: the model's default)."""

    prompt: str
    negative_prompt: str | None = None
    size: str | None = None  # "WIDTHxHEIGHT"
    seconds: float | None = None
    fps: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    audio_guidance_scale: float | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    model: str | None = None
    image: bytes | None = None  # first frame (PNG/JPEG)
    cameo_id: str | None = None
    visibility: Visibility = Visibility.PRIVATE
    enhance_prompt: bool = False


@dataclass(frozen=True)
class RemixVideo:
    video_id: str
    prompt: str
    strength: float | None = None
    seed: int | None = None
    idempotency_key: str | None = None
    visibility: Visibility = Visibility.PRIVATE
    enhance_prompt: bool = False


@dataclass(frozen=True)
class Progress:
    video_id: str
    status: JobStatus
    stage: Stage
    at: float
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    queue_position: int | None = None
    eta_seconds: float | None = None
    batch_size: int = 0
    message: str = ""
    error_code: str | None = None
    error_message: str | None = None

    @property
    def terminal(self) -> bool:
        return self.status.terminal


@dataclass(frozen=True)
class Download:
    artifact: Artifact
    filename: str
    chunks: AsyncIterator[bytes]


class DispatcherLink(ABC):
    """How the front door nudges the dispatcher (best effort: the store is the truth)."""

    @abstractmethod
    async def wake(self) -> None: ...

    @abstractmethod
    async def cancel(self, job_id: str) -> None: ...


class VideoService:
    def __init__(self, config: KinoConfig, store: JobStore, artifacts: ArtifactStore, dispatcher: DispatcherLink,
                 *, moderator: Moderator, accounts: AccountStore, cameos: CameoStore,
                 metrics: Metrics | None = None) -> None:
        self.config, self.store, self.artifacts, self.dispatcher = config, store, artifacts, dispatcher
        self.moderator, self.accounts, self.cameos = moderator, accounts, cameos
        self.metrics = metrics or NoMetrics()
        self.model: ModelConfig = config.model

    # -- validation ------------------------------------------------------------------------
    def validate(self, req: CreateVideo) -> GenerationParams:
        """Validated generation parameters; InvalidArgument names the API field."""
        if req.model and req.model != self.model.model_id:
            raise InvalidArgument(f"model={req.model!r} is not served here; allowed: {self.model.model_id!r} "
                                  "(or empty for it)", field="model")
        width = height = None
        if req.size:
            try:
                w, h = req.size.lower().split("x")
                width, height = int(w), int(h)
            except ValueError:
                raise InvalidArgument(f"size={req.size!r} is not allowed: WIDTHxHEIGHT, e.g. 256x256, sides "
                                      f"multiples of {self.model.limits.side_multiple}", field="size") from None
        fps = None
        if req.fps:
            try:
                fps = parse_fps(req.fps)
            except (ValueError, ZeroDivisionError):
                raise InvalidArgument(f"fps={req.fps!r} is not allowed: a number or a fraction like 30000/1001",
                                      field="fps") from None
        if req.priority is not None and not 0 <= req.priority <= 9:
            raise InvalidArgument(f"priority={req.priority} is not allowed: an integer in [0, 9]", field="priority")
        _check_idempotency_key(req.idempotency_key)
        for name in ("prompt", "negative_prompt"):
            _check_printable(name, getattr(req, name))
        return self._validated(GenerationParams(
            prompt=req.prompt, negative_prompt=req.negative_prompt, width=width, height=height,
            seconds=req.seconds, fps=fps, seed=req.seed, steps=req.steps, guidance_scale=req.guidance_scale,
            audio_guidance_scale=req.audio_guidance_scale, enhance_prompt=req.enhance_prompt))

    def _validated(self, params: GenerationParams) -> GenerationParams:
        try:
            return params.validated(self.model)
        except InvalidParameter as e:
            api_field = _API_FIELD.get(e.field, e.field)
            message = str(e) if api_field == e.field else f"{api_field}: {e}"
            raise InvalidArgument(message, field=api_field) from None

    def _priority(self, principal: Principal, asked: int | None) -> int:
        """A tenant's jobs run at its priority; a request may ask for less, never more."""
        ceiling = principal.tenant.priority
        return ceiling if asked is None else min(asked, ceiling)

    def _moderate(self, principal: Principal, text: str, *, uses_cameo: bool, field: str = "prompt") -> None:
        verdict = self.moderator.check(text, uses_cameo=uses_cameo)
        if not verdict.allowed:
            self.accounts.record_audit(principal.tenant_id, "moderation_rejected", category=verdict.category,
                                       reason=verdict.reason, detail={"field": field,
                                                                      "prompt_sha256": prompt_sha256(text)})
            raise FailedPrecondition(f"{field} rejected by moderation: category {verdict.category}: {verdict.reason}",
                                     field=field)

    def _cameo_for(self, principal: Principal, cameo_id: str) -> Cameo:
        """The cameo if the caller holds a live grant to it; PERMISSION_DENIED otherwise (before any stage)."""
        try:
            cameo = self.cameos.get(cameo_id)
        except NotFound:
            cameo = None
        if cameo is None or not self.cameos.may_use(cameo, principal.tenant_id, principal.user):
            raise PermissionDenied(f"cameo_id {cameo_id!r}: you hold no live grant to use this cameo",
                                   field="cameo_id")
        return cameo

    # -- create ------------------------------------------------------------------------------
    async def create(self, principal: Principal, req: CreateVideo) -> tuple[Job, bool]:
        """Validate, moderate, check consent, then queue a job (or return the one this key made)."""
        params = self.validate(req)
        if req.image and req.cameo_id:
            raise InvalidArgument("image and cameo_id cannot be combined: a cameo brings its own reference frame",
                                  field="image")
        image = _decode_image(req.image) if req.image else None
        cameo = await asyncio.to_thread(self._cameo_for, principal, req.cameo_id) if req.cameo_id else None
        await asyncio.to_thread(self._moderate, principal, params.prompt, uses_cameo=cameo is not None)
        job_id = f"video_{uuid.uuid4().hex}"
        image_key = cameo.reference_key if cameo else None
        if image is not None:
            image_key = f"{principal.tenant_id}/{job_id}/first_frame.png"
            await asyncio.to_thread(self._put_png, image_key, image)
        request_hash = _hash({**asdict(req), "image": hashlib.sha256(req.image or b"").hexdigest()})
        conditioning = Conditioning(image_key=image_key, cameo_id=cameo.id if cameo else None)
        return await self._queue(principal, job_id, params, req.priority, req.idempotency_key, request_hash,
                                 conditioning, req.visibility, cameo, cleanup=image_key if image else None)

    async def remix(self, principal: Principal, req: RemixVideo) -> tuple[Job, bool]:
        """A new video from one the caller may read and a new prompt (video-to-video)."""
        _check_idempotency_key(req.idempotency_key)
        _check_printable("prompt", req.prompt)
        parent = await self._readable(principal, req.video_id, field="video_id")
        if parent.status != JobStatus.COMPLETED or parent.artifact is None:
            raise FailedPrecondition(f"video_id {req.video_id} is {parent.status.value}; only a completed video "
                                     "can be remixed", field="video_id")
        strength = self.config.cameos.default_remix_strength if req.strength is None else req.strength
        if not 0.1 <= strength <= 1.0:
            raise InvalidArgument(f"strength={strength} is not allowed: a number in [0.1, 1]", field="strength")
        base = params_from_dict(parent.params)
        params = self._validated(replace(base, prompt=req.prompt, negative_prompt=None, seed=req.seed,
                                         enhance_prompt=req.enhance_prompt))
        cameo = None
        if parent.conditioning.cameo_id:  # the person in the source is in the remix too: same consent rule
            cameo = await asyncio.to_thread(self._cameo_for, principal, parent.conditioning.cameo_id)
        await asyncio.to_thread(self._moderate, principal, params.prompt, uses_cameo=cameo is not None)
        conditioning = Conditioning(parent_id=parent.id, parent_key=parent.artifact.key, strength=strength,
                                    cameo_id=cameo.id if cameo else None)
        return await self._queue(principal, f"video_{uuid.uuid4().hex}", params, None, req.idempotency_key,
                                 _hash(asdict(req)), conditioning, req.visibility, cameo)

    async def _queue(self, principal: Principal, job_id: str, params: GenerationParams, priority: int | None,
                     idempotency_key: str | None, request_hash: str, conditioning: Conditioning,
                     visibility: Visibility, cameo: Cameo | None, cleanup: str | None = None) -> tuple[Job, bool]:
        held = cameo is not None and cameo.require_approval and not _owns(principal, cameo)
        new = NewJob(id=job_id, tenant=principal.tenant_id, user=principal.user, model=self.model.model_id,
                     priority=self._priority(principal, priority), params=params_to_dict(params),
                     request_hash=request_hash, idempotency_key=idempotency_key or None,
                     visibility=Visibility.PRIVATE if held else visibility, conditioning=conditioning,
                     review=Review.PENDING if held else Review.NONE)
        try:
            job, created = await asyncio.to_thread(self.store.create, new, max_queued=self.config.queue.max_queued,
                                                   quota=principal.tenant.quota)
        except BaseException:
            if cleanup:
                await asyncio.to_thread(self.artifacts.delete, cleanup)
            raise
        if created:
            self.metrics.job_created(principal.tenant_id)
            if cameo is not None and not await asyncio.to_thread(self.cameos.may_use, cameo, principal.tenant_id,
                                                                 principal.user):
                # Revoked between the check above and the insert: the revocation did not see this job.
                await asyncio.to_thread(self.store.request_cancel, job.id, reason="consent_revoked",
                                        message="the cameo owner revoked consent")
                raise PermissionDenied(f"cameo_id {cameo.id!r}: consent was revoked while the video was created",
                                       field="cameo_id")
            if cameo is not None:
                await asyncio.to_thread(self.cameos.notify, cameo, "used", job.id, principal.tenant_id,
                                        "held for your approval" if held else "")
            await self.dispatcher.wake()
        elif cleanup:
            await asyncio.to_thread(self.artifacts.delete, cleanup)
        return job, created

    def _put_png(self, key: str, image: PIL.Image.Image) -> None:
        path = self.artifacts.scratch_path(key)
        image.save(path, format="PNG")
        self.artifacts.put_file(key, path)

    # -- read ------------------------------------------------------------------------------
    async def _own(self, principal: Principal, video_id: str, field: str = "id") -> Job:
        if not video_id:
            raise InvalidArgument(f"{field} is required: the video id (video_...)", field=field)
        try:
            job = await asyncio.to_thread(self.store.get, video_id)
        except NotFound:
            job = None
        if job is None or job.tenant != principal.tenant_id:  # another tenant's video does not exist here
            raise NotFound(f"{field} {video_id!r} not found: no such video", field=field)
        return job

    async def _readable(self, principal: Principal, video_id: str, field: str = "id") -> Job:
        """Own videos, and other tenants' public, completed, released ones."""
        try:
            return await self._own(principal, video_id, field)
        except NotFound:
            job = await asyncio.to_thread(self.store.get, video_id)
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
        return job if job.tenant == principal.tenant_id else _public_view(job)

    async def list(self, principal: Principal, *, status: JobStatus | None = None, page_size: int = 0,
                   page_token: str | None = None, after_id: str | None = None,
                   ascending: bool = False) -> tuple[list[Job], str | None]:
        page_size = _page_size(page_size)
        return await asyncio.to_thread(self.store.list, principal.tenant_id, status=status, page_size=page_size,
                                       page_token=page_token or None, after_id=after_id or None,
                                       ascending=ascending)

    async def list_public(self, page_size: int = 0, page_token: str | None = None) -> tuple[list[Job], str | None]:
        return await asyncio.to_thread(self.store.list_public, page_size=_page_size(page_size),
                                       page_token=page_token or None)

    async def queue_position(self, job: Job) -> int | None:
        if job.status != JobStatus.QUEUED:
            return None
        return await asyncio.to_thread(self.store.queue_position, job.id)

    # -- change ------------------------------------------------------------------------------
    async def cancel(self, principal: Principal, video_id: str) -> Job:
        await self._own(principal, video_id)
        job = await asyncio.to_thread(self.store.request_cancel, video_id)
        if job.status == JobStatus.IN_PROGRESS:
            await self.dispatcher.cancel(video_id)
        return job

    async def delete(self, principal: Principal, video_id: str) -> Job:
        await self._own(principal, video_id)
        return await self.delete_job(video_id)

    async def delete_job(self, video_id: str) -> Job:
        """Delete a finished video and its files (callers have checked the right to)."""
        job = await asyncio.to_thread(self.store.delete, video_id)
        if job.artifact is not None:
            await asyncio.to_thread(self.artifacts.delete, job.artifact.key)
        if job.conditioning.image_key and not job.conditioning.cameo_id:
            await asyncio.to_thread(self.artifacts.delete, job.conditioning.image_key)
        return job

    async def set_visibility(self, principal: Principal, video_id: str, visibility: Visibility) -> Job:
        job = await self._own(principal, video_id)
        if visibility == Visibility.PUBLIC:
            if job.review == Review.PENDING:
                raise FailedPrecondition(f"visibility: video {video_id} is held for the cameo owner's approval; it "
                                         "cannot be published yet", field="visibility")
            if job.status != JobStatus.COMPLETED:
                raise FailedPrecondition(f"visibility: video {video_id} is {job.status.value}; only a completed "
                                         "video can be public", field="visibility")
        return await asyncio.to_thread(self.store.set_visibility, video_id, visibility)

    # -- follow ------------------------------------------------------------------------------
    async def watch(self, principal: Principal, video_id: str, poll_seconds: float = 0.1) -> AsyncIterator[Progress]:
        """A snapshot now, then every stored event, until a terminal one."""
        await self._own(principal, video_id)
        # Events first, then the job: a finish landing between the two reads shows in the snapshot,
        # or after it; read the other way round, its event would be skipped and the watch never end.
        seen = max((e.id for e in await asyncio.to_thread(self.store.events, video_id)), default=0)
        job = await self._own(principal, video_id)
        snapshot = Progress(video_id=job.id, status=job.status, stage=job.stage, at=time.time(),
                            step=job.step, total_steps=job.total_steps, progress=job.progress,
                            queue_position=await self.queue_position(job), eta_seconds=job.eta_seconds,
                            error_code=job.error_code, error_message=job.error_message, message="snapshot")
        yield snapshot
        if snapshot.terminal:
            return
        last_position = snapshot.queue_position
        while True:
            await asyncio.sleep(poll_seconds)
            events = await asyncio.to_thread(self.store.events, video_id, seen)
            for ev in events:
                seen = ev.id
                final = await asyncio.to_thread(self.store.get, video_id) if ev.status.terminal else None
                yield Progress(video_id=video_id, status=ev.status, stage=ev.stage, at=ev.at, step=ev.step,
                               total_steps=ev.total_steps, progress=ev.progress, eta_seconds=ev.eta_seconds,
                               batch_size=ev.batch_size, message=ev.message,
                               error_code=final.error_code if final else None,
                               error_message=final.error_message if final else None)
                if final is not None:
                    return
            if not events:  # queued: tell the caller when it moves up
                current = await self._own(principal, video_id)
                position = await self.queue_position(current)
                if position is not None and position != last_position:
                    last_position = position
                    yield Progress(video_id=video_id, status=current.status, stage=current.stage, at=time.time(),
                                   queue_position=position, message="queue position")

    async def download(self, principal: Principal, video_id: str) -> Download:
        job = await self.get(principal, video_id)
        if job.review == Review.PENDING:
            raise FailedPrecondition(f"id {video_id} is held until the cameo owner approves it", field="id")
        if job.status != JobStatus.COMPLETED or job.artifact is None:
            raise FailedPrecondition(f"id {video_id} is {job.status.value}; it can be downloaded once completed",
                                     field="id")
        chunk = self.config.storage.download_chunk_bytes
        artifact = job.artifact

        async def chunks() -> AsyncIterator[bytes]:
            it = iter(self.artifacts.read_chunks(artifact.key, chunk))
            while (block := await asyncio.to_thread(next, it, None)) is not None:
                yield block

        return Download(artifact=artifact, filename=f"{job.id}.mp4", chunks=chunks())


def _owns(principal: Principal, cameo: Cameo) -> bool:
    return (cameo.owner_tenant, cameo.owner_user) == (principal.tenant_id, principal.user)


def _hash(data: dict) -> str:
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()


def _public_view(job: Job) -> Job:
    """Another tenant's public video: the video itself, nothing of how or by whom it was made (no user,
    priority, seed, negative or enhanced prompt, cameo, attempts or errors), as the public feed shows it."""
    params = {**job.params, "seed": 0, "negative_prompt": None}
    return replace(job, user="", priority=0, params=params, attempts=0, error_code=None, error_message=None,
                   enhanced_prompt=None, idempotency_key=None, request_hash="",
                   conditioning=Conditioning(parent_id=job.conditioning.parent_id))


def _page_size(page_size: int) -> int:
    if page_size == 0:
        return 20
    if not 1 <= page_size <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"page_size={page_size} is not allowed: an integer in [1, {MAX_PAGE_SIZE}]",
                              field="page_size")
    return page_size


def _check_idempotency_key(key: str | None) -> None:
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(f"idempotency_key is not allowed: at most {MAX_IDEMPOTENCY_KEY} characters, "
                              f"got {len(key)}", field="idempotency_key")


def _check_printable(field: str, text: str | None) -> None:
    """Malformed text (control characters other than newline and tab) is INVALID_ARGUMENT."""
    if text and any(ord(c) < 32 and c not in "\n\t\r" for c in text):
        raise InvalidArgument(f"{field} is not allowed: it contains control characters", field=field)


def _decode_image(data: bytes) -> PIL.Image.Image:
    try:
        image = PIL.Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InvalidArgument(f"image is not allowed: at most {MAX_IMAGE_PIXELS} pixels", field="image")
        image.load()
    except InvalidArgument:
        raise
    except Exception:  # noqa: BLE001 - anything PIL cannot read is a bad image
        raise InvalidArgument("image is not allowed: it must be a PNG or JPEG image", field="image") from None
    if image.format not in ("PNG", "JPEG"):
        raise InvalidArgument(f"image is not allowed: PNG or JPEG, got {image.format}", field="image")
    return image.convert("RGB")
