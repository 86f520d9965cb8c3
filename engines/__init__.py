"""Kino's model engines: the LTX-2 stages as plain Python classes (no Ray, no gRPC, no jobs).

    from engines import preset, GenerationRequest, StagedPipeline
    StagedPipeline(preset("tiny")).generate(GenerationRequest(prompt="a cat"), "cat.mp4")

Names are imported lazily so that light users (`engines.params`) do not pay for torch.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ModelConfig": "engines.config",
    "preset": "engines.config",
    "checkpoint": "engines.config",
    "GenerationParams": "engines.params",
    "GenerationRequest": "engines.params",
    "InvalidParameter": "engines.errors",
    "ConfigError": "engines.errors",
    "TextEncoder": "engines.text_encoder",
    "Denoiser": "engines.denoiser",
    "Decoder": "engines.decoder",
    "StagedPipeline": "engines.staged_pipeline",
    "load_components": "engines.model_loader",
    "save_checkpoint": "engines.model_loader",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'engines' has no attribute {name!r}")
