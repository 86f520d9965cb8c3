"""What every engine rank but 0 runs: receive a message, compute its share, until STOP.

A follower holds the same model parts as rank 0 (loaded from the same config), calls
`serve_follower` once, and does nothing else with the groups meanwhile. Any error ends the loop
by raising: the follower's process should then exit, which fails rank 0's current or next round
at once ("Connection closed by peer") instead of leaving it to its timeout.

A DiT step whose rows have LoRA adapters names them (and their scales) per row: the follower loads
them by name from its own `model.lora.dir` into its own `AdapterBank` (the same files as rank 0's),
attaches them to its transformer for the step and narrows them to the rows it computes.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import torch

from engines.config import LoraConfig
from engines.decoder import Decoder
from engines.dit_backend import EagerBackend
from engines.errors import ParallelError
from engines.lora import AdapterBank, BatchedLora, LoraRows, RowAdapters
from engines.parallel.decode import follow_decode
from engines.parallel.layout import ParallelGroups
from engines.parallel.messages import MessageKind, NamedRows, receive, unpack_forward
from engines.parallel.transformer import ShardingHooks, parallelize


@dataclass
class FollowerStats:
    """What one follower did before STOP."""

    forwards: int = 0
    decode_units: int = 0


class _Adapters:
    """A follower's LoRA adapters: its own bank (None: no model.lora.dir) and the hooks of one step."""

    def __init__(self, transformer: torch.nn.Module, config: LoraConfig | None) -> None:
        config = config or LoraConfig()
        self.bank = AdapterBank(transformer, config) if config.dir is not None else None
        self.lora = BatchedLora(transformer, config.delta_path)

    @contextmanager
    def rows(self, named: NamedRows | None, hooks: ShardingHooks, batch: int) -> Iterator[LoraRows | None]:
        """The named rows' adapters attached, narrowed to this rank's rows."""
        if named is None:
            yield None
            return
        if self.bank is None:
            raise ParallelError("rank 0 sent a DiT step with LoRA adapters to a follower without model.lora.dir")
        resolved: dict[tuple[tuple[str, float], ...], RowAdapters] = {}
        for row in named:
            if tuple(row) not in resolved:
                resolved[tuple(row)] = self.bank.uses(row)
        with self.lora.rows([resolved[tuple(row)] for row in named]) as lora, hooks.narrow(lora, batch):
            yield lora


def serve_follower(groups: ParallelGroups, *, transformer: torch.nn.Module | None = None,
                   decoder: Decoder | None = None, lora: LoraConfig | None = None) -> FollowerStats:
    """Follow engine rank 0 until it sends STOP. `transformer`: serve DiT steps (it is parallelized
    here and restored on return); `decoder`: serve video decodes; `lora`: where the adapters that
    steps name are (rank 0's `model.lora`). A message for a part this rank was not given raises."""
    if groups.rank in (None, 0):
        raise ValueError(f"serve_follower runs on engine ranks 1..{groups.layout.world_size - 1}, "
                         f"not on engine rank {groups.rank}")
    hooks = parallelize(transformer, groups) if transformer is not None else None
    backend = EagerBackend(transformer) if transformer is not None else None
    adapters = _Adapters(transformer, lora) if transformer is not None else None
    stats = FollowerStats()
    try:
        while True:
            kind, tensors = receive(groups)
            if kind is MessageKind.STOP:
                return stats
            if kind is MessageKind.FORWARD:
                if backend is None or hooks is None or adapters is None:
                    raise ParallelError("rank 0 sent a DiT step to a follower given no transformer")
                inputs, named = unpack_forward(tensors)
                with adapters.rows(named, hooks, inputs.batch_size) as rows:
                    backend.forward(inputs, lora=rows)
                stats.forwards += 1
            elif kind is MessageKind.DECODE:
                if decoder is None:
                    raise ParallelError("rank 0 sent a video decode to a follower given no decoder")
                stats.decode_units += follow_decode(decoder, groups, tensors)
    finally:
        if hooks is not None:
            hooks.remove()
