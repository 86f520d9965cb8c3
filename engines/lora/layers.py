"""Mixed LoRA adapters in one DiT forward: each batch row adds its own adapters' low-rank updates.

Under step-level batching one forward serves the rows of many requests, each with its own adapters (or
none), so the adapters cannot be merged into the weights. Instead, for the duration of one forward, every
Linear that some row's adapter targets gets a forward hook that adds, row by row,

    y[row] += sum over the row's adapters i of  scale_i * scaling_i * (x[row] @ A_i^T) @ B_i^T

(``scaling = alpha / rank``, peft's), which is what the row would get from the weights with its adapters
merged (``fuse_lora``). The diffusers model is not changed or copied: no module is replaced, the hooks are
registered on entry of `BatchedLora.rows` and removed on exit, so outside it — and inside it for a batch
with no adapters, where nothing is registered at all — the forward is the plain one, bit for bit.

Rows: a Linear's input has the batch rows first, each owning an equal consecutive share of dim 0:
``[rows, tokens, features]`` in the blocks, ``[rows * tokens, features]`` where LTX-2 flattens per-token
timesteps before embedding them. Any other leading size fails loudly: in particular the step cache's
sub-batches (engines/step_cache.py runs blocks 1..N-1 on the computing rows only) are not supported together
with adapters yet.

Two ways to add the deltas, one interface (`DELTA_PATHS`, ``model.lora.delta_path``):

- ``grouped`` (`GroupedDelta`): rows with the same adapters and scales form a group (a request's CFG rows
  always do); per group and Linear the group's adapters are concatenated along the rank, the scales folded
  into B, and two matmuls run on the group's rows (a slice when they are consecutive). Rows without
  adapters cost nothing.
- ``gathered`` (`GatheredDelta`): per Linear, the factors of the forward's adapters are stacked with their
  ranks padded to the largest (a zero entry for empty slots); every row gathers its slots from the stack and
  two `torch.bmm` run over the whole batch (rows without adapters multiply zeros).

``grouped`` is the default: it was the faster in the quieter measurements on this project's 2-core CPU
(loadtests/bench_lora.py, one thread, 8 rows each on its own rank-8 adapter over every attention and
feed-forward Linear of the tiny preset's DiT): a forward cost 1.34-1.36x the one without adapters against
gathered's 1.60-1.64x (three runs, 2026-12-07, the box otherwise lightly used), and it skips rows without
adapters (one row of 8 on an adapter: 1.17x against 1.36x). Runs while a training job held both cores read the
other way (gathered 1.08-1.17x, grouped 1.34-1.39x): the figures depend on the load, so both paths stay behind
the one interface, `model.lora.delta_path` picks one, and a GPU kernel (segment or gathered matmuls, Punica's
BGMV) can take either's place.
"""

from __future__ import annotations

import contextlib
from abc import ABC, abstractmethod
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from cachetools import LRUCache

from engines.lora.adapter import LoraAdapter


@dataclass(frozen=True)
class AdapterUse:
    """One adapter applied at one scale (1 = as trained)."""

    adapter: LoraAdapter
    scale: float


RowAdapters = tuple[AdapterUse, ...]
"""One batch row's adapters (empty: none). A request's rows all take the request's adapters."""


def request_rows(requests: Sequence[tuple[RowAdapters, int]]) -> list[RowAdapters]:
    """The per-row list of a step batch from (a request's adapters, its row count) in batch order. A
    classifier-free-guidance request has two rows, (negative, prompt), and both take its adapters: merged into
    the weights, as diffusers does, they would apply to both branches of the guidance."""
    return [uses for uses, n in requests for _ in range(n)]


class LoraDelta(ABC):
    """Adds the rows' adapter deltas to the outputs of the targeted Linears, for one assignment of rows."""

    name: ClassVar[str]

    def __init__(self, rows: Sequence[RowAdapters]) -> None:
        self.rows = tuple(tuple(r) for r in rows)
        self.batch = len(self.rows)
        self.modules = sorted({m for row in self.rows for use in row for m in use.adapter.layers})

    @abstractmethod
    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """Add the deltas of `module_name` for input `x` into `out` (in place), both viewed [rows, -1, features]."""


class GroupedDelta(LoraDelta):
    """Rows grouped by adapter set; per group, the adapters concatenated along the rank: two matmuls."""

    name = "grouped"

    def __init__(self, rows: Sequence[RowAdapters]) -> None:
        super().__init__(rows)
        members: dict[tuple[tuple[int, float], ...], list[int]] = {}
        first: dict[tuple[tuple[int, float], ...], RowAdapters] = {}
        for i, row in enumerate(self.rows):
            if row:
                key = tuple((id(u.adapter), u.scale) for u in row)
                members.setdefault(key, []).append(i)
                first.setdefault(key, row)
        # module -> [(the group's rows, down [R, in], up [out, R] with the scales folded in)]
        self._groups: dict[str, list[tuple[slice | torch.Tensor, torch.Tensor, torch.Tensor]]] = {}
        for key, idx in members.items():
            where = _rows_selector(idx)
            for module_name in self.modules:
                factors = [(u.adapter.layers[module_name], u.scale) for u in first[key]
                           if module_name in u.adapter.layers]
                if not factors:
                    continue
                down = torch.cat([f.down for f, _ in factors])
                up = torch.cat([f.up * (scale * f.scaling) for f, scale in factors], dim=1)
                self._groups.setdefault(module_name, []).append((where, down, up))

    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        for where, down, up in self._groups.get(module_name, ()):
            if isinstance(where, slice):
                out[where].add_(torch.nn.functional.linear(torch.nn.functional.linear(x[where], down), up))
            else:
                picked = x.index_select(0, where.to(x.device))
                delta = torch.nn.functional.linear(torch.nn.functional.linear(picked, down), up)
                out.index_add_(0, where.to(out.device), delta)


