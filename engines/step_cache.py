"""Skip the transformer work a request would repeat: per-request first-block caching.

Why it pays: between neighbouring denoising steps the residual that the DiT's blocks after the
first add to their input changes little over long stretches of the schedule. The first block is a
cheap probe of that change (the FBCache/TeaCache family): every step it runs for every row, and a
request whose first-block residual has moved less than its threshold since its last full compute
(the relative L1 changes, summed step by step) reuses ITS OWN cached residual of blocks 1..N-1
instead of running them. On real LTX-2 (48 blocks) a skipped request-step costs about 1/48 of one.

Why not diffusers' own `FirstBlockCacheConfig`: it keeps one cache per model (per CFG branch), and
under step-level batching one forward serves the rows of many requests, each at its own step. Here:

- the state is per request (`StepCacheState`, carried by the request's `DenoiseState`), never in
  the model, so a request's result does not depend on its batch-mates;
- the rows of one request (two with classifier-free guidance) decide together;
- blocks 1..N-1 run only on the rows of the requests that compute: every per-row block argument is
  cut to those rows by the rule `BLOCK_ARGUMENTS` gives it, and an argument with no rule is an
  `UnknownBlockArgument` error (a diffusers upgrade fails closed instead of being sliced by guess);
- when no row skips, every block runs on the whole batch exactly as without caching (bit-exact);
- with LoRA adapters (engines/lora/), the sub-batch's blocks add the adapters of exactly its rows
  (`LoraRows.select`), each computing row its own: a request's cached result does not depend on its
  batch-mates' adapters either. Block 0's residual, the skip decision's probe, includes the request's
  adapter delta, as its cached tail residual does.

Nothing of the model's forward is copied. diffusers' `HookRegistry` wraps each block's forward: a
head hook on block 0 and a tail hook on every later block. The model's own loop, embeddings and
output head drive the forward; outside a cached forward (`FirstBlockCache.forward`) every hook
calls its block unchanged. Only backends that call the diffusers module eagerly run the hooks
(`DiTBackend.runs_block_hooks`); the Denoiser turns caching off for the others.
"""

from __future__ import annotations

import contextlib
import inspect
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import diffusers
import torch
from diffusers.hooks import HookRegistry, ModelHook

from engines.config import StepCacheConfig, StepCacheMode
from engines.lora import LoraRows

HEAD_HOOK = "kino_step_cache_head"
TAIL_HOOK = "kino_step_cache_tail"

Pair = tuple[torch.Tensor, torch.Tensor]  # (video, audio)


class UnknownBlockArgument(TypeError):
    """The transformer block takes an argument `BLOCK_ARGUMENTS` has no slicing rule for."""


@dataclass(frozen=True)
class CachePolicy:
    """What caching allows one request: a `StepCacheConfig` mode (balanced, fast) resolved."""

    threshold: float  # skip while the summed relative change of block 0's residual stays below this
    first_steps: int  # the request's first steps always compute (the first must: nothing is cached yet)
    last_steps: int  # its last steps always compute (they set the fine detail)
    max_consecutive_skips: int  # bounds the drift of a reused residual

    @classmethod
    def for_mode(cls, config: StepCacheConfig, mode: StepCacheMode) -> CachePolicy | None:
        """None for ``off``."""
        thresholds = {"balanced": config.balanced_threshold, "fast": config.fast_threshold}
        if mode == "off":
            return None
        if mode not in thresholds:
            raise ValueError(f"unknown step cache mode {mode!r}; known: off, {', '.join(thresholds)}")
        return cls(threshold=thresholds[mode], first_steps=config.first_steps, last_steps=config.last_steps,
                   max_consecutive_skips=config.max_consecutive_skips)

    def allows_skip(self, steps_done: int, steps_total: int) -> bool:
        """Whether the request's step `steps_done` (of `steps_total`) may reuse its cache."""
        return self.first_steps <= steps_done < steps_total - self.last_steps


@dataclass
class StepCacheState:
    """One request's cache. Tensors hold that request's rows only. Dropping it is always safe: with
    nothing cached the next step computes."""

    policy: CachePolicy
    head_residual: Pair | None = None  # block 0's output - input at the previous step
    tail_residual: Pair | None = None  # last block's output - block 0's output at the last full compute
    accumulated: float = 0.0  # summed relative change of the head residual since the last full compute
    consecutive_skips: int = 0

    def restart(self) -> None:
        """The request runs every block this step: the accumulation starts again from here."""
        self.accumulated = 0.0
        self.consecutive_skips = 0

    def release(self) -> None:
        """Free the cached tensors (the request has finished)."""
        self.head_residual = self.tail_residual = None

    @property
    def nbytes(self) -> int:
        pairs = [p for p in (self.head_residual, self.tail_residual) if p is not None]
        return sum(t.numel() * t.element_size() for p in pairs for t in p)


