"""Where LoRA adapters live by name (``model.lora.dir``): the lookup alone, without torch.

Kept apart from engines/lora/ (which imports torch and diffusers) because a request's adapter names are
checked where it arrives (`GenerationRequest.validated`), and the front door loads no model libraries
(tests/test_layers.py). Reading and applying an adapter stays in engines/lora/; what the catalog says of
one (`describe`) comes from the safetensors header alone (tensor names and shapes), unchecked against the DiT.
"""

from __future__ import annotations

import json
import re
import struct
from dataclasses import dataclass
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


@dataclass(frozen=True)
class AdapterSummary:
    """What an adapter offers, as listed to clients: its rank (the largest, when modules differ) and how many
    Linear layers it changes. `error` says why a file could not be summarised (it is listed all the same)."""

    name: str
    rank: int
    modules: int
    error: str | None = None


_DOWN = (".lora_A.weight", ".lora_down.weight", ".lora.down.weight")  # peft's and the older names diffusers reads


def describe(directory: Path, name: str) -> AdapterSummary:
    """`name`'s summary from its file's safetensors header (8 bytes of length, then JSON): no tensor is read."""
    path = adapter_file(directory, name)
    if path is None:
        return AdapterSummary(name, 0, 0, "no such adapter")
    try:
        with path.open("rb") as f:
            (size,) = struct.unpack("<Q", f.read(8))
            if size > 100 * 2**20:  # safetensors' own bound on a header
                raise ValueError(f"a header of {size} bytes")
            header = json.loads(f.read(size))
        ranks = [int(entry["shape"][0]) for key, entry in header.items()
                 if key != "__metadata__" and key.endswith(_DOWN)]
    except (OSError, ValueError, struct.error, KeyError, IndexError, TypeError) as e:
        return AdapterSummary(name, 0, 0, f"not a readable safetensors file: {e}")
    return AdapterSummary(name, max(ranks, default=0), len(ranks))


def catalog(directory: Path | None) -> list[AdapterSummary]:
    """Every adapter `directory` holds, by name."""
    return [describe(directory, n) for n in available_adapters(directory)] if directory is not None else []
