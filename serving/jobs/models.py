"""The records the job store keeps: jobs and their progress events."""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

from engines.params import GenerationParams, params_from_dict
from serving.artifacts import Artifact
from serving.jobs.states import JobStatus


class Stage(enum.StrEnum):
    """Where an in-progress job is."""

    QUEUED = "queued"
    ENCODING = "encoding"
    DENOISING = "denoising"
    DECODING = "decoding"
    DONE = "done"


class Visibility(enum.StrEnum):
    PRIVATE = "private"
    PUBLIC = "public"


class Review(enum.StrEnum):
    """Approval of a video that uses a cameo whose owner asked to approve each use."""

    NONE = "none"  # no approval needed
    PENDING = "pending"  # held: its creator cannot download or publish it yet
    APPROVED = "approved"


@dataclass(frozen=True)
class Quota:
    """Per-tenant limits checked when a job is created (0 means unlimited)."""

    max_queued: int = 0
    seconds_per_day: float = 0.0
    max_concurrent: int = 0  # enforced when jobs are claimed, not at creation


@dataclass(frozen=True)
class Conditioning:
    """What a job is conditioned on besides its prompt."""

    image_key: str | None = None  # first-frame image in the artifact store (image-to-video, cameo)
    parent_id: str | None = None  # remix: the source video
    parent_key: str | None = None  # the source video's MP4
    strength: float = 0.0  # remix: how much of the source is re-noised (0..1)
    cameo_id: str | None = None


@dataclass(frozen=True)
class NewJob:
    """What CreateVideo asks the store to keep."""

    id: str
    tenant: str
    model: str
    priority: int
    params: dict[str, Any]  # GenerationParams as JSON-able values (validated)
    request_hash: str  # of the request, to spot an idempotency key reused for another request
    idempotency_key: str | None = None
    user: str = "default"
    visibility: Visibility = Visibility.PRIVATE
    conditioning: Conditioning = field(default_factory=Conditioning)
    review: Review = Review.NONE


@dataclass(frozen=True)
class Lease:
    """A dispatcher's hold on one in-progress job. Every write the holder makes carries it, and the store
    refuses it (`StaleLease`) once another claim has bumped the job's generation."""

    job_id: str
    owner: str
    generation: int


def denoise_checkpoint_key(tenant: str, job_id: str) -> str:
    """Where a job's denoise checkpoint lives in the artifact store: beside its MP4, tenant-scoped."""
    return f"{tenant}/{job_id}.denoise.ckpt"


@dataclass(frozen=True)
class Job:
    id: str
    tenant: str
    model: str
    priority: int
    params: dict[str, Any]
    status: JobStatus
    seq: int  # arrival order
    created_at: float
    request_hash: str = ""
    idempotency_key: str | None = None
    started_at: float | None = None
    completed_at: float | None = None
    stage: Stage = Stage.QUEUED
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    error_code: str | None = None
    error_message: str | None = None
    artifact: Artifact | None = None
    attempts: int = 0  # claims so far (a lease that expires counts one; a hand back does not)
    lease_owner: str | None = None  # the dispatcher holding it while in progress
    lease_generation: int = 0  # bumped by every claim: the fencing token of the holder's writes
    lease_expires_at: float | None = None
    cancel_requested: bool = False
    cancel_reason: str | None = None
    user: str = "default"
    visibility: Visibility = Visibility.PRIVATE
    conditioning: Conditioning = field(default_factory=Conditioning)
    review: Review = Review.NONE
    enhanced_prompt: str | None = None  # what the prompt enhancer wrote (only when the request asked)
    checkpoint_key: str | None = None  # its denoise state in the artifact store, while it has one
    checkpoint_step: int | None = None  # the step that checkpoint holds
    resumed_from_step: int | None = None  # the step its last attempt resumed at (None: it started at step 0)
    denoise_steps_run: int = 0  # denoising steps its attempts computed (more than its steps after a lost replica)

    @property
    def lease(self) -> Lease | None:
        """The lease an in-progress job is held under."""
        if self.status != JobStatus.IN_PROGRESS or self.lease_owner is None:
            return None
        return Lease(self.id, self.lease_owner, self.lease_generation)

    @cached_property
    def generation(self) -> GenerationParams:
        """The validated generation parameters this job was created with (typed; `params` is their stored form)."""
        return params_from_dict(self.params)


@dataclass(frozen=True)
class JobEvent:
    """One progress or status change, stored so watchers (and restarts) can replay it."""

    id: int
    job_id: str
    at: float
    status: JobStatus
    stage: Stage
    step: int = 0
    total_steps: int = 0
    progress: float = 0.0
    eta_seconds: float | None = None
    batch_size: int = 0
    message: str = ""
    extra: dict[str, Any] = field(default_factory=dict)
