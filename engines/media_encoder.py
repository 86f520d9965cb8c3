"""Pixels -> conditioning latents with the video VAE encoder (image-to-video, cameos, remix).

- `encode_image`: a first frame, prepared exactly as `LTX2ImageToVideoPipeline` does (H.264
  re-compression at the model family's CRF, resize, VAE encode, argmax, normalize).
- `encode_video`: a whole source clip for a remix, as `LTX2Pipeline` treats 5-D `latents`
  (VAE encode, argmax, normalize with the scaling factor).
"""

from __future__ import annotations

from pathlib import Path

import av
import numpy as np
import PIL.Image
import torch
from diffusers import LTX2Pipeline
from diffusers.pipelines.ltx2.utils import apply_image_conditioning_crf
from diffusers.video_processor import VideoProcessor

from engines.config import ModelConfig
from engines.model_loader import VIDEO_ENCODER_PARTS, Components, ComponentSource
from engines.params import GenerationParams
from engines.runtime import configure_threads
from engines.stage_io import LatentGeometry, LatentShape, VideoConditioning


class MediaEncoder:
    def __init__(self, config: ModelConfig, components: Components | None = None,
                 geometry: LatentGeometry | None = None) -> None:
        configure_threads(config)
        self.config = config
        source = ComponentSource(config)
        self.vae = (components or source.load(VIDEO_ENCODER_PARTS)).vae
        self.geometry = geometry or source.geometry()
        self.device = torch.device(config.device)
        # The image-to-video pipeline resizes bilinearly (LTX2ImageToVideoPipeline.video_processor).
        self.processor = VideoProcessor(vae_scale_factor=self.geometry.spatial_compression, resample="bilinear")

    def _encode(self, pixels: torch.Tensor) -> torch.Tensor:
        """[1, 3, F, H, W] in [-1, 1] -> latent mode [1, C, f, h, w] (the pipelines' "argmax")."""
        return self.vae.encode(pixels.to(self.device, self.vae.dtype)).latent_dist.mode()

    @torch.inference_mode()
    def encode_image(self, image: PIL.Image.Image, params: GenerationParams) -> VideoConditioning:
        """A first-frame condition at the request's size (image-to-video and cameo references)."""
        g = self.geometry
        rgb = image.convert("RGB")
        if g.image_crf:
            rgb = PIL.Image.fromarray(apply_image_conditioning_crf(np.array(rgb), g.image_crf))
        pixels = self.processor.preprocess(rgb, height=params.height, width=params.width)  # [1, 3, H, W]
        latents = self._encode(pixels.unsqueeze(2))  # [1, C, 1, h, w]
        latents = LTX2Pipeline._normalize_latents(latents, self.vae.latents_mean, self.vae.latents_std)
        packed = LTX2Pipeline._pack_latents(latents.float(), g.patch_size, g.patch_size_t)[0]
        return VideoConditioning(kind="first_frame", latents=packed.cpu().numpy())

    @torch.inference_mode()
    def encode_video(self, path: str | Path, params: GenerationParams, strength: float) -> VideoConditioning:
        """A source clip resized to the request and padded to its 8k+1 frames, for a remix."""
        g = self.geometry
        frames = _read_frames(path, params.num_frames)
        video = self.processor.preprocess_video(frames, height=params.height, width=params.width)  # [1,3,F,H,W]
        latents = self._encode(video)
        latents = LTX2Pipeline._normalize_latents(latents, self.vae.latents_mean, self.vae.latents_std,
                                                  self.vae.config.scaling_factor)
        shape = LatentShape.for_params(params, g)
        if latents.shape[2:] != (shape.frames, shape.height, shape.width):
            raise ValueError(f"source latents {tuple(latents.shape[2:])} do not match the request's {shape}")
        packed = LTX2Pipeline._pack_latents(latents.float(), g.patch_size, g.patch_size_t)[0]
        return VideoConditioning(kind="source_video", latents=packed.cpu().numpy(), strength=strength)


def _read_frames(path: str | Path, count: int) -> list[PIL.Image.Image]:
    """The first `count` frames of a video (the last one repeated if it is shorter)."""
    out: list[PIL.Image.Image] = []
    with av.open(str(path)) as container:
        for frame in container.decode(video=0):
            out.append(frame.to_image())
            if len(out) == count:
                break
    if not out:
        raise ValueError(f"{path} has no video frames")
    out.extend([out[-1]] * (count - len(out)))
    return out
