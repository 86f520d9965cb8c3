"""LoRA adapter files: found by name, read the way diffusers' LTX-2 loader reads them, checked against the DiT.

The file format is what ``LTX2Pipeline.load_lora_weights`` (diffusers 0.42, `LTX2LoraLoaderMixin`) takes, read by
its own `lora_state_dict` (so its conversions apply: the ``diffusion_model.`` layout of LTX-2's trainer and
ComfyUI becomes ``transformer.``), safetensors only (never a pickle):

- keys ``transformer.<module path>.lora_A.weight`` ([rank, in_features]) and ``...lora_B.weight``
  ([out_features, rank]), one pair per targeted Linear; older ``lora.down``/``lora.up`` names are renamed by
  diffusers' `convert_unet_state_dict_to_peft`, as its `load_lora_adapter` does;
- rank and alpha from the file's ``lora_adapter_metadata`` header (peft's `LoraConfig` as JSON, each key
  prefixed ``transformer.``: ``r``, ``lora_alpha``, ``rank_pattern``, ``alpha_pattern``, ``use_rslora``), which
  ``save_lora_weights(..., transformer_lora_adapter_metadata=...)`` writes. Without it diffusers takes alpha =
  rank: the update is ``lora_B @ lora_A`` unscaled.

What diffusers would not load the same way is refused, not guessed at: ``.alpha`` tensors (its LTX-2 loader
rejects every key without "lora"), DoRA magnitudes and LoRA biases, the text connectors' part (the Denoiser
runs the transformer only). Every refusal is an `AdapterError` naming the file and the key.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from engines.adapter_files import WEIGHT_NAME, adapter_file, available_adapters
from engines.errors import AdapterError

__all__ = ["WEIGHT_NAME", "LoraAdapter", "LoraFactors", "adapter_file", "available_adapters", "read_adapter"]

PREFIX = "transformer."
_LORA_KEY = re.compile(r"^(?P<module>.+)\.lora_(?P<part>[AB])\.weight$")


@dataclass(frozen=True, eq=False)
class LoraFactors:
    """One targeted Linear's low-rank update: ``delta W = scaling * up @ down``, peft's ``lora_B @ lora_A``."""

    down: torch.Tensor  # lora_A: [rank, in_features]
    up: torch.Tensor  # lora_B: [out_features, rank]
    scaling: float  # alpha / rank (alpha / sqrt(rank) with rsLoRA), as peft's LoRA layer computes it

    @property
    def rank(self) -> int:
        return int(self.down.shape[0])


@dataclass(frozen=True, eq=False)
class LoraAdapter:
    """A loaded adapter: its factors per transformer module path, on the transformer's device and dtype.
    Compared by identity: two loads of one file are two adapters."""

    name: str
    path: Path
    layers: Mapping[str, LoraFactors]

    @property
    def nbytes(self) -> int:
        return sum(f.down.nbytes + f.up.nbytes for f in self.layers.values())

    def __repr__(self) -> str:
        return f"LoraAdapter({self.name!r}, {len(self.layers)} layers, {self.path})"


def read_adapter(path: Path, name: str, transformer: torch.nn.Module) -> LoraAdapter:
    """Read `path` and check every pair against `transformer`'s Linear layers; `AdapterError` if anything does
    not fit."""
    state_dict, metadata = _read(path)
    meta = {k.removeprefix(PREFIX): v for k, v in (metadata or {}).items() if k.startswith(PREFIX)}
    config = _RankConfig.from_metadata(path, meta)
    pairs = _pairs(path, state_dict)
    modules = dict(transformer.named_modules())
    dtype, device = _dtype_device(transformer)
    layers: dict[str, LoraFactors] = {}
    for module_name, (down, up) in sorted(pairs.items()):
        key = f"{PREFIX}{module_name}.lora_A.weight"
        target = modules.get(module_name)
        if target is None:
            raise AdapterError(path, key, "matches no module of the transformer")
        if not isinstance(target, torch.nn.Linear):
            kind = f"{type(target).__module__}.{type(target).__qualname__}"
            raise AdapterError(path, key, f"targets a {kind}; only torch.nn.Linear layers take LoRA here")
        _check_shapes(path, module_name, down, up, target)
        rank = int(down.shape[0])
        layers[module_name] = LoraFactors(
            down=down.to(device=device, dtype=dtype).contiguous(), up=up.to(device=device, dtype=dtype).contiguous(),
            scaling=config.scaling(module_name, rank, key))
    return LoraAdapter(name=name, path=path, layers=layers)


def _read(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, Any] | None]:
    """diffusers' own reading of an LTX-2 LoRA file (conversions included), safetensors only and offline."""
    from diffusers.loaders.lora_pipeline import LTX2LoraLoaderMixin
    from safetensors import SafetensorError

    try:
        state_dict, metadata = LTX2LoraLoaderMixin.lora_state_dict(
            str(path), use_safetensors=True, local_files_only=True, return_lora_metadata=True)
    except (OSError, ValueError, SafetensorError) as e:
        raise AdapterError(path, None, f"cannot be read as a safetensors LoRA file: {e}") from e
    if not state_dict:
        raise AdapterError(path, None, "holds no LoRA weights")
    return state_dict, metadata


