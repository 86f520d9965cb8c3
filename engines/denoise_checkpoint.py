"""A request's denoise state as bytes, so a request resumed elsewhere goes on exactly where it stopped.

Saved (safetensors, with the rest as its metadata): the video and audio latents, the step index, and the step
cache's state (its residuals and accumulation), so a resumed request skips exactly the blocks it would have.
Not saved, because `Denoiser.prepare` derives them from the request again, the same way: the schedule (sigmas,
timesteps), the text contexts, the conditioning mask, the RoPE coordinates. No step after `prepare` draws noise
(the sampler is Euler's, deterministic), so there is no RNG state to keep.

A checkpoint names the model (a fingerprint of its weights) and the request (a digest of its params); one that
does not parse, or names another model or request or shape, raises `CheckpointMismatch`: the caller starts
the request over and never fails because of a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
from typing import TYPE_CHECKING

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

from engines.params import GenerationParams, params_to_dict

if TYPE_CHECKING:
    from engines.denoiser import DenoiseState

FORMAT = "kino-denoise-checkpoint/1"


class CheckpointMismatch(Exception):
    """The bytes are not a checkpoint of this request on this model."""


def weights_fingerprint(module: torch.nn.Module) -> str:
    """A short digest of a model's weights: each parameter's name, shape, dtype and first values (reading all of a
    large model's bytes would cost seconds at every start; two checkpoints of one architecture differ early)."""
    digest = hashlib.sha256()
    for name, value in module.state_dict().items():
        _digest_entry(digest, name, value)
    return digest.hexdigest()[:32]


def _digest_entry(digest: hashlib._Hash, name: str, value: object) -> None:
    """A state-dict entry: a tensor (a quantized one by its dequantized values), or what a quantized module keeps
    beside its tensors (the int8 backend's packed parameters: a dtype, a tuple of weight and bias)."""
    if isinstance(value, torch.Tensor):
        values = value.dequantize() if value.is_quantized else value
        digest.update(f"{name}:{tuple(value.shape)}:{value.dtype}".encode())
        digest.update(values.detach().reshape(-1)[:64].float().cpu().numpy().tobytes())
    elif isinstance(value, tuple | list):
        for i, item in enumerate(value):
            _digest_entry(digest, f"{name}.{i}", item)
    else:
        digest.update(f"{name}:{value!r}".encode())


def request_digest(params: GenerationParams) -> str:
    return hashlib.sha256(json.dumps(params_to_dict(params), sort_keys=True).encode()).hexdigest()[:32]


def encode(state: DenoiseState, model: str) -> bytes:
    """`state` at its current step boundary, for the model whose fingerprint is `model`."""
    tensors = {"latents": state.latents, "audio_latents": state.audio_latents}
    meta = {"format": FORMAT, "model": model, "request": request_digest(state.params),
            "step_index": str(state.step_index), "num_steps": str(state.num_steps),
            "video_tokens": str(state.shape.video_tokens), "audio_frames": str(state.shape.audio_frames)}
    cache = state.cache
    if cache is not None:
        meta |= {"cache_accumulated": repr(cache.accumulated), "cache_consecutive_skips": str(cache.consecutive_skips)}
        for name, pair in (("head", cache.head_residual), ("tail", cache.tail_residual)):
            if pair is not None:
                tensors[f"cache_{name}_video"], tensors[f"cache_{name}_audio"] = pair
    return save_tensors({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=meta)


def _metadata(data: bytes) -> dict[str, str]:
    """The safetensors header's metadata (the format: an 8-byte little-endian length, then a JSON header)."""
    size = int.from_bytes(data[:8], "little")
    if len(data) < 8 or size <= 0 or size > len(data) - 8:
        raise CheckpointMismatch("not a safetensors file")
    return json.loads(data[8:8 + size]).get("__metadata__") or {}


def restore(state: DenoiseState, data: bytes, model: str) -> int:
    """Put the checkpoint `data` into `state` (prepared for the same request); the step index it resumes at."""
    try:
        meta = _metadata(data)
        tensors = load_tensors(data)
    except CheckpointMismatch:
        raise
    except Exception as e:  # noqa: BLE001 - whatever a corrupt file raises
        raise CheckpointMismatch(f"unreadable: {type(e).__name__}: {e}") from None
    expected = {"format": FORMAT, "model": model, "request": request_digest(state.params),
                "num_steps": str(state.num_steps), "video_tokens": str(state.shape.video_tokens),
                "audio_frames": str(state.shape.audio_frames)}
    wrong = {k: meta.get(k) for k, v in expected.items() if meta.get(k) != v}
    if wrong:
        raise CheckpointMismatch(f"written for another model, request or shape: {wrong}")
    latents, audio = tensors.get("latents"), tensors.get("audio_latents")
    if latents is None or audio is None or latents.shape != state.latents.shape \
            or audio.shape != state.audio_latents.shape:
        raise CheckpointMismatch("its latents do not fit the request")
    step = int(meta["step_index"])
    if not state.start_index <= step <= state.num_steps:
        raise CheckpointMismatch(f"step {step} is outside the request's schedule")
    device = state.latents.device
    state.latents = latents.to(device=device, dtype=state.latents.dtype)
    state.audio_latents = audio.to(device=device, dtype=state.audio_latents.dtype)
    state.step_index = step
    cache = state.cache
    if cache is not None and "cache_accumulated" in meta:  # else the cache starts cold: still a valid run
        cache.accumulated = float(meta["cache_accumulated"])
        cache.consecutive_skips = int(meta["cache_consecutive_skips"])
        for name in ("head", "tail"):
            if f"cache_{name}_video" in tensors:
                pair = (tensors[f"cache_{name}_video"].to(device), tensors[f"cache_{name}_audio"].to(device))
                setattr(cache, f"{name}_residual", pair)
    return step
