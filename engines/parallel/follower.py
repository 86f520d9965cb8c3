"""What every engine rank but 0 runs: receive a message, compute its share, until STOP.

A follower holds the same model parts as rank 0 (loaded from the same config), calls
`serve_follower` once, and does nothing else with the groups meanwhile. Any error ends the loop
by raising: the follower's process should then exit, which fails rank 0's current or next round
at once ("Connection closed by peer") instead of leaving it to its timeout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from engines.decoder import Decoder
from engines.dit_backend import EagerBackend
from engines.errors import ParallelError
from engines.parallel.decode import follow_decode
from engines.parallel.layout import ParallelGroups
from engines.parallel.messages import MessageKind, receive, unpack_inputs
from engines.parallel.transformer import parallelize


@dataclass
class FollowerStats:
    """What one follower did before STOP."""

    forwards: int = 0
    decode_units: int = 0


def serve_follower(groups: ParallelGroups, *, transformer: torch.nn.Module | None = None,
                   decoder: Decoder | None = None) -> FollowerStats:
    """Follow engine rank 0 until it sends STOP. `transformer`: serve DiT steps (it is parallelized
    here and restored on return); `decoder`: serve video decodes. A message for a part this rank
    was not given raises."""
    if groups.rank in (None, 0):
        raise ValueError(f"serve_follower runs on engine ranks 1..{groups.layout.world_size - 1}, "
                         f"not on engine rank {groups.rank}")
    hooks = parallelize(transformer, groups) if transformer is not None else None
    backend = EagerBackend(transformer) if transformer is not None else None
    stats = FollowerStats()
    try:
        while True:
            kind, tensors = receive(groups)
            if kind is MessageKind.STOP:
                return stats
            if kind is MessageKind.FORWARD:
                if backend is None:
                    raise ParallelError("rank 0 sent a DiT step to a follower given no transformer")
                backend.forward(unpack_inputs(tensors))
                stats.forwards += 1
            elif kind is MessageKind.DECODE:
                if decoder is None:
                    raise ParallelError("rank 0 sent a video decode to a follower given no decoder")
                stats.decode_units += follow_decode(decoder, groups, tensors)
    finally:
        if hooks is not None:
            hooks.remove()
