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
timesteps before embedding them. Whatever runs part of the forward on a subset of the rows says which
(`LoraRows.select`, the handle `BatchedLora.rows` yields): the step cache's sub-batches (engines/step_cache.py
runs blocks 1..N-1 on the computing rows only) and a CFG-parallel rank's share of the rows
(engines/parallel/); within it the hooks add the selected rows' adapters, each to its own row. Any other
leading size fails loudly. A Linear is applied per token, so a rank that holds a shard of every row's tokens
(Ulysses) needs no selection.

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
        self._narrowed: LRUCache[tuple[int, ...], LoraDelta] = LRUCache(maxsize=8)

    @abstractmethod
    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        """Add the deltas of `module_name` for input `x` into `out` (in place), both viewed [rows, -1, features]."""

    def narrowed(self, index: tuple[int, ...]) -> LoraDelta:
        """The delta of a forward over the rows `index` of this one (its row k is row ``index[k]`` here; a row may
        appear twice), made from these prepared factors and kept for the next forward over the same rows."""
        found = self._narrowed.get(index)
        if found is None:
            found = self._narrowed[index] = self._narrow(index)
        return found

    @abstractmethod
    def _narrow(self, index: tuple[int, ...]) -> LoraDelta:
        """`narrowed`, computed."""


_Group = tuple[tuple[int, ...], slice | torch.Tensor, torch.Tensor, torch.Tensor]


class GroupedDelta(LoraDelta):
    """Rows grouped by adapter set; per group, the adapters concatenated along the rank: two matmuls."""

    name = "grouped"

    def __init__(self, rows: Sequence[RowAdapters], *, groups: dict[str, list[_Group]] | None = None) -> None:
        """`groups`: prepared already (a narrowed delta's, from its parent's factors)."""
        super().__init__(rows)
        # module -> [(the group's rows, their selector, down [R, in], up [out, R] with the scales folded in)]
        self._groups: dict[str, list[_Group]] = {}
        if groups is not None:
            self._groups = groups
            return
        members: dict[tuple[tuple[int, float], ...], list[int]] = {}
        first: dict[tuple[tuple[int, float], ...], RowAdapters] = {}
        for i, row in enumerate(self.rows):
            if row:
                key = tuple((id(u.adapter), u.scale) for u in row)
                members.setdefault(key, []).append(i)
                first.setdefault(key, row)
        for key, idx in members.items():
            where = _rows_selector(idx)
            for module_name in self.modules:
                factors = [(u.adapter.layers[module_name], u.scale) for u in first[key]
                           if module_name in u.adapter.layers]
                if not factors:
                    continue
                down = torch.cat([f.down for f, _ in factors])
                up = torch.cat([f.up * (scale * f.scaling) for f, scale in factors], dim=1)
                self._groups.setdefault(module_name, []).append((tuple(idx), where, down, up))

    def _narrow(self, index: tuple[int, ...]) -> GroupedDelta:
        # The same factors; each group takes the positions its rows have in `index` (none: it drops out).
        positions: dict[int, list[int]] = {}
        for k, i in enumerate(index):
            positions.setdefault(i, []).append(k)
        groups: dict[str, list[_Group]] = {}
        for module_name, module_groups in self._groups.items():
            for members, _, down, up in module_groups:
                kept = sorted(k for i in members for k in positions.get(i, ()))
                if kept:
                    groups.setdefault(module_name, []).append((tuple(kept), _rows_selector(kept), down, up))
        return GroupedDelta([self.rows[i] for i in index], groups=groups)

    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        for _, where, down, up in self._groups.get(module_name, ()):
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

    def __init__(self, rows: Sequence[RowAdapters], *,
                 factors: dict[str, tuple[torch.Tensor, torch.Tensor]] | None = None) -> None:
        """`factors`: gathered already (a narrowed delta's, from its parent's)."""
        super().__init__(rows)
        # module -> (down [rows, in, slots * rank], up [rows, slots * rank, out] with the scales folded in)
        self._factors: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
        if factors is not None:
            self._factors = factors
            return
        adapters = list({id(u.adapter): u.adapter for row in self.rows for u in row}.values())
        entry = {id(a): i + 1 for i, a in enumerate(adapters)}  # 0: the zero entry of empty slots
        slots = max(len(row) for row in self.rows)
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

    def _narrow(self, index: tuple[int, ...]) -> GatheredDelta:
        rows = [self.rows[i] for i in index]
        factors = {}
        if any(rows):  # else nothing to add: not even zeros
            for module_name, (down_t, up) in self._factors.items():
                picked = torch.tensor(index, dtype=torch.long, device=down_t.device)
                factors[module_name] = (down_t.index_select(0, picked), up.index_select(0, picked))
        return GatheredDelta(rows, factors=factors)

    def add(self, module_name: str, x: torch.Tensor, out: torch.Tensor) -> None:
        found = self._factors.get(module_name)
        if found is not None:
            down_t, up = found
            out.add_(torch.bmm(torch.bmm(x, down_t), up))


