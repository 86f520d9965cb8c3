"""The domain: what a client can do with videos, whatever protocol it speaks.

The gRPC servicer (and the REST adapter) translate their messages into these calls and
these results back; validation, tenancy and every decision live here, once.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
import json
import uuid
from abc import ABC, abstractmethod
from dataclasses import asdict, dataclass
from typing import AsyncIterator

from engines.config import ModelConfig
from engines.errors import InvalidParameter
from engines.params import GenerationParams, params_to_dict, parse_fps
from serving.artifacts import ArtifactStore
from serving.config import KinoConfig
from serving.errors import FailedPrecondition, InvalidArgument, NotFound
from serving.jobs import Artifact, Job, JobStatus, JobStore, NewJob, Stage

MAX_IDEMPOTENCY_KEY = 128
MAX_PAGE_SIZE = 100
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
    def __init__(self, config: KinoConfig, store: JobStore, artifacts: ArtifactStore,
                 dispatcher: DispatcherLink) -> None:
        self.config, self.store, self.artifacts, self.dispatcher = config, store, artifacts, dispatcher
        self.model: ModelConfig = config.model

    # -- create --------------------------------------------------------------------------
    def validate(self, req: CreateVideo) -> tuple[GenerationParams, int]:
        """The validated generation parameters and priority; InvalidArgument names the field."""
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
        priority = self.config.queue.default_priority if req.priority is None else req.priority
        if not 0 <= priority <= 9:
            raise InvalidArgument(f"priority={priority} is not allowed: an integer in [0, 9]", field="priority")
        if req.idempotency_key is not None and len(req.idempotency_key) > MAX_IDEMPOTENCY_KEY:
            raise InvalidArgument(f"idempotency_key is not allowed: at most {MAX_IDEMPOTENCY_KEY} characters, "
                                  f"got {len(req.idempotency_key)}", field="idempotency_key")
        try:
            params = GenerationParams(
                prompt=req.prompt, negative_prompt=req.negative_prompt, width=width, height=height,
                seconds=req.seconds, fps=fps, seed=req.seed, steps=req.steps, guidance_scale=req.guidance_scale,
                audio_guidance_scale=req.audio_guidance_scale).validated(self.model)
        except InvalidParameter as e:
            api_field = _API_FIELD.get(e.field, e.field)
            message = str(e) if api_field == e.field else f"{api_field}: {e}"
            raise InvalidArgument(message, field=api_field) from None
        return params, priority

    async def create(self, tenant: str, req: CreateVideo) -> tuple[Job, bool]:
        """Queue a job (or return the one this idempotency key already made)."""
        params, priority = self.validate(req)
        request_hash = hashlib.sha256(json.dumps(
            {k: v for k, v in asdict(req).items() if k != "idempotency_key"}, sort_keys=True).encode()).hexdigest()
        new = NewJob(id=f"video_{uuid.uuid4().hex}", tenant=tenant, model=self.model.model_id, priority=priority,
                     params=params_to_dict(params), request_hash=request_hash,
                     idempotency_key=req.idempotency_key or None)
        job, created = await asyncio.to_thread(self.store.create, new, max_queued=self.config.queue.max_queued)
        if created:
            await self.dispatcher.wake()
        return job, created

    # -- read ----------------------------------------------------------------------------
    async def get(self, tenant: str, video_id: str) -> Job:
        if not video_id:
            raise InvalidArgument("id is required: the video id (video_...)", field="id")
        job = await asyncio.to_thread(self.store.get, video_id)
        if job.tenant != tenant:  # another tenant's video does not exist for this caller
            raise NotFound(f"video id {video_id!r} not found", field="id")
        return job

    async def list(self, tenant: str, *, status: JobStatus | None = None, page_size: int = 0,
                   page_token: str | None = None) -> tuple[list[Job], str | None]:
        if page_size == 0:
            page_size = 20
        if not 1 <= page_size <= MAX_PAGE_SIZE:
            raise InvalidArgument(f"page_size={page_size} is not allowed: an integer in [1, {MAX_PAGE_SIZE}]",
                                  field="page_size")
        return await asyncio.to_thread(self.store.list, tenant, status=status, page_size=page_size,
                                       page_token=page_token or None)

    async def queue_position(self, job: Job) -> int | None:
        if job.status != JobStatus.QUEUED:
            return None
        return await asyncio.to_thread(self.store.queue_position, job.id)

    # -- change --------------------------------------------------------------------------
    async def cancel(self, tenant: str, video_id: str) -> Job:
        await self.get(tenant, video_id)
        job = await asyncio.to_thread(self.store.request_cancel, video_id)
        if job.status == JobStatus.IN_PROGRESS:
            await self.dispatcher.cancel(video_id)
        return job

    async def delete(self, tenant: str, video_id: str) -> Job:
        await self.get(tenant, video_id)
        job = await asyncio.to_thread(self.store.delete, video_id)
        if job.artifact is not None:
            await asyncio.to_thread(self.artifacts.delete, job.artifact.key)
        return job

    # -- follow --------------------------------------------------------------------------
    async def watch(self, tenant: str, video_id: str, poll_seconds: float = 0.1) -> AsyncIterator[Progress]:
        """A snapshot now, then every stored event, until a terminal one."""
        job = await self.get(tenant, video_id)
        seen = max((e.id for e in await asyncio.to_thread(self.store.events, video_id)), default=0)
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
                done = ev.status.terminal
                final = await self.get(tenant, video_id) if done else None
                yield Progress(video_id=video_id, status=ev.status, stage=ev.stage, at=ev.at, step=ev.step,
                               total_steps=ev.total_steps, progress=ev.progress, eta_seconds=ev.eta_seconds,
                               batch_size=ev.batch_size, message=ev.message,
                               error_code=final.error_code if final else None,
                               error_message=final.error_message if final else None)
                if done:
                    return
            if not events:  # queued: tell the caller when it moves up
                current = await self.get(tenant, video_id)
                position = await self.queue_position(current)
                if position is not None and position != last_position:
                    last_position = position
                    yield Progress(video_id=video_id, status=current.status, stage=current.stage, at=current.created_at,
                                   queue_position=position, message="queue position")

    async def download(self, tenant: str, video_id: str) -> Download:
        job = await self.get(tenant, video_id)
        if job.status != JobStatus.COMPLETED or job.artifact is None:
            raise FailedPrecondition(f"video {video_id} is {job.status.value}; it can be downloaded once completed",
                                     field="id")
        chunk = self.config.grpc.download_chunk_bytes
        artifact = job.artifact

        async def chunks() -> AsyncIterator[bytes]:
            it = iter(self.artifacts.read_chunks(artifact.key, chunk))
            while (block := await asyncio.to_thread(next, it, None)) is not None:
                yield block

        return Download(artifact=artifact, filename=f"{job.id}.mp4", chunks=chunks())