@dataclass(frozen=True)
class RowGroup:
    """The batch rows [start, start + rows) of one request in this forward."""

    start: int
    rows: int
    cache: StepCacheState | None  # None: the request runs uncached and always computes
    may_skip: bool = False  # the caller's schedule: False on the always-compute steps

    @property
    def span(self) -> slice:
        return slice(self.start, self.start + self.rows)


# How each argument of `LTX2VideoTransformerBlock.forward` (diffusers 0.42.1) is cut to a subset of rows:
#   "stream"  the running hidden states: replaced by those of the computing rows
#   "batch"   dim 0 is the batch: index_select (the block reshapes temb by the batch size, so it must match)
#   "bcast"   dim 0 is the batch or 1 (broadcast): select, or keep a 1
#   "shared"  not per row (python flags)
#   "all_perturbed"  STG's summary of the WHOLE batch: True stays True for a subset; else recomputed (None)
BLOCK_ARGUMENTS: dict[str, str] = {
    "hidden_states": "stream",
    "audio_hidden_states": "stream",
    "encoder_hidden_states": "batch",
    "audio_encoder_hidden_states": "batch",
    "temb": "batch",  # [B, 1 or video tokens (image-to-video's per-token timestep), k * D]
    "temb_audio": "batch",
    "temb_ca_scale_shift": "batch",
    "temb_ca_audio_scale_shift": "batch",
    "temb_ca_gate": "batch",
    "temb_ca_audio_gate": "batch",
    "temb_prompt": "batch",  # None unless the model has prompt AdaLN (LTX-2.3)
    "temb_prompt_audio": "batch",
    "video_rotary_emb": "bcast",  # (cos, sin) [B, H, T, d/2] (split RoPE) or [B|1, T, D] (interleaved)
    "audio_rotary_emb": "bcast",
    "ca_video_rotary_emb": "bcast",
    "ca_audio_rotary_emb": "bcast",
    "encoder_attention_mask": "bcast",  # additive bias [B, 1, text tokens]
    "audio_encoder_attention_mask": "bcast",
    "self_attention_mask": "bcast",
    "audio_self_attention_mask": "bcast",
    "a2v_cross_attention_mask": "bcast",
    "v2a_cross_attention_mask": "bcast",
    "use_a2v_cross_attention": "shared",
    "use_v2a_cross_attention": "shared",
    "perturbation_mask": "bcast",  # [B, 1, 1] (STG) or None
    "all_perturbed": "all_perturbed",
}


def check_block_arguments(transformer: torch.nn.Module) -> None:
    """Raise `UnknownBlockArgument` unless every argument of the transformer's blocks has a slicing rule."""
    for block in transformer.transformer_blocks:
        _raise_unknown(type(block).__name__, inspect.signature(block.forward).parameters)


def _raise_unknown(block: str, names: Any) -> None:
    unknown = [n for n in names if n not in BLOCK_ARGUMENTS]
    if unknown:
        raise UnknownBlockArgument(
            f"{block}.forward takes {', '.join(map(repr, unknown))}, which engines/step_cache.py BLOCK_ARGUMENTS "
            f"has no slicing rule for (diffusers {diffusers.__version__}); add a rule before caching on this "
            "diffusers version")


def slice_block_arguments(kwargs: dict[str, Any], rows: torch.Tensor, batch: int) -> dict[str, Any]:
    """The block arguments of the given batch rows (the "stream" ones unchanged: the caller replaces them)."""
    _raise_unknown("the transformer block", kwargs)
    out: dict[str, Any] = {}
    for name, value in kwargs.items():
        rule = BLOCK_ARGUMENTS[name]
        if rule in ("stream", "shared"):
            out[name] = value
        elif rule == "all_perturbed":
            out[name] = value if value is not None and bool(value) else None
        else:
            out[name] = _select(value, rows, batch, name, broadcast=rule == "bcast")
    return out


def _select(value: Any, rows: torch.Tensor, batch: int, name: str, broadcast: bool) -> Any:
    if value is None:
        return None
    if isinstance(value, (tuple, list)):
        return type(value)(_select(v, rows, batch, name, broadcast) for v in value)
    if not isinstance(value, torch.Tensor):
        raise TypeError(f"block argument {name}: cannot take rows of a {type(value).__name__}")
    if value.ndim == 0 or (broadcast and value.shape[0] == 1):
        return value
    if value.shape[0] != batch:
        raise ValueError(f"block argument {name}: dim 0 is {value.shape[0]}, the batch is {batch}")
    return value.index_select(0, rows.to(value.device))