DELTA_PATHS: dict[str, type[LoraDelta]] = {"grouped": GroupedDelta, "gathered": GatheredDelta}
DEFAULT_PATH = "grouped"  # the faster on CPU when measured quietly: see the module docstring


class LoraRows:
    """The adapters of the forwards inside one `BatchedLora.rows` block: every batch row's (`rows`), and the
    delta its hooks add now, the whole batch's or that of the rows `select` names."""

    def __init__(self, delta: LoraDelta) -> None:
        self._whole = delta
        self.delta = delta
        self._index: tuple[int, ...] | None = None  # the batch rows selected now (None: all of them)

    @property
    def rows(self) -> tuple[RowAdapters, ...]:
        """Every batch row's adapters, whatever is selected."""
        return self._whole.rows

    @contextlib.contextmanager
    def select(self, index: Sequence[int]) -> Iterator[None]:
        """Within this block the forwards run on the rows `index` of the current ones, in that order (a row may
        appear twice): row k of their inputs adds the adapters of row ``index[k]``. What runs part of a forward on
        a sub-batch (the step cache, a CFG-parallel rank) says so here. Selections nest."""
        current = self._index if self._index is not None else range(self._whole.batch)
        absolute = tuple(current[int(i)] for i in index)
        saved = self.delta, self._index
        if absolute == tuple(range(self._whole.batch)):
            self.delta, self._index = self._whole, None
        else:
            self.delta, self._index = self._whole.narrowed(absolute), absolute
        try:
            yield
        finally:
            self.delta, self._index = saved


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
    def rows(self, rows: Sequence[RowAdapters]) -> Iterator[LoraRows | None]:
        """Within this block, the transformer's forwards add row i's adapters to batch row i; yields the
        `LoraRows` that narrows them to a sub-batch. Nothing is attached, and None yielded, when no row has an
        adapter."""
        if not any(rows):
            yield None
            return
        active = LoraRows(self._delta(rows))
        handles = []
        try:
            for module_name in active.delta.modules:
                module = self.transformer.get_submodule(module_name)
                handles.append(module.register_forward_hook(_Hook(active, module_name), with_kwargs=True))
            yield active
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
def lora_rows(transformer: torch.nn.Module, rows: Sequence[RowAdapters],
              path: str = DEFAULT_PATH) -> Iterator[LoraRows | None]:
    """One-off form of `BatchedLora(transformer, path).rows(rows)` (prepares the factors anew each time)."""
    with BatchedLora(transformer, path, kept=1).rows(rows) as active:
        yield active


class _Hook:
    """The forward hook of one targeted Linear: its output plus the rows' deltas."""

    def __init__(self, active: LoraRows, module_name: str) -> None:
        self.active, self.module_name = active, module_name

    def __call__(self, _module: torch.nn.Module, args: tuple[Any, ...], kwargs: dict[str, Any],
                 output: torch.Tensor) -> torch.Tensor:
        x = args[0] if args else kwargs["input"]
        delta = self.active.delta
        batch, leading = delta.batch, x.shape[0]
        # [rows, tokens, features] must have exactly the forward's rows; only a flattened 2-D input may hold more
        if leading % batch or (x.ndim > 2 and leading != batch):
            raise ValueError(f"LoRA rows: {self.module_name} got an input of {leading} leading rows for a forward "
                             f"of {batch} batch rows (the rows given must be the forward's; what runs part of it "
                             "on a sub-batch must name its rows: LoraRows.select)")
        delta.add(self.module_name, x.reshape(batch, -1, x.shape[-1]), output.view(batch, -1, output.shape[-1]))
        return output


def _rows_selector(idx: list[int]) -> slice | torch.Tensor:
    """A slice when the rows are consecutive (a view, no copy), else their indices."""
    if idx == list(range(idx[0], idx[-1] + 1)):
        return slice(idx[0], idx[-1] + 1)
    return torch.tensor(idx, dtype=torch.long)
