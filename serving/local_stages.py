"""The stages in this process: a `StageClient` over the engines, without a cluster.

What the Serve deployments do across replicas, done here with the same pieces: the text encoder and
the VAE in worker threads, the denoise loop (step batching across the jobs of this process) and the
renderer (mark, mux, sign, store). A dispatcher over it runs jobs end to end in one process: tests,
and a single-process server.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

from engines.denoiser import DenoiseRequest
from engines.params import GenerationParams
from engines.prompt_enhancer import PromptEnhancer
from engines.stage_io import PromptPair
from engines.staged_pipeline import StagedPipeline
from serving.artifacts import Artifact
from serving.async_view import in_thread
from serving.denoise_loop import DenoiseLoop
from serving.jobs import Conditioning
from serving.provenance.claim import Claim
from serving.rendering import Renderer
from serving.scheduler import StepScheduler
from serving.stages import DenoiseEvent, LatentsFollow, StageClient


class LocalStages(StageClient):
    def __init__(self, pipeline: StagedPipeline, renderer: Renderer, scheduler: StepScheduler | None = None,
                 enhancer: PromptEnhancer | None = None) -> None:
        self.pipeline, self.renderer, self.enhancer = pipeline, renderer, enhancer
        self.loop = DenoiseLoop(pipeline.denoiser, scheduler or StepScheduler(max_batch_size=8, max_running=32))

    async def enhance(self, job_id: str, params: GenerationParams) -> str:
        if self.enhancer is None:
            raise RuntimeError("these stages have no prompt enhancer")
        [text] = await in_thread(self.enhancer.enhance, [params.prompt], [params.seed])
        return text

    def encode(self, job_id: str, params: GenerationParams) -> Any:
        return asyncio.ensure_future(in_thread(self._encode, params))

    def _encode(self, params: GenerationParams) -> Any:
        [embedding] = self.pipeline.text_encoder.encode([PromptPair(params.prompt, params.negative_prompt or "")])
        return embedding

    def condition(self, job_id: str, params: GenerationParams, conditioning: Conditioning) -> Any:
        if not conditioning.image_key and not conditioning.parent_key:
            return None
        return asyncio.ensure_future(in_thread(self.renderer.condition, params, conditioning.image_key,
                                               conditioning.parent_key, conditioning.strength))

    async def denoise(self, request_id: str, params: GenerationParams, embedding: Any, priority: int,
                      conditioning: Any = None) -> AsyncIterator[DenoiseEvent]:
        request = DenoiseRequest(request_id, params, await embedding,
                                 await conditioning if conditioning is not None else None)
        async for item in self.loop.denoise(request, priority):
            if isinstance(item, DenoiseEvent):
                last = item
                yield item
            elif not isinstance(item, LatentsFollow):  # the latents
                yield DenoiseEvent(step=last.step, total_steps=last.total_steps, batch_size=0, latents=item)

    def upsample(self, job_id: str, latents: Any) -> Any:
        return asyncio.ensure_future(in_thread(self.pipeline.upsampler.upsample, latents))

    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        return await in_thread(self.renderer.render, latents, params, artifact_key, claim, parent_key)
