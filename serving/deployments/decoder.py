"""Decoder deployment: one `Renderer` per replica (latents -> marked, signed MP4 in the artifact store).

It also hosts the VAE *encoder* side (same weights) and the latent upsampler: first frames, remix
sources and two-stage jobs' stage-1 latents become conditioning here and go straight to the Denoiser
through the object store.
"""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray import serve

from serving.artifacts import Artifact
from serving.config import load_config
from serving.on_ray.metrics import RayMetrics
from serving.provenance.claim import Claim
from serving.services import open_renderer

if TYPE_CHECKING:
    from engines.params import GenerationParams
    from engines.stage_io import VideoConditioning


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        from engines.upsampler import LatentUpsampler  # model libraries load in the replica, not at the app's build

        cfg = load_config(config)
        self.renderer = open_renderer(cfg)
        self.upsampler = LatentUpsampler.beside(self.renderer.decoder, cfg.model)
        self.metrics = RayMetrics()
        # One video at a time (the replica's thread budget is its engine's; several at once split the cores and
        # starve a Denoiser on the same node): the others wait here in order, counted by autoscaling.
        self._one_at_a_time = asyncio.Lock()

    async def encode_condition(self, params: GenerationParams, image_key: str | None, parent_key: str | None,
                               strength: float) -> VideoConditioning:
        return await asyncio.to_thread(self.renderer.condition, params, image_key, parent_key, strength)

    async def upsample(self, latents: list) -> VideoConditioning:
        stage1 = await latents[0]
        async with self._one_at_a_time:
            return await asyncio.to_thread(self.upsampler.upsample, stage1)

    async def decode(self, job_id: str, params: GenerationParams, latents: list, key: str, claim: Claim,
                     parent_key: str | None = None) -> Artifact:
        denoised = await latents[0]  # the Denoiser's object: fetched from the object store here
        async with self._one_at_a_time:
            result = await asyncio.to_thread(self.renderer.render, denoised, params, key, claim, parent_key)
        self.metrics.artifact_written(result.size_bytes)
        return result
