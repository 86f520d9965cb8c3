"""How the DiT forward runs: one interface, chosen by `ModelConfig.dit_backend`.

The Denoiser builds a `DiTInputs` batch and calls `backend.forward(inputs)`; it never calls
the transformer itself, so an optimised backend (torch.compile, TensorRT) slots in without
touching batching, guidance or the sampler.
"""

from __future__ import annotations

import logging
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from engines.lora import LoraRows

log = logging.getLogger(__name__)


class BackendUnavailable(Exception):
    """This backend cannot run here (no GPU, a missing package, no compiler); the reason says which."""


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
    runs_block_hooks: ClassVar[bool] = False
    """Whether `forward` calls the diffusers module's transformer blocks eagerly, so hooks on them
    (the step cache, engines/step_cache.py) take effect."""
    runs_lora: ClassVar[bool] = False
    """Whether the float `torch.nn.Linear` modules of the diffusers model run eagerly, so the forward hooks that add
    per-request LoRA adapters (engines/lora/) take effect; only such a backend is given `forward`'s `lora`."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        self.transformer = transformer

    @abstractmethod
    def forward(self, inputs: DiTInputs, lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """(video velocity [B, tokens, C], audio velocity [B, tokens, C_a]) in float32. `lora`: the rows' adapters,
        given (as a keyword) when some row has any, their hooks attached already (`BatchedLora.rows`); a backend
        that computes part of the batch on a subset of its rows narrows them (`LoraRows.select`)."""


class EagerBackend(DiTBackend):
    """The diffusers module as is (any device)."""

    name = "eager"
    runs_block_hooks = True
    runs_lora = True

    @torch.inference_mode()
    def forward(self, inputs: DiTInputs, lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # Every row computes here: the hooks `lora` attached apply as they are.
        dtype = self.transformer.dtype
        t = inputs.timestep
        # As the LTX-2 pipelines call it: sigma = timestep, use_cross_timestep=True, and for
        # image-to-video a per-token video timestep with the audio on the plain one.
        video, audio = self._call(
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

    def _call(self, **kwargs: Any):
        return self.transformer(**kwargs)


def _compiled(transformer: torch.nn.Module, _config: Any) -> DiTBackend:
    from engines.backends.compiled import CompiledBackend

    return CompiledBackend(transformer)


def _fp8(transformer: torch.nn.Module, _config: Any) -> DiTBackend:
    from engines.backends.fp8 import FP8Backend

    return FP8Backend(transformer)


def _int8(transformer: torch.nn.Module, _config: Any) -> DiTBackend:
    from engines.backends.int8 import Int8Backend

    return Int8Backend(transformer)


def _tensorrt(transformer: torch.nn.Module, config: Any) -> DiTBackend:
    from engines.backends.tensorrt import TensorRTBackend, TensorRTSettings

    if config is None:
        raise BackendUnavailable("TensorRT needs a model config (engine cache directory and shape profiles)")
    return TensorRTBackend(transformer, TensorRTSettings.from_config(config))


_BACKENDS: dict[str, Callable[[torch.nn.Module, Any], DiTBackend]] = {
    "eager": lambda transformer, _config: EagerBackend(transformer),
    "compile": _compiled,
    "tensorrt": _tensorrt,
    "fp8": _fp8,
    "int8": _int8,
}


def fallback_chain(name: str, device: str) -> list[str]:
    """Backends to try, best first: TensorRT, then torch.compile, then eager. The low-precision ones
    fall back to full precision: fp8 (GPU) to torch.compile and eager, int8 (CPU) to eager; `auto`
    never picks them, as they trade precision for speed."""
    if name == "auto":
        return ["tensorrt", "compile", "eager"] if device.startswith("cuda") else ["eager"]
    order = ["tensorrt", "compile", "eager"]
    low_precision = {"fp8": ["fp8", "compile", "eager"], "int8": ["int8", "eager"]}
    if name in low_precision:
        return low_precision[name]
    if name not in order:
        raise ValueError(f"unknown DiT backend {name!r}; known: auto, {', '.join(low_precision)}, {', '.join(order)}")
    return order[order.index(name):]


def create_backend(name: str, transformer: torch.nn.Module, config: Any = None,
                   registry: dict[str, Callable[[torch.nn.Module, Any], DiTBackend]] | None = None) -> DiTBackend:
    """The best available backend starting at `name`; each step down logs one line saying why."""
    registry = registry or _BACKENDS
    chain = fallback_chain(name, str(transformer.device))
    for i, candidate in enumerate(chain):
        try:
            return registry[candidate](transformer, config)
        except BackendUnavailable as e:
            if i + 1 == len(chain):
                raise
            log.warning("DiT backend %s unavailable (%s); falling back to %s", candidate, e, chain[i + 1])
    raise AssertionError("unreachable")