class _CachedStep:
    """One cached forward: the row plan, the decisions taken after block 0, and the computing rows'
    running hidden states through blocks 1..N-1."""

    def __init__(self, plan: Sequence[RowGroup], lora: LoraRows | None = None) -> None:
        self.plan = list(plan)
        self.lora = lora  # the rows' LoRA adapters, narrowed to the computing rows around their blocks
        self.skipped = [False] * len(self.plan)
        self.head_out: Pair | None = None
        self.batch = 0
        self.computing: list[int] = []  # batch rows that run blocks 1..N-1, when some skip
        self.rows: torch.Tensor | None = None  # the same, as an index tensor
        self.sub: Pair | None = None  # their running (video, audio) hidden states
        self.finished = False

    @property
    def any_skipped(self) -> bool:
        return any(self.skipped)

    def decide(self, head_in: Pair, head_out: Pair) -> None:
        """Which requests skip, from the change of their block-0 residual (one host sync for all)."""
        (h_in, a_in), (h0, a0) = head_in, head_out
        self.head_out, self.batch = head_out, h0.shape[0]
        spans = sorted((g.start, g.start + g.rows) for g in self.plan)
        if spans[0][0] != 0 or spans[-1][1] != self.batch or any(a[1] != b[0] for a, b in pairwise(spans)):
            raise ValueError(f"the row plan {spans} does not tile the batch of {self.batch} rows")
        changes: list[torch.Tensor] = []  # per compared request: |Δ| and |prev| sums, video then audio
        compared: list[int] = []
        for i, g in enumerate(self.plan):
            if g.cache is None:
                continue
            residual = (h0[g.span] - h_in[g.span], a0[g.span] - a_in[g.span])
            previous = g.cache.head_residual
            g.cache.head_residual = residual
            if g.may_skip and g.cache.tail_residual is not None and previous is not None:
                changes.append(torch.stack([(residual[0] - previous[0]).float().abs().sum(),
                                            previous[0].float().abs().sum(),
                                            (residual[1] - previous[1]).float().abs().sum(),
                                            previous[1].float().abs().sum()]))
                compared.append(i)
        measured = torch.stack(changes).tolist() if changes else []
        for i, (dv, pv, da, pa) in zip(compared, measured, strict=True):
            cache = self.plan[i].cache
            # The CFG rows are pooled in each sum; the stream that moved more decides.
            accumulated = cache.accumulated + max(dv / max(pv, 1e-12), da / max(pa, 1e-12))
            if accumulated < cache.policy.threshold and cache.consecutive_skips < cache.policy.max_consecutive_skips:
                self.skipped[i] = True
                cache.accumulated = accumulated
                cache.consecutive_skips += 1
        for g, skipped in zip(self.plan, self.skipped, strict=True):
            if g.cache is not None and not skipped:
                g.cache.restart()
        if self.any_skipped and not all(self.skipped):
            self.computing = [r for g, s in zip(self.plan, self.skipped, strict=True) if not s
                              for r in range(g.start, g.start + g.rows)]
            self.rows = torch.tensor(self.computing, dtype=torch.long, device=h0.device)
            self.sub = (h0.index_select(0, self.rows), a0.index_select(0, self.rows))

    def tail_block(self, run: Any, kwargs: dict[str, Any], is_last: bool) -> Pair:
        """Block 1..N-1: the whole batch when nobody skips, else only the computing rows."""
        if not self.any_skipped:
            out = run(**kwargs)
            if is_last:
                self._store(out, [g.span for g in self.plan])
            return out
        if self.rows is not None:
            sub_kwargs = slice_block_arguments(kwargs, self.rows, self.batch)
            sub_kwargs["hidden_states"], sub_kwargs["audio_hidden_states"] = self.sub
            with self.lora.select(self.computing) if self.lora is not None else contextlib.nullcontext():
                self.sub = run(**sub_kwargs)
        if not is_last:
            # The model's loop hands this to the next block, whose hook ignores it for self.sub.
            return kwargs["hidden_states"], kwargs["audio_hidden_states"]
        return self._assemble()

    def _assemble(self) -> Pair:
        """The whole batch after the last block: computed rows as computed, skipped rows as block 0's
        output plus their own cached tail residual."""
        h0, a0 = self.head_out
        video, audio = torch.empty_like(h0), torch.empty_like(a0)
        spans, offset = [], 0
        for g, skipped in zip(self.plan, self.skipped, strict=True):
            if skipped:
                tail_video, tail_audio = g.cache.tail_residual
                video[g.span] = h0[g.span] + tail_video
                audio[g.span] = a0[g.span] + tail_audio
            else:
                spans.append(slice(offset, offset + g.rows))
                offset += g.rows
        if self.rows is not None:
            video.index_copy_(0, self.rows, self.sub[0])
            audio.index_copy_(0, self.rows, self.sub[1])
            self._store(self.sub, spans)
        self.finished = True
        return video, audio

    def _store(self, out: Pair, spans: list[slice]) -> None:
        """Each computing cached request keeps its tail residual; `spans[k]` are the rows in `out` of
        the k-th computing request."""
        h0, a0 = self.head_out
        computing = [g for g, s in zip(self.plan, self.skipped, strict=True) if not s]
        for g, rows in zip(computing, spans, strict=True):
            if g.cache is not None:
                g.cache.tail_residual = (out[0][rows] - h0[g.span], out[1][rows] - a0[g.span])
        self.finished = True


