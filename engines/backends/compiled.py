"""torch.compile over the diffusers transformer (the GPU default when TensorRT is absent)."""

from __future__ import annotations

import shutil

import torch

from engines.dit_backend import BackendUnavailable, DiTInputs, EagerBackend
from engines.lora import LoraRows


class CompiledBackend(EagerBackend):
    """The eager call, through `torch.compile` (dynamic shapes: batch and token counts vary)."""

    name = "compile"
    runs_block_hooks = False  # one graph over the whole model: per-request hooks would break or specialise it
    runs_lora = False

    def __init__(self, transformer: torch.nn.Module, mode: str | None = None) -> None:
        if transformer.device.type == "cpu" and not (shutil.which("c++") or shutil.which("g++")):
            raise BackendUnavailable("torch.compile on CPU needs a C++ compiler, and none is on PATH")
        super().__init__(transformer)
        self._compiled = torch.compile(transformer, dynamic=True, mode=mode)

    def _call(self, **kwargs):
        return self._compiled(**kwargs)

    def forward(self, inputs: DiTInputs, lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        return super().forward(inputs)
