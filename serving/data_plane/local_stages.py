"""The stages in this process: a `StageClient` over the engines, without a cluster.

What the Serve deployments do across replicas, done here with the same pieces: the text encoder and
the VAE in worker threads, the denoise loop (step batching across the jobs of this process) and the
renderer (mark, mux, sign, store). A dispatcher over it runs jobs end to end in one process: `kino run`
(serving/local_engine.py), tests and benchmarks. It also keeps what each stage of a job took (`times`), for
the line `kino run` prints.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable
from typing import Any, TypeVar

from engines.denoiser import DenoiseRequest
from engines.params import GenerationParams
from engines.prompt_enhancer import PromptEnhancer
from engines.stage_io import PromptPair
from engines.staged_pipeline import StagedPipeline, StageTimes
from serving.artifacts import Artifact
from serving.async_view import in_thread
from serving.data_plane.denoise_loop import DenoiseLoop
from serving.data_plane.rendering import Renderer
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import Checkpointing, Denoised, DenoiseItem, StageClient, job_of
from serving.jobs import Conditioning
from serving.provenance.claim import Claim

T = TypeVar("T")


class LocalStages(StageClient):
    def __init__(self, pipeline: StagedPipeline, renderer: Renderer, *, loop: DenoiseLoop | None = None,
                 enhancer: PromptEnhancer | None = None) -> None:
        """`loop`: the Denoiser's (serving.services.open_denoise_loop builds one from the config); default: a
        loop over the pipeline's denoiser with the default scheduler."""
        self.pipeline, self.renderer, self.enhancer = pipeline, renderer, enhancer
        self.loop = loop or DenoiseLoop(pipeline.denoiser, StepScheduler(max_batch_size=8, max_running=32))
        self._seconds: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))

    def times(self, job_id: str) -> StageTimes:
        """The seconds each stage of `job_id` took here (a two-stage job's denoise: stage 1 + upsample + stage 2)."""
        s = self._seconds.get(job_id, {})
        one, up, two = s.get("denoise 1", 0.0), s.get("upsample", 0.0), s.get("denoise 2", 0.0)
        return StageTimes(encode=s.get("encode", 0.0), denoise=one + up + two, decode=s.get("decode", 0.0),
                          two_stage=(one, up, two) if two else None)

    def _timed(self, job_id: str, stage: str, work: Callable[..., T], *args: Any) -> Callable[[], T]:
        def run() -> T:
            started = time.perf_counter()
            try:
                return work(*args)
            finally:
                self._seconds[job_id][stage] += time.perf_counter() - started
        return run

    async def enhance(self, job_id: str, params: GenerationParams) -> str:
        if self.enhancer is None:
            raise RuntimeError("these stages have no prompt enhancer")
        [text] = await in_thread(self.enhancer.enhance, [params.prompt], [params.seed])
        return text

    def encode(self, job_id: str, params: GenerationParams) -> Any:
        return asyncio.ensure_future(in_thread(self._timed(job_id, "encode", self._encode, params)))

    def _encode(self, params: GenerationParams) -> Any:
        [embedding] = self.pipeline.text_encoder.encode([PromptPair(params.prompt, params.negative_prompt or "")])
        return embedding

    def condition(self, job_id: str, params: GenerationParams, conditioning: Conditioning) -> Any:
        if not conditioning.image_key and not conditioning.parent_key:
            return None
        return asyncio.ensure_future(in_thread(self.renderer.condition, params, conditioning.image_key,
                                               conditioning.parent_key, conditioning.strength))

    async def denoise(self, request_id: str, params: GenerationParams, embedding: Any, priority: int,
                      conditioning: Any = None, checkpointing: Checkpointing | None = None
                      ) -> AsyncIterator[DenoiseItem]:
        request = DenoiseRequest(request_id, params, await embedding,
                                 await conditioning if conditioning is not None else None)
        stage = "denoise 2" if request_id.endswith(".2") else "denoise 1"  # attempt_id's stage suffix
        started = time.perf_counter()
        # In one process the latents are their own handle.
        async with contextlib.aclosing(self.loop.denoise(request, priority, checkpointing)) as items:
            async for item in items:  # closed with this stream: the loop frees the slot before the caller goes on
                if isinstance(item, Denoised):
                    self._seconds[job_of(request_id)][stage] += time.perf_counter() - started
                yield item

    def upsample(self, job_id: str, latents: Any) -> Any:
        return asyncio.ensure_future(in_thread(self._timed(job_id, "upsample", self.pipeline.upsampler.upsample,
                                                           latents)))

    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        return await in_thread(self._timed(job_id, "decode", self.renderer.render, latents, params, artifact_key,
                                           claim, parent_key))
