"""The stage contract: what the dispatcher asks of the stages and what they send back.

Both sides import this module: the dispatcher (through a `StageClient`) and the stage replicas
(the denoise loop, the renderer). Nothing here knows Ray, torch or a protocol.

- `encode` and `condition` start work and return opaque references the denoiser accepts;
- `denoise` streams one `DenoiseEvent` per step (after `Resumed` when it started from a checkpoint, with
  `Checkpointed` as its checkpoints are written), then `Denoised` with the latents, or `HandedBack` when the
  replica stops; the latents: the
  `DenoisedLatents` in the Denoiser's loop, whatever handle the transport gives the dispatcher past
  it (a reference it passes to the Decoder without fetching; how is the transport's business:
  serving/on_ray/stages.py);
- `upsample` starts the latent upsampler of two-stage generation on stage 1's latents (where the VAE
  runs); its opaque reference is the stage-2 request's conditioning;
- `decode` returns the `Artifact` it put in the artifact store: the same record the job keeps.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from engines.params import GenerationParams
from serving.artifacts import Artifact
from serving.jobs.models import Conditioning
from serving.provenance.claim import Claim

__all__ = ["Artifact", "Checkpointed", "Checkpointing", "DenoiseEvent", "Denoised", "HandedBack", "Resumed",
           "StageClient", "StageUnavailable", "attempt_id", "job_of"]

L = TypeVar("L")


class StageUnavailable(Exception):
    """A stage replica died or could not be reached; the job can be retried."""


@dataclass(frozen=True)
class DenoiseEvent:
    """One denoising step of one request done (`step` of `total_steps`), in a batch of `batch_size`."""

    step: int
    total_steps: int
    batch_size: int


@dataclass(frozen=True)
class Denoised(Generic[L]):
    """The request's last item: its finished latents (`DenoisedLatents` where the loop runs; past a transport,
    the handle it gives the caller to pass on to the decoder)."""

    latents: L


@dataclass(frozen=True)
class Checkpointing:
    """How a denoise request keeps its state: under `key` in the artifact store, at most every `every_seconds`
    and when its denoising ends; `resume`: a checkpoint was recorded, start from it (a missing, corrupt or
    foreign one is skipped: the request starts over)."""

    key: str
    every_seconds: float
    resume: bool = False


@dataclass(frozen=True)
class Resumed:
    """A request's first item when it resumed from its checkpoint: at `step` of `total_steps`."""

    step: int
    total_steps: int


@dataclass(frozen=True)
class Checkpointed:
    """The request's state at `step` is in the artifact store, under its `Checkpointing.key`."""

    step: int


@dataclass(frozen=True)
class HandedBack:
    """The request's last item when its replica stops (a drain): its state at `step` was checkpointed first
    (when it had `Checkpointing`); the caller retries it elsewhere."""

    step: int


DenoiseItem = DenoiseEvent | Denoised[Any] | Resumed | Checkpointed | HandedBack  # what `denoise` streams


def attempt_id(job_id: str, generation: int, stage: int = 1) -> str:
    """The denoise request id of one claim of a job (`stage` 2: the refine of a two-stage job): a retry
    after a lost dispatcher is a new request, and supersedes the old one wherever that still runs."""
    return f"{job_id}@{generation}" if stage == 1 else f"{job_id}@{generation}.{stage}"


def job_of(request_id: str) -> str:
    return request_id.rsplit("@", 1)[0]


class StageClient(ABC):
    """How the dispatcher reaches the stages."""

    @abstractmethod
    async def enhance(self, job_id: str, params: GenerationParams) -> str:
        """The prompt rewritten by the prompt enhancer (asked only when the request opted in)."""

    @abstractmethod
    def encode(self, job_id: str, params: GenerationParams) -> Any:
        """Start text encoding; returns an opaque reference the denoiser accepts."""

    @abstractmethod
    def condition(self, job_id: str, params: GenerationParams, conditioning: Conditioning) -> Any:
        """Start encoding a first frame or a remix source with the VAE; an opaque reference, or None."""

    @abstractmethod
    def denoise(self, request_id: str, params: GenerationParams, embedding: Any, priority: int,
                conditioning: Any = None, checkpointing: Checkpointing | None = None) -> AsyncIterator[DenoiseItem]:
        """One event per step, then `Denoised` with a handle of the latents the decoder and upsampler accept.
        Closing the iterator cancels the request.
        `request_id` is `attempt_id(job, lease generation)`; `checkpointing`: keep (and resume from) its state."""

    @abstractmethod
    def upsample(self, job_id: str, latents: Any) -> Any:
        """Start upsampling stage-1 latents (a `Denoised.latents` handle) for the refine; returns an
        opaque reference the denoiser accepts as conditioning."""

    @abstractmethod
    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        """Decode, watermark, encode the MP4, sign its content credentials, put it in the artifact store."""
