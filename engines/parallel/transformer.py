"""One LTX-2 DiT forward across the ranks of an engine, by wrapping the canonical diffusers module.

`parallelize(transformer, groups)` puts a forward-pre-hook and a forward hook on
`LTX2VideoTransformer3DModel` and sets diffusers' own parallel config on two of its attention
processors. The model's, the blocks' and the processors' forward code run unchanged on every rank;
every rank calls the module with the same full inputs and gets the same full outputs.

CFG (``cfg`` > 1): the batch rows are split over the CFG groups, strided: CFG group c takes rows
c, c+cfg, ... Kino's rows are (uncond, cond) per CFG request, so with cfg=2 a batch of CFG requests
puts every unconditional row on group 0 and every conditional row on group 1. No op of the model
mixes rows, so any split is exact; the strided one also keeps the groups within one row of each
other when single-row (guidance-free) requests share the batch. A group short of a row computes a
copy of the batch's last row and drops it (so every group runs the same shapes): a lone
guidance-free request (one row) runs at single-group speed on cfg=2. The outputs are all-gathered
over the row-gather group and put back in row order.

Ulysses (``ulysses`` > 1): inside a CFG group, the video tokens of every row are split into
contiguous chunks, one per rank: `hidden_states` (dim 1), `video_coords` (dim 2; built here when
absent, so every RoPE, ``rope`` and ``cross_attn_rope``, yields local cos/sin for any rope_type),
a per-token `timestep` [B, T] (dim 1) and `video_keyframes_mask` (dim 1). Audio, text and per-row
inputs stay whole (the audio stream is computed redundantly on each rank: it is small). Nothing
in the model pools or normalises over the sequence, so only two attentions need all tokens:

- ``attn1`` (video self-attention) and ``video_to_audio_attn`` (audio queries, video keys): their
  processor's `_parallel_config` is set, so diffusers' dispatcher runs `TemplatedUlyssesAttention`:
  an all-to-all turns [B, T/N, H, D] into [B, T, H/N, D] after the per-token RMSNorm and RoPE and
  before SDPA, and another turns it back. For v2a the replicated audio queries become N copies
  of themselves: exact.
- ``attn2``, ``audio_to_video_attn`` and the audio attentions see local queries against whole
  keys: nothing to do.

The video output is all-gathered on dim 1 after ``proj_out`` (C_out channels: the cheapest point).
N must divide the video and the audio head counts (v2a attends with the audio heads) and every
request's video token count (`ParallelLayout.check_video_tokens`; padding is not clean, see there).

LoRA adapters (engines/lora/): every rank attaches the batch's per-row adapters to its own
transformer's Linears (rank 0 from its Denoiser, a follower from the names in the FORWARD message).
A Linear is applied per token, so a Ulysses rank's shard of every row's tokens takes the rows'
adapters as they are; a CFG rank computes some rows only, so `ShardingHooks.narrow` selects the
adapters of exactly those rows (its padding row included).

Why not diffusers' ``enable_parallelism`` / ``_cp_plan`` (diffusers 0.42.1, reproduced on CPU/gloo):

1. On CPU it fails with ZeroDivisionError: ``rank % torch.accelerator.device_count()`` in
   modeling_utils (no accelerator: 0 devices; it needs a ``torch.device("cpu")`` fallback).
2. With ``rope_type="split"`` (LTX-2's) the RoPE returns cos/sin as (B, H, T, D/2), but the plan
   declares ``ContextParallelInput(split_dim=1, expected_dims=3, split_output=True)``: the split is
   skipped with only a logged warning, the sharded query meets full-length cos/sin and
   ``apply_split_rotary_emb`` fails at its broadcast ("size of tensor a (8) must match the size of
   tensor b (16) at non-singleton dimension 4"). split_dim=1 is the head dim there anyway; it
   should be split_dim=2, expected_dims=4 for split RoPE (or shard the coordinates instead).
3. ``cross_attn_rope`` (the video-side RoPE of a2v/v2a) is not in the plan: it stays full length
   and ``audio_to_video_attn`` fails even with interleaved RoPE.
4. A per-token ``timestep`` (B, T), as image-to-video passes it, is not in the plan: ``temb`` stays
   full length and the block's AdaLN fails ("160 vs 320 at dim 1").
5. The plan sets `_parallel_config` on every processor, including the masked text
   cross-attentions; the processor expands the text mask to all H heads, and
   `TemplatedUlyssesAttention` never slices it to the local H/N heads, so SDPA fails
   ((B, H/N, ., .) scores against a (B, H, 1, L) mask).

A shim (device count patched to 1, a plan depending on rope_type, `_parallel_config` reset on all
but two processors afterwards) makes it exact, but ``enable_parallelism`` is one-way, builds its
own mesh over the whole world and cannot be given a subgroup, which CFG x Ulysses needs.
"""

from __future__ import annotations