def _pairs(path: Path, state_dict: Mapping[str, torch.Tensor]) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """module path -> (lora_A, lora_B), every key accounted for."""
    from diffusers.utils import convert_unet_state_dict_to_peft

    for key in state_dict:
        if "lora" not in key:  # what LTX2LoraLoaderMixin.load_lora_weights refuses
            raise AdapterError(path, key, "is not a LoRA weight (an .alpha tensor? diffusers' LTX-2 loader takes "
                                          "alpha from the file's lora_adapter_metadata header, not from keys)")
        if key.startswith("connectors."):
            raise AdapterError(path, key, "targets the text connectors; adapters apply to the transformer only")
        if not key.startswith(PREFIX):
            raise AdapterError(path, key, f"is not a transformer weight (expected {PREFIX}<module>.lora_A.weight)")
    inner = {k.removeprefix(PREFIX): v for k, v in state_dict.items()}
    if "lora_A" not in next(iter(inner)):  # as diffusers' load_lora_adapter decides, on the first key
        inner = convert_unet_state_dict_to_peft(inner)
    found: dict[str, dict[str, torch.Tensor]] = {}
    for key, tensor in inner.items():
        m = _LORA_KEY.match(key)
        if m is None:
            raise AdapterError(path, PREFIX + key, "unsupported LoRA tensor: only lora_A.weight and lora_B.weight "
                                                   "pairs are applied (no DoRA magnitudes, no LoRA biases)")
        found.setdefault(m["module"], {})[m["part"]] = tensor
    pairs = {}
    for module_name, parts in sorted(found.items()):
        if set(parts) != {"A", "B"}:
            [have] = parts
            missing = "B" if have == "A" else "A"
            raise AdapterError(path, f"{PREFIX}{module_name}.lora_{have}.weight",
                               f"has no lora_{missing}.weight beside it")
        pairs[module_name] = (parts["A"], parts["B"])
    return pairs


def _check_shapes(path: Path, module_name: str, down: torch.Tensor, up: torch.Tensor,
                  target: torch.nn.Linear) -> None:
    """lora_A [rank, in_features] and lora_B [out_features, rank] of one rank, for this Linear's features."""
    key = f"{PREFIX}{module_name}.lora_A.weight"
    if down.ndim != 2 or up.ndim != 2:
        raise AdapterError(path, key, f"lora_A {list(down.shape)} and lora_B {list(up.shape)} must be matrices")
    n_in, n_out = target.in_features, target.out_features
    if down.shape[1] == n_in and up.shape[0] == n_out and down.shape[0] == up.shape[1] and down.shape[0] > 0:
        return
    if down.shape[0] == n_in and up.shape[1] == n_out and down.shape[1] == up.shape[0]:
        raise AdapterError(path, key, f"wrong rank layout: lora_A is {list(down.shape)} and lora_B "
                                      f"{list(up.shape)}, transposed; expected lora_A [rank, {n_in}] and "
                                      f"lora_B [{n_out}, rank]")
    if down.shape[0] != up.shape[1] or down.shape[0] == 0:
        raise AdapterError(path, key, f"wrong rank layout: lora_A {list(down.shape)} has rank {down.shape[0]}, "
                                      f"lora_B {list(up.shape)} has rank {up.shape[1]}; expected lora_A "
                                      f"[rank, {n_in}] and lora_B [{n_out}, rank] of one rank")
    raise AdapterError(path, key, f"made for another base model: the pair maps {down.shape[1]} -> {up.shape[0]} "
                                  f"features, this transformer's {module_name} maps {n_in} -> {n_out}")


@dataclass(frozen=True)
class _RankConfig:
    """Rank and alpha per module, from peft's `LoraConfig` fields in the file's metadata (None: alpha = rank)."""

    path: Path
    meta: Mapping[str, Any] | None

    @classmethod
    def from_metadata(cls, path: Path, meta: Mapping[str, Any]) -> _RankConfig:
        if not meta:
            return cls(path, None)
        for flag in ("use_dora", "lora_bias"):
            if meta.get(flag):
                raise AdapterError(path, "lora_adapter_metadata", f"{flag} is set; only plain LoRA is applied")
        return cls(path, meta)

    def scaling(self, module_name: str, rank: int, key: str) -> float:
        if self.meta is None:
            return 1.0
        m = self.meta
        config_rank = _pattern_value(m.get("rank_pattern") or {}, module_name, m.get("r", 8))  # peft's defaults
        if int(config_rank) != rank:
            raise AdapterError(self.path, key, f"the file's lora_adapter_metadata gives rank {config_rank}, the "
                                               f"weights have rank {rank}")
        alpha = float(_pattern_value(m.get("alpha_pattern") or {}, module_name, m.get("lora_alpha", 8)))
        return alpha / (math.sqrt(rank) if m.get("use_rslora") else rank)


def _pattern_value(patterns: Mapping[str, Any], module_name: str, default: Any) -> Any:
    """peft's `rank_pattern`/`alpha_pattern` rule (peft.utils.other.get_pattern_key): the first pattern that
    matches the end of the module path at a dot boundary."""
    for pattern, value in patterns.items():
        if re.match(rf"(.*\.)?({pattern})$", module_name):
            return value
    return default


def _dtype_device(module: torch.nn.Module) -> tuple[torch.dtype, torch.device]:
    p = next(module.parameters())
    return p.dtype, p.device
