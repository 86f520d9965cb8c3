"""What crosses a stage boundary: plain dataclasses of numpy arrays (cheap in Ray's object store)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np

from engines.params import GenerationParams


@dataclass(frozen=True)
class LatentGeometry:
    """How pixels, frames and samples map to latent tokens for one model."""

    spatial_compression: int
    temporal_compression: int
    latent_channels: int
    patch_size: int
    patch_size_t: int
    audio_latent_channels: int
    mel_bins: int
    mel_compression: int
    audio_temporal_compression: int
    audio_sample_rate: int  # of the mel spectrogram (the vocoder's output rate differs)
    audio_hop_length: int
    audio_output_sample_rate: int
    timestep_conditioned_vae: bool
    decode_timestep: float = 0.0
    image_crf: int = 33  # H.264 CRF the model family's image conditioning was trained with

    @property
    def latent_mel_bins(self) -> int:
        return self.mel_bins // self.mel_compression

    @property
    def audio_latents_per_second(self) -> float:
        return self.audio_sample_rate / self.audio_hop_length / float(self.audio_temporal_compression)

    def audio_latent_frames(self, num_frames: int, fps: float) -> int:
        """Latent audio length for a clip, as LTX2Pipeline computes it."""
        return round(num_frames / fps * self.audio_latents_per_second)


@dataclass(frozen=True)
class PromptEmbedding:
    """Connector outputs for one request; row 0 is the negative prompt, row 1 the prompt.

    float32 numpy arrays, so they cross process boundaries cheaply (Ray's object store).
    """

    video: np.ndarray  # [2, tokens, video context dim]
    audio: np.ndarray  # [2, tokens, audio context dim]
    mask: np.ndarray  # [2, tokens] 1 = real token

    @property
    def nbytes(self) -> int:
        return self.video.nbytes + self.audio.nbytes + self.mask.nbytes


@dataclass(frozen=True)
class PromptPair:
    prompt: str
    negative_prompt: str = ""


@dataclass(frozen=True)
class LatentShape:
    """Latent grid of one request; requests of equal shape can share a transformer forward."""

    frames: int
    height: int
    width: int
    audio_frames: int

    @property
    def video_tokens(self) -> int:
        return self.frames * self.height * self.width

    @classmethod
    def for_params(cls, params: GenerationParams, geometry: LatentGeometry) -> LatentShape:
        fps = float(params.fps)
        return cls(
            frames=(params.num_frames - 1) // geometry.temporal_compression + 1,
            height=params.height // geometry.spatial_compression,
            width=params.width // geometry.spatial_compression,
            audio_frames=geometry.audio_latent_frames(params.num_frames, fps),
        )


@dataclass(frozen=True)
class DenoisedLatents:
    """Finished latents of one request (packed token layout), ready for the decoder."""

    request_id: str
    shape: LatentShape
    video: np.ndarray  # [video tokens, C]
    audio: np.ndarray  # [audio tokens, C_a]


@dataclass(frozen=True)
class VideoConditioning:
    """Clean latents a request is conditioned on (normalized, packed token layout).

    - ``first_frame``: the latents of latent frame 0 (image-to-video, cameo reference); those
      tokens stay clean (timestep 0) while the rest is denoised, as in LTX2ImageToVideoPipeline.
    - ``source_video``: a whole clip (remix); re-noised to `strength` and denoised with the new
      prompt from the matching point of the schedule.
    - ``refine``: stage 2 of two-stage generation: the upsampled stage-1 video and the stage-1
      audio, both re-noised to the refine schedule's first sigma and denoised over it at full size
      (LTX2Pipeline's ``latents=``, ``audio_latents=``, ``noise_scale=`` entry).
    """

    kind: Literal["first_frame", "source_video", "refine"]
    latents: np.ndarray  # first_frame: [h*w, C]; source_video, refine: [frames*h*w, C]
    strength: float = 1.0
    audio: np.ndarray | None = None  # refine: the stage-1 audio latents [audio tokens, C_a]


@dataclass(frozen=True)
class DenoiseRequest:
    """What the Denoiser stage is asked: one request's validated parameters, prompt embedding and conditioning."""

    request_id: str
    params: GenerationParams  # validated
    embedding: PromptEmbedding
    conditioning: VideoConditioning | None = None
