"""The dispatcher's view of the stages, over Ray Serve handles, and the Denoiser's stream on the wire.

A Denoiser replica's stream (`to_wire`) is the loop's items (a `DenoiseEvent` per step, `Resumed`,
`Checkpointed`, `HandedBack` as they come), then `LATENTS_FOLLOW`, then the
`DenoisedLatents` as an item of its own: a top-level stream object, whose reference the caller owns and
passes on to the Decoder without fetching it. `ServeStages.denoise` reads it back into the stage contract's
`Denoised`, holding that reference in a one-element list (Ray resolves a top-level reference argument
before a call; nested in a list it arrives as a reference, and the Decoder fetches it itself).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import ray.exceptions as rex
import ray.serve.exceptions as sex
from ray.serve.handle import DeploymentHandle

from engines.errors import ParallelError
from engines.params import GenerationParams
from engines.stage_io import PromptPair
from serving.artifacts import Artifact
from serving.data_plane.stages import Checkpointing, Denoised, DenoiseItem, StageClient, StageUnavailable
from serving.jobs import Conditioning
from serving.on_ray.compat import object_ref_stream
from serving.provenance.claim import Claim

# Failures of a replica or of the objects it owned: retrying the job on another replica helps. A
# ParallelError is a replica spread over several ranks that lost one (it is being replaced).
_UNAVAILABLE = (rex.RayActorError, rex.ActorUnavailableError, rex.ObjectLostError, rex.OwnerDiedError,
                rex.WorkerCrashedError, rex.NodeDiedError, sex.DeploymentUnavailableError,
                sex.ReplicaUnavailableError, sex.BackPressureError, ParallelError)


@dataclass(frozen=True)
class LatentsFollow:
    """Marker in a Denoiser replica's stream: the next (and last) item is the finished latents."""


LATENTS_FOLLOW = LatentsFollow()


async def to_wire(items: AsyncIterator[DenoiseItem]) -> AsyncIterator[Any]:
    """A Denoiser replica's stream as it goes on the wire (see above); closing it closes `items` at once."""
    async with contextlib.aclosing(items):
        async for item in items:
            if isinstance(item, Denoised):
                yield LATENTS_FOLLOW
                yield item.latents
            else:
                yield item


def _is_unavailable(exc: BaseException) -> bool:
    seen = 0
    while exc is not None and seen < 8:
        if isinstance(exc, _UNAVAILABLE):
            return True
        exc = exc.cause if isinstance(exc, rex.RayTaskError) and hasattr(exc, "cause") else exc.__cause__
        seen += 1
    return False


class ServeStages(StageClient):
    def __init__(self, text_encoder: DeploymentHandle, denoiser: DeploymentHandle,
                 decoder: DeploymentHandle) -> None:
        self.text_encoder, self.denoiser, self.decoder = text_encoder, denoiser, decoder

    async def enhance(self, job_id: str, params: GenerationParams) -> str:
        # The enhancer lives in the TextEncoder replicas (on CPU it is the same Gemma model).
        try:
            return await self.text_encoder.enhance.remote(params.prompt, params.seed)
        except Exception as e:
            if _is_unavailable(e):
                raise StageUnavailable(f"prompt enhancer: {type(e).__name__}") from e
            raise

    def encode(self, job_id: str, params: GenerationParams) -> Any:
        # Not awaited: the response is handed to the denoiser, which resolves it itself, so the
        # embedding goes from the encoder replica to the denoiser replica without passing here.
        return self.text_encoder.encode.remote(PromptPair(params.prompt, params.negative_prompt or ""))

    def condition(self, job_id: str, params: GenerationParams, conditioning: Conditioning) -> Any:
        # The VAE lives in the Decoder replicas; like the embedding, the result goes straight to the denoiser.
        if not conditioning.image_key and not conditioning.parent_key:
            return None
        return self.decoder.encode_condition.remote(params, conditioning.image_key, conditioning.parent_key,
                                                    conditioning.strength)

    async def denoise(self, request_id: str, params: GenerationParams, embedding: Any, priority: int,
                      conditioning: Any = None, checkpointing: Checkpointing | None = None
                      ) -> AsyncIterator[DenoiseItem]:
        stream = self.denoiser.options(stream=True).denoise.remote(request_id, params, embedding, priority,
                                                                   conditioning, checkpointing)
        try:
            items = await object_ref_stream(stream)  # references: the latents item is never fetched here
            async for ref in items:
                item = await ref
                if isinstance(item, LatentsFollow):
                    # Owned by this process (a top-level stream object, not a reference nested in one),
                    # kept alive by the job until the Decoder has read it.
                    latents = await items.__anext__()
                    yield Denoised([latents])
                    return
                yield item
        except Exception as e:
            if _is_unavailable(e):
                raise StageUnavailable(f"denoiser: {type(e).__name__}") from e
            raise
        finally:
            stream.cancel()  # the caller left early (cancel): stop the replica's generator too

    def upsample(self, job_id: str, latents: Any) -> Any:
        # The upsampler lives in the Decoder replicas beside the VAE; like the stage-1 latents it reads, its
        # result goes from replica to replica without passing here.
        return self.decoder.upsample.remote(latents)

    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        try:
            return await self.decoder.decode.remote(job_id, params, latents, artifact_key, claim, parent_key)
        except Exception as e:
            if _is_unavailable(e):
                raise StageUnavailable(f"decoder: {type(e).__name__}") from e
            raise
