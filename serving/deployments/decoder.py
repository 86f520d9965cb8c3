"""Decoder deployment: one `Renderer` per replica (latents -> marked, signed MP4 in the artifact store).

It also hosts the VAE *encoder* side (same weights) and the latent upsampler: first frames, remix
sources and two-stage jobs' stage-1 latents become conditioning here and go straight to the Denoiser
through the object store.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from engines.decoder import Decoder
from engines.media_encoder import MediaEncoder
from engines.model_loader import Components, ComponentSource
from engines.params import GenerationParams
from engines.stage_io import VideoConditioning
from engines.upsampler import LatentUpsampler
from serving.artifacts import Artifact, open_artifact_store
from serving.config import load_config
from serving.data_plane.rendering import Renderer
from serving.on_ray.metrics import RayMetrics
from serving.provenance.claim import Claim
from serving.provenance.credentials import ContentCredentials


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = load_config(config)
        geometry = ComponentSource(cfg.model).geometry()
        decoder = Decoder(cfg.model, geometry=geometry)
        # The encoder side of the same VAE module: no second copy of the weights.
        media = MediaEncoder(cfg.model, components=Components(vae=decoder.vae), geometry=geometry)
        self.renderer = Renderer(decoder, media, open_artifact_store(cfg.storage),
                                 ContentCredentials(cfg.provenance), cfg.provenance.watermark)
        self.upsampler = LatentUpsampler.beside(decoder, cfg.model)
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