import inspect
from contextlib import AbstractContextManager, nullcontext
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist

from engines.errors import ConfigError
from engines.lora import LoraRows
from engines.parallel.layout import ParallelGroups

# Inputs of LTX2VideoTransformer3DModel.forward that carry the video-token dim, and where.
VIDEO_TOKEN_DIMS = {"hidden_states": 1, "video_coords": 2, "video_keyframes_mask": 1}
# Ulysses runs only what was verified exact; these change attention in ways the sharding does not cover.
_UNSHARDABLE = ("video_self_attention_mask", "spatio_temporal_guidance_blocks", "perturbation_mask")


@dataclass
class _Call:
    """What the pre-hook of one forward tells its post-hook."""

    batch: int
    rows_per_group: int
    tokens: int


class ShardingHooks:
    """The hooks and processor settings `parallelize` put on one transformer; `remove()` undoes them."""

    def __init__(self, transformer: torch.nn.Module, groups: ParallelGroups) -> None:
        if groups.rank is None:
            raise ValueError("this process is not a rank of the engine; only its ranks parallelize")
        self.transformer = transformer
        self.groups = groups
        self.layout = groups.layout
        self._signature = inspect.signature(type(transformer).forward)
        self._call: _Call | None = None
        self._ulysses_attentions: list[torch.nn.Module] = []
        self._ulysses_config = None
        if self.layout.ulysses > 1:
            self._ulysses_config = _ulysses_parallel_config(transformer, groups)
            self._ulysses_attentions = [attn for block in transformer.transformer_blocks
                                        for attn in (block.attn1, block.video_to_audio_attn)]
            self._set_processor_config(self._ulysses_config)
        self._handles = [transformer.register_forward_pre_hook(self._shard, with_kwargs=True),
                         transformer.register_forward_hook(self._gather)]

    def remove(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._set_processor_config(None)
        self._handles, self._ulysses_attentions = [], []

    def rows(self, batch: int) -> list[int]:
        """The batch rows this rank computes, in its order: CFG group c takes rows c, c+cfg, ..., and one short
        of a row repeats the batch's last (every group runs the same shapes). All of them when cfg is 1."""
        rows_per_group = -(-batch // self.layout.cfg)
        rows = list(range(self.groups.cfg_rank, batch, self.layout.cfg))
        return rows + [batch - 1] * (rows_per_group - len(rows))

    def narrow(self, lora: LoraRows | None, batch: int) -> AbstractContextManager[Any]:
        """Within it, the rows' adapters (`lora`, attached to this rank's transformer) are those of the rows this
        rank computes (`rows`); nothing to do without CFG-parallel (Ulysses shards tokens, not rows)."""
        if lora is None or self.layout.cfg == 1:
            return nullcontext()
        return lora.select(self.rows(batch))

    def _set_processor_config(self, config: Any) -> None:
        for attn in self._ulysses_attentions:
            if not hasattr(attn.processor, "_parallel_config"):
                raise TypeError(f"attention processor {type(attn.processor).__name__} has no _parallel_config: "
                                "Ulysses needs diffusers' dispatcher-based processors")
            attn.processor._parallel_config = config

    # -- hooks ---------------------------------------------------------------------------
    def _shard(self, module: torch.nn.Module, args: tuple, kwargs: dict) -> tuple[tuple, dict]:
        bound = self._signature.bind(module, *args, **kwargs)
        bound.apply_defaults()
        kw = {k: v for k, v in bound.arguments.items() if k != "self"}
        hidden = kw["hidden_states"]
        batch, tokens = hidden.shape[:2]
        rows_per_group = -(-batch // self.layout.cfg)
        if self.layout.cfg > 1:
            kw = self._shard_rows(kw, batch)
        if self.layout.ulysses > 1:
            # A processor swapped since (set_attn_processor, set_attention_backend) loses the setting.
            self._set_processor_config(self._ulysses_config)
            kw = self._shard_tokens(module, kw, tokens)
        self._call = _Call(batch=batch, rows_per_group=rows_per_group, tokens=tokens)
        return (), kw

    def _shard_rows(self, kw: dict[str, Any], batch: int) -> dict[str, Any]:
        rows = self.rows(batch)
        index = None
        for name, value in kw.items():
            if not torch.is_tensor(value):
                continue
            if value.ndim == 0 or value.shape[0] != batch:
                raise ValueError(f"CFG-parallel splits every tensor input by rows, but {name} has shape "
                                 f"{tuple(value.shape)} for a batch of {batch}")
            if index is None or index.device != value.device:
                index = torch.tensor(rows, device=value.device)
            kw[name] = value.index_select(0, index)
        return kw

    def _shard_tokens(self, module: torch.nn.Module, kw: dict[str, Any], tokens: int) -> dict[str, Any]:
        n, r = self.layout.ulysses, self.groups.ulysses_rank
        self.layout.check_video_tokens(tokens)
        for name in _UNSHARDABLE:
            if kw.get(name) is not None:
                raise ConfigError("model.parallel.ulysses", f"{name} is not supported under Ulysses (the canonical "
                                  "processors expand a video self-attention mask to all heads, which the "
                                  "head-sharded attention cannot take; STG is unverified)")
        hidden = kw["hidden_states"]
        if kw.get("video_coords") is None:  # the model would build full-length coordinates after the split
            kw["video_coords"] = module.rope.prepare_video_coords(
                hidden.shape[0], kw["num_frames"], kw["height"], kw["width"], hidden.device, fps=kw["fps"])
        for name, dim in VIDEO_TOKEN_DIMS.items():
            if kw.get(name) is not None:
                kw[name] = kw[name].chunk(n, dim=dim)[r]
        timestep = kw["timestep"]
        if timestep.ndim >= 2 and timestep.shape[1] == tokens:  # per token (image-to-video conditioning)
            kw["timestep"] = timestep.chunk(n, dim=1)[r]
        elif timestep.ndim >= 2 and timestep.shape[1] != 1:
            raise ValueError(f"timestep {tuple(timestep.shape)} is neither [B], [B, 1] nor per token [B, {tokens}]")
        return kw

    def _gather(self, module: torch.nn.Module, args: tuple, output: Any) -> Any:
        call, self._call = self._call, None
        assert call is not None, "the forward hook ran without its pre-hook"
        video, audio = _outputs(output)
        if self.layout.ulysses > 1:
            video = _all_gather(video, 1, self.groups.ulysses_group)
        if self.layout.cfg > 1:
            # Group c's i-th row is batch row c + i * cfg; padding rows are never picked.
            b = torch.arange(call.batch, device=video.device)
            order = (b % self.layout.cfg) * call.rows_per_group + b // self.layout.cfg
            video = _all_gather(video, 0, self.groups.cfg_group).index_select(0, order)
            audio = _all_gather(audio, 0, self.groups.cfg_group).index_select(0, order.to(audio.device))
        return _with_outputs(output, video, audio)


def parallelize(transformer: torch.nn.Module, groups: ParallelGroups) -> ShardingHooks:
    """Make every forward of the canonical `transformer` run split over the engine's ranks (each
    rank calls it with the same full inputs and gets the same full outputs)."""
    return ShardingHooks(transformer, groups)


def _ulysses_parallel_config(transformer: torch.nn.Module, groups: ParallelGroups):
    """diffusers' ParallelConfig selecting `TemplatedUlyssesAttention` over this rank's Ulysses group.

    `ContextParallelConfig.setup()` would build a (ring, ulysses) mesh and flatten it, which creates
    process groups collectively over the whole default group; we already own the Ulysses group,
    so its fields are filled from it instead: the template reads `_ulysses_mesh` and
    `ulysses_degree`, the cuDNN backend `_world_size` (ring_degree 1: no ring mesh is read)."""
    from diffusers.models._modeling_parallel import ContextParallelConfig, ParallelConfig
    from torch.distributed.device_mesh import DeviceMesh

    n, cfg = groups.layout.ulysses, transformer.config
    for what, heads in (("video", cfg.num_attention_heads), ("audio", cfg.audio_num_attention_heads)):
        if heads % n:
            raise ConfigError("model.parallel.ulysses", f"{n} does not divide the {heads} {what} attention heads "
                              "(Ulysses splits the heads over the ranks)")
    device = groups.device
    mesh = DeviceMesh.from_group(groups.ulysses_group, device.type, mesh_dim_names=("ulysses",))
    cp = ContextParallelConfig(ulysses_degree=n)
    cp._rank, cp._world_size, cp._device, cp._mesh = groups.ulysses_rank, n, device, mesh
    cp._ulysses_mesh, cp._ulysses_local_rank, cp._ring_local_rank = mesh, groups.ulysses_rank, 0
    config = ParallelConfig(context_parallel_config=cp)
    config._rank, config._world_size, config._device, config._mesh = groups.ulysses_rank, n, device, mesh
    return config


def _all_gather(x: torch.Tensor, dim: int, group: dist.ProcessGroup | None) -> torch.Tensor:
    parts = [torch.empty_like(x) for _ in range(dist.get_world_size(group))]
    dist.all_gather(parts, x.contiguous(), group=group)
    return torch.cat(parts, dim=dim)


def _outputs(output: Any) -> tuple[torch.Tensor, torch.Tensor]:
    """(video, audio) of the model's output: a tuple (return_dict=False) or AudioVisualModelOutput."""
    if isinstance(output, tuple):
        return output[0], output[1]
    return output.sample, output.audio_sample


def _with_outputs(output: Any, video: torch.Tensor, audio: torch.Tensor) -> Any:
    if isinstance(output, tuple):
        return (video, audio, *output[2:])
    output.sample, output.audio_sample = video, audio  # BaseOutput keeps its mapping in step
    return output
