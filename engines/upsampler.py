"""Between the two stages of two-stage generation: the stage-1 latents upsampled 2x in space.

LTX2LatentUpsamplePipeline's math on Kino's packed, normalized latents: unpack, denormalize with the
video VAE's statistics, the latent upsampler, normalize, pack. The result is the conditioning of the
stage-2 request (`VideoConditioning(kind="refine")`), which carries the stage-1 audio on with it. It
runs where the VAE runs (the Decoder replicas), which hold the statistics it needs.
"""

from __future__ import annotations

import torch
from diffusers import LTX2Pipeline

from engines.config import ModelConfig
from engines.decoder import Decoder
from engines.errors import CheckpointError
from engines.model_loader import UPSAMPLER_PARTS, Components, ComponentSource
from engines.runtime import configure_threads
from engines.stage_io import DenoisedLatents, LatentGeometry, VideoConditioning


class LatentUpsampler:
    def __init__(self, config: ModelConfig, components: Components | None = None,
                 geometry: LatentGeometry | None = None) -> None:
        configure_threads(config)
        source = ComponentSource(config)
        comps = components or source.load(UPSAMPLER_PARTS)
        self.model_id = config.model_id
        self.vae, self.upsampler = comps.vae, comps.latent_upsampler  # None: this model has none
        self.geometry = geometry or source.geometry()
        self.device = torch.device(config.device)

    @classmethod
    def beside(cls, decoder: Decoder, config: ModelConfig) -> LatentUpsampler:
        """One sharing a Decoder's VAE (no second copy of its weights)."""
        upsampler = ComponentSource(config).load(["latent_upsampler"]).latent_upsampler
        return cls(config, Components(vae=decoder.vae, latent_upsampler=upsampler), decoder.geometry)

    @torch.inference_mode()
    def upsample(self, stage1: DenoisedLatents) -> VideoConditioning:
        """The stage-2 conditioning: stage 1's video at twice the width and height, its audio as is."""
        if self.upsampler is None:
            raise CheckpointError(f"{self.model_id} has no latent_upsampler/ component: two-stage generation "
                                  "needs one (LTX-2's spatial x2 upsampler)")
        g, s, vae = self.geometry, stage1.shape, self.vae
        z = LTX2Pipeline._unpack_latents(torch.from_numpy(stage1.video).to(self.device)[None], s.frames, s.height,
                                         s.width, g.patch_size, g.patch_size_t)
        z = LTX2Pipeline._denormalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        z = self.upsampler(z.to(self.upsampler.dtype)).float()
        z = LTX2Pipeline._normalize_latents(z, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
        packed = LTX2Pipeline._pack_latents(z, g.patch_size, g.patch_size_t)[0]
        return VideoConditioning(kind="refine", latents=packed.cpu().numpy(), audio=stage1.audio)
