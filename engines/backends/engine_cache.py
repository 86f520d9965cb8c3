"""Built TensorRT engines on disk, keyed by everything that makes one engine unusable for another.

A key covers the GPU model and compute capability, the TensorRT version, a hash of the weights,
the precision and the optimisation profile (shape ranges). Files are written atomically, so an
interrupted build is redone on the next start and never loaded half-written.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch


@dataclass(frozen=True)
class Profile:
    """Shape ranges (min, opt, max) one engine profile serves: one per latent shape bucket."""

    name: str
    rows: tuple[int, int, int]
    video_tokens: tuple[int, int, int]
    audio_tokens: tuple[int, int, int]


@dataclass(frozen=True)
class EngineKey:
    gpu: str  # e.g. "NVIDIA H100 80GB HBM3 sm_90"
    tensorrt: str
    weights: str  # sha256 of the transformer's weights
    precision: str  # bf16 | fp16 | fp8
    profiles: tuple[Profile, ...]

    @property
    def digest(self) -> str:
        blob = json.dumps(asdict(self), sort_keys=True).encode()
        return hashlib.sha256(blob).hexdigest()[:24]


def weights_hash(module: torch.nn.Module) -> str:
    """sha256 over parameter names, shapes, dtypes and bytes (stable across processes)."""
    h = hashlib.sha256()
    for name, tensor in sorted(module.state_dict().items()):
        t = tensor.detach().contiguous().cpu()
        h.update(f"{name}:{tuple(t.shape)}:{t.dtype}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes() if t.numel() else b"")
    return h.hexdigest()


class EngineCache:
    def __init__(self, directory: str | Path) -> None:
        self.directory = Path(directory)

    def path(self, key: EngineKey) -> Path:
        return self.directory / f"dit-{key.digest}.plan"

    def get(self, key: EngineKey) -> bytes | None:
        path = self.path(key)
        return path.read_bytes() if path.is_file() else None

    def put(self, key: EngineKey, engine: bytes) -> Path:
        self.directory.mkdir(parents=True, exist_ok=True)
        path = self.path(key)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_bytes(engine)
        tmp.replace(path)
        path.with_suffix(".json").write_text(json.dumps(asdict(key), indent=1, sort_keys=True))
        return path

    def get_or_build(self, key: EngineKey, build: Callable[[], bytes]) -> tuple[bytes, bool]:
        """(engine, built): a cached engine, or a freshly built one stored for the next start."""
        cached = self.get(key)
        if cached is not None:
            return cached, False
        engine = build()
        self.put(key, engine)
        return engine, True