class GatheredDelta(LoraDelta):
    """Per Linear, a stack of the forward's adapters padded to the largest rank; each row gathers its slots
    from it and two batched matmuls cover the batch."""

    name = "gathered"

    def __init__(self, rows: Sequence[RowAdapters]) -> None:
        super().__init__(rows)
        adapters = list({id(u.adapter): u.adapter for row in self.rows for u in row}.values())
        entry = {id(a): i + 1 for i, a in enumerate(adapters)}  # 0: the zero entry of empty slots
        slots = max(len(row) for row in self.rows)
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        for module_name in self.modules:
            having = [a for a in adapters if module_name in a.layers]
            rank = max(a.layers[module_name].rank for a in having)
            sample = having[0].layers[module_name]
            down_stack = sample.down.new_zeros(len(adapters) + 1, rank, sample.down.shape[1])
            up_stack = sample.up.new_zeros(len(adapters) + 1, sample.up.shape[0], rank)
            for a in having:
                f = a.layers[module_name]
                down_stack[entry[id(a)], : f.rank] = f.down
                up_stack[entry[id(a)], :, : f.rank] = f.up
            index = torch.zeros(self.batch, slots, dtype=torch.long)
            coef = torch.zeros(self.batch, slots, dtype=down_stack.dtype)
            for r, row in enumerate(self.rows):
                for s, use in enumerate(row):
                    if module_name in use.adapter.layers:
                        index[r, s] = entry[id(use.adapter)]
                        coef[r, s] = use.scale * use.adapter.layers[module_name].scaling
            index = index.to(down_stack.device)
            coef = coef.to(down_stack.device)
            # [rows, slots * rank, in] and [rows, slots * rank, out], the scales folded into the second
            down = down_stack[index].reshape(self.batch, slots * rank, -1)
            up = (up_stack[index] * coef[:, :, None, None]).transpose(2, 3).reshape(self.batch, slots * rank, -1)
            self._factors[module_name] = (down.transpose(1, 2).contiguous(), up.contiguous())

    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        found = self._factors.get(module_name)
        if found is not None:
            down_t, up = found
            out.add_(torch.bmm(torch.bmm(x, down_t), up))


DELTA_PATHS: dict[str, type[LoraDelta]] = {"grouped": GroupedDelta, "gathered": GatheredDelta}
DEFAULT_PATH = "grouped"  # the faster on CPU when measured quietly: see the module docstring


class BatchedLora:
    """Per-row LoRA adapters for one transformer's forwards. Keeps the last few row assignments' prepared
    factors, so a step batch whose members do not change reuses them from step to step."""

    def __init__(self, transformer: torch.nn.Module, path: str = DEFAULT_PATH, kept: int = 4) -> None:
        if path not in DELTA_PATHS:
            raise ValueError(f"unknown LoRA delta path {path!r}; known: {', '.join(DELTA_PATHS)}")
        self.transformer = transformer
        self.path = path
        self._prepared: LRUCache[tuple[Any, ...], LoraDelta] = LRUCache(maxsize=kept)

    @contextlib.contextmanager
    def rows(self, rows: Sequence[RowAdapters]) -> Iterator[None]:
        """Within this block, the transformer's forwards add row i's adapters to batch row i. Nothing is
        attached when no row has an adapter."""
        if not any(rows):
            yield
            return
        delta = self._delta(rows)
        handles = []
        try:
            for module_name in delta.modules:
                module = self.transformer.get_submodule(module_name)
                handles.append(module.register_forward_hook(_Hook(delta, module_name), with_kwargs=True))
            yield
        finally:
            for handle in handles:
                handle.remove()

    def _delta(self, rows: Sequence[RowAdapters]) -> LoraDelta:
        # Keyed by the adapters' identities: the prepared delta holds the adapters, so no id is reused while
        # its entry lives.
        key = tuple(tuple((id(u.adapter), u.scale) for u in row) for row in rows)
        delta = self._prepared.get(key)
        if delta is None:
            delta = self._prepared[key] = DELTA_PATHS[self.path](rows)
        return delta


@contextlib.contextmanager
def lora_rows(transformer: torch.nn.Module, rows: Sequence[RowAdapters], path: str = DEFAULT_PATH) -> Iterator[None]:
    """One-off form of `BatchedLora(transformer, path).rows(rows)` (prepares the factors anew each time)."""
    with BatchedLora(transformer, path, kept=1).rows(rows):
        yield


class _Hook:
    """The forward hook of one targeted Linear: its output plus the rows' deltas."""

    def __init__(self, delta: LoraDelta, module_name: str) -> None:
        self.delta, self.module_name = delta, module_name

    def __call__(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        batch, leading = self.delta.batch, x.shape[0]
        # [rows, tokens, features] must have exactly the forward's rows; only a flattened 2-D input may hold more
        if leading % batch or (x.ndim > 2 and leading != batch):
            raise ValueError(f"LoRA rows: {self.module_name} got an input of {leading} leading rows for a forward "
                             f"of {batch} batch rows (the rows given must be the forward's; a sub-batch, e.g. "
                             "the step cache's, is not supported with adapters)")
        self.delta.add(self.module_name, x.reshape(batch, -1, x.shape[-1]),
                       output.view(batch, -1, output.shape[-1]))
        return output


def _rows_selector(idx: list[int]) -> slice | torch.Tensor:
    """A slice when the rows are consecutive (a view, no copy), else their indices."""
    if idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return torch.tensor(idx, dtype=torch.long)
