"""The stage contract: what the dispatcher asks of the stages and what they send back.

Both sides import this module: the dispatcher (through a `StageClient`) and the stage replicas
(the denoise loop, the renderer). Nothing here knows Ray, torch or a protocol.

- `encode` and `condition` start work and return opaque references the denoiser accepts;
- `denoise` streams one `DenoiseEvent` per step, then `Denoised` with the latents: the
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

__all__ = ["Artifact", "DenoiseEvent", "Denoised", "StageClient", "StageUnavailable", "attempt_id", "job_of"]

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
                conditioning: Any = None) -> AsyncIterator[DenoiseEvent | Denoised[Any]]:
        """One event per step, then `Denoised` with a handle of the latents the decoder and upsampler accept.
        Closing the iterator cancels the request.
        `request_id` is `attempt_id(job, lease generation)`."""

    @abstractmethod
    def upsample(self, job_id: str, latents: Any) -> Any:
        """Start upsampling stage-1 latents (a `Denoised.latents` handle) for the refine; returns an
        opaque reference the denoiser accepts as conditioning."""

    @abstractmethod
    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        """Decode, watermark, encode the MP4, sign its content credentials, put it in the artifact store."""
