"""How the DiT forward runs: one interface, chosen by `ModelConfig.dit_backend`.

The Denoiser builds a `DiTInputs` batch and calls `backend.forward(inputs)`; it never calls
the transformer itself, so an optimised backend (torch.compile, TensorRT) slots in without
touching batching, guidance or the sampler.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import torch


@dataclass
class DiTInputs:
    """One batched transformer call. Rows are (request, guidance branch) pairs."""

    video: torch.Tensor  # [B, video tokens, C] packed latents
    audio: torch.Tensor  # [B, audio tokens, C_a]
    video_context: torch.Tensor  # [B, text tokens, D]
    audio_context: torch.Tensor  # [B, text tokens, D_a]
    context_mask: torch.Tensor  # [B, text tokens]
    timestep: torch.Tensor  # [B]: the audio stream's and the cross-modal sigma
    video_coords: torch.Tensor  # [B, 3, video tokens, 2] RoPE positions
    audio_coords: torch.Tensor  # [B, 1, audio tokens, 2]
    video_timestep: torch.Tensor | None = None  # [B, video tokens] per-token; None: `timestep` for all

    @property
    def batch_size(self) -> int:
        return self.video.shape[0]


class DiTBackend(ABC):
    """Runs the LTX-2 transformer forward for a batch."""

    name: ClassVar[str]

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    @abstractmethod
    def forward(self, inputs: DiTInputs) -> tuple[torch.Tensor, torch.Tensor]:
        """(video velocity [B, tokens, C], audio velocity [B, tokens, C_a]) in float32."""


class EagerBackend(DiTBackend):
    """The diffusers module as is (any device)."""

    name = "eager"

    @torch.inference_mode()
    def forward(self, inputs: DiTInputs) -> tuple[torch.Tensor, torch.Tensor]:
        dtype = self.transformer.dtype
        t = inputs.timestep
        # As the LTX-2 pipelines call it: sigma = timestep, use_cross_timestep=True, and for
        # image-to-video a per-token video timestep with the audio on the plain one.
        video, audio = self.transformer(
            hidden_states=inputs.video.to(dtype),
            audio_hidden_states=inputs.audio.to(dtype),
            encoder_hidden_states=inputs.video_context.to(dtype),
            audio_encoder_hidden_states=inputs.audio_context.to(dtype),
            timestep=t if inputs.video_timestep is None else inputs.video_timestep,
            audio_timestep=t,
            sigma=t,
            encoder_attention_mask=inputs.context_mask,
            audio_encoder_attention_mask=inputs.context_mask,
            video_coords=inputs.video_coords,
            audio_coords=inputs.audio_coords,
            use_cross_timestep=True,
            return_dict=False,
        )
        return video.float(), audio.float()


_BACKENDS: dict[str, type[DiTBackend]] = {EagerBackend.name: EagerBackend}


def create_backend(name: str, transformer: torch.nn.Module) -> DiTBackend:
    """The backend registered under `name` (see `ModelConfig.dit_backend`)."""
    try:
        cls = _BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown DiT backend {name!r}; known: {sorted(_BACKENDS)}") from None
    return cls(transformer)
