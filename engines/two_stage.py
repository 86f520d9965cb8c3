"""Two-stage generation, LTX-2's recipe for high resolution: what each stage of one request asks for.

A request with ``two_stage`` runs as

1. stage 1: the request at half its width and height, its own steps and guidance (an ordinary
   denoise request: it batches with any other request of that shape);
2. upsampling: the stage-1 latents 2x in space by the latent upsampler (`engines.upsampler`, where
   the VAE runs);
3. stage 2: a refine at full size, conditioned on the upsampled video and the stage-1 audio
   (`VideoConditioning(kind="refine")`): both re-noised to the first of ``model.schedule.refine_sigmas``
   and denoised over that list as is, without guidance (the distilled stage-2 recipe), with noise drawn
   from seed + 1; it batches with other stage-2 requests of its size;

then the full-size latents decode as any other. Both the in-process chain (`StagedPipeline`) and the
dispatcher build the stages here, so `kino run --two-stage` and the cluster run the same requests.
"""

from __future__ import annotations

import dataclasses

from engines.config import ScheduleConfig
from engines.params import GenerationParams


def stage_one(params: GenerationParams) -> GenerationParams:
    """The half-size generation (validated params in, validated params out)."""
    assert params.two_stage and params.width is not None and params.height is not None, "a validated two-stage request"
    return dataclasses.replace(params, width=params.width // 2, height=params.height // 2, two_stage=False)


def stage_two(params: GenerationParams, schedule: ScheduleConfig) -> GenerationParams:
    """The full-size refine: one step per refine sigma, no guidance, no step cache (three steps leave
    nothing to reuse)."""
    assert params.two_stage, "a validated two-stage request"
    return dataclasses.replace(params, steps=len(schedule.refine_sigmas), guidance_scale=1.0,
                               audio_guidance_scale=1.0, guidance_rescale=0.0, audio_guidance_rescale=0.0,
                               cache="off", two_stage=False)