class _BlockHook(ModelHook):
    def __init__(self, owner: FirstBlockCache) -> None:
        super().__init__()
        self.owner = owner
        self._signature: inspect.Signature | None = None

    def initialize_hook(self, module: torch.nn.Module) -> torch.nn.Module:
        self._signature = inspect.signature(module.forward)
        return module

    def _arguments(self, args: tuple, kwargs: dict[str, Any]) -> dict[str, Any]:
        # The model passes keywords; its gradient-checkpointing path passes positionals.
        return dict(self._signature.bind(*args, **kwargs).arguments) if args else dict(kwargs)


class _HeadHook(_BlockHook):
    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        step = self.owner.current()
        if step is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        arguments = self._arguments(args, kwargs)
        head_out = self.fn_ref.original_forward(**arguments)
        step.decide((arguments["hidden_states"], arguments["audio_hidden_states"]), head_out)
        return head_out


class _TailHook(_BlockHook):
    def __init__(self, owner: FirstBlockCache, is_last: bool) -> None:
        super().__init__(owner)
        self.is_last = is_last

    def new_forward(self, module: torch.nn.Module, *args: Any, **kwargs: Any) -> Any:
        step = self.owner.current()
        if step is None:
            return self.fn_ref.original_forward(*args, **kwargs)
        return step.tail_block(self.fn_ref.original_forward, self._arguments(args, kwargs), self.is_last)


_attach_lock = threading.Lock()


class FirstBlockCache:
    """The hooks on one transformer's blocks. Holds no request state: each forward gets its plan."""

    def __init__(self, transformer: torch.nn.Module) -> None:
        """Use `attach` (one set of hooks per transformer)."""
        check_block_arguments(transformer)
        blocks = transformer.transformer_blocks
        if len(blocks) < 2:
            raise ValueError(f"first-block caching needs at least 2 transformer blocks; this model has {len(blocks)}")
        self._local = threading.local()  # the cached forward in progress, per thread
        HookRegistry.check_if_exists_or_initialize(blocks[0]).register_hook(_HeadHook(self), HEAD_HOOK)
        for i, block in enumerate(blocks[1:], start=1):
            HookRegistry.check_if_exists_or_initialize(block).register_hook(
                _TailHook(self, is_last=i == len(blocks) - 1), TAIL_HOOK)

    @classmethod
    def attach(cls, transformer: torch.nn.Module) -> FirstBlockCache:
        """The hooks on `transformer`'s blocks, registered on first use and shared afterwards
        (several Denoisers may share one set of components)."""
        with _attach_lock:
            head = HookRegistry.check_if_exists_or_initialize(transformer.transformer_blocks[0]).get_hook(HEAD_HOOK)
            return head.owner if head is not None else cls(transformer)

    def current(self) -> _CachedStep | None:
        return getattr(self._local, "step", None)

    def forward(self, backend: Any, inputs: Any, plan: Sequence[RowGroup],
                lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor, list[bool]]:
        """`backend.forward(inputs)` under the row plan: (video velocity, audio velocity, which
        requests of the plan skipped blocks 1..N-1). `lora`: the rows' adapters (`BatchedLora.rows`), when
        some row has any."""
        if self.current() is not None:
            raise RuntimeError("a cached forward is already running in this thread")
        step = _CachedStep(plan, lora)
        self._local.step = step
        try:
            video, audio = backend.forward(inputs) if lora is None else backend.forward(inputs, lora=lora)
        finally:
            self._local.step = None
        if not step.finished:
            raise RuntimeError(f"DiT backend {backend.name} did not run the transformer's blocks, so the step "
                               "cache cannot work with it (its runs_block_hooks should be False)")
        return video, audio, step.skipped
