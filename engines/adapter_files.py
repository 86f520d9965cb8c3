"""Where LoRA adapters live by name (``model.lora.dir``): the lookup alone, without torch.

Kept apart from engines/lora/ (which imports torch and diffusers) because a request's adapter names are
checked where it arrives (`GenerationRequest.validated`), and the front door loads no model libraries
(tests/test_layers.py). Reading and applying an adapter stays in engines/lora/.
"""

from __future__ import annotations

import re
from pathlib import Path

WEIGHT_NAME = "pytorch_lora_weights.safetensors"  # diffusers' LORA_WEIGHT_NAME_SAFE: a directory adapter's file
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")  # a file name, never a path (names come from requests)


def adapter_file(directory: Path, name: str) -> Path | None:
    """The file of adapter `name` under `directory`: ``<name>.safetensors``, else ``<name>/`` + `WEIGHT_NAME`;
    None when there is none (or `name` is not a plain file name)."""
    if not isinstance(name, str) or not _NAME.match(name) or name.endswith(".safetensors"):
        return None
    for path in (directory / f"{name}.safetensors", directory / name / WEIGHT_NAME):
        if path.is_file():
            return path
    return None


def available_adapters(directory: Path | None) -> list[str]:
    """The adapter names `directory` holds, sorted."""
    if directory is None or not directory.is_dir():
        return []
    names = {p.stem if p.is_file() else p.name for p in directory.iterdir()}
    return sorted(n for n in names if adapter_file(directory, n) is not None)
