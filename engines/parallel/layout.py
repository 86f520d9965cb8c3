"""Which rank does what in an engine spread over ``cfg x ulysses`` ranks, and its process groups.

Engine rank ``e`` (its position in `ParallelLayout.ranks`) sits in CFG group ``e // ulysses`` at
Ulysses position ``e % ulysses``: the ranks of one CFG group split the video tokens of the same
rows, and the CFG groups split the rows. Engine rank 0 drives (it runs the Denoiser); the others
follow. With cfg=2, ulysses=2 over global ranks 0-3: CFG group 0 = {0, 1}, CFG group 1 = {2, 3};
Ulysses groups {0, 1} and {2, 3}; the row gathers run over {0, 2} and {1, 3}.

`ParallelGroups.build` creates the torch.distributed groups. Creating a group is collective over
the whole default group, so EVERY rank of the world calls it, with the same layout, in the same
order, members of the engine or not.

Timeouts. Every collective of a forward or a decode runs on groups created with `timeout`: a
rank that dies fails the others at once (its sockets close); a rank that hangs fails them when
`timeout` has passed. Only the small header that tells the followers what comes next travels on a
separate control group (gloo, CPU) whose timeout is each process's own: very long on a follower,
which waits there between requests for as long as the server is idle, and `timeout` on the
leader. The leader's side must be bounded too: gloo's sender waits until the receiver has posted
its receive, so a follower stopped before it came back for the next header would otherwise hold
the leader's send for the long timeout (a hang, not an error). On NCCL, set ``TORCH_NCCL_BLOCKING_WAIT=1``
before init so a timed-out collective raises in the caller instead of aborting the process from
NCCL's watchdog thread.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import timedelta

import torch
import torch.distributed as dist

from engines.config import ParallelConfig
from engines.errors import ConfigError

DEFAULT_TIMEOUT = timedelta(seconds=120)
"""Longest wait of one collective: it must exceed one DiT step and one decode unit on the slowest rank."""
IDLE_TIMEOUT = timedelta(days=30)
"""How long a follower waits for the next message (the server may be idle that long)."""


@dataclass(frozen=True)
class ParallelLayout:
    """The shape of one engine: ``cfg x ulysses`` ranks, and which global ranks they are."""

    cfg: int = 1
    ulysses: int = 1
    ranks: tuple[int, ...] = ()
    """Global ranks of the engine in engine-rank order (empty: 0 .. cfg*ulysses-1); ranks[0] drives."""

    def __post_init__(self) -> None:
        if self.cfg < 1 or self.ulysses < 1:
            raise ConfigError("model.parallel", f"cfg={self.cfg} and ulysses={self.ulysses} must be at least 1")
        if not self.ranks:
            object.__setattr__(self, "ranks", tuple(range(self.world_size)))
        if len(self.ranks) != self.world_size or len(set(self.ranks)) != len(self.ranks):
            raise ConfigError("model.parallel", f"cfg x ulysses = {self.world_size} needs as many distinct ranks, "
                              f"got {list(self.ranks)}")

    @classmethod
    def of(cls, config: ParallelConfig, ranks: Sequence[int] = ()) -> ParallelLayout:
        return cls(cfg=config.cfg, ulysses=config.ulysses, ranks=tuple(ranks))

    @property
    def world_size(self) -> int:
        return self.cfg * self.ulysses

    @property
    def leader(self) -> int:
        """The global rank that drives."""
        return self.ranks[0]

    def cfg_rank(self, engine_rank: int) -> int:
        return engine_rank // self.ulysses

    def ulysses_rank(self, engine_rank: int) -> int:
        return engine_rank % self.ulysses

    def ulysses_group_ranks(self, cfg_rank: int) -> list[int]:
        """Global ranks that split the tokens of CFG group `cfg_rank`'s rows."""
        return list(self.ranks[cfg_rank * self.ulysses:(cfg_rank + 1) * self.ulysses])

    def cfg_group_ranks(self, ulysses_rank: int) -> list[int]:
        """Global ranks at Ulysses position `ulysses_rank` of every CFG group (they gather the rows)."""
        return list(self.ranks[ulysses_rank::self.ulysses])

    def check_video_tokens(self, tokens: int, shape: str = "") -> None:
        """Refuse a video token count the Ulysses ranks cannot split evenly.

        Padding is not clean here: pad tokens would need masking out of the video self-attention
        and of the audio-to-video keys, and a [B, T, T] video mask is exactly what the canonical
        processors cannot shard (they expand it to every head; see engines/parallel/transformer.py)."""
        if tokens % self.ulysses:
            where = f" ({shape})" if shape else ""
            raise ConfigError("model.parallel.ulysses", f"{self.ulysses} does not divide the {tokens} video tokens "
                              f"of this request{where}: choose a size whose latent frames x height x width "
                              f"is a multiple of {self.ulysses}, or a smaller ulysses degree")


@dataclass(frozen=True)
class ParallelGroups:
    """The process groups of one engine, as seen from this process."""

    layout: ParallelLayout
    device: torch.device
    """Where this rank computes (the data groups' tensors live there; headers are always on CPU)."""
    timeout: timedelta
    rank: int | None
    """This process's engine rank; None when it is not part of the engine."""
    control: dist.ProcessGroup | None = field(repr=False)
    """gloo: the message headers (IDLE_TIMEOUT on a follower, `timeout` on the leader)."""
    data: dist.ProcessGroup | None = field(repr=False)
    """The default backend, `timeout`: message tensors and decode parts."""
    ulysses_group: dist.ProcessGroup | None = field(repr=False)
    """This rank's Ulysses group (None when ulysses == 1)."""
    cfg_group: dist.ProcessGroup | None = field(repr=False)
    """This rank's row-gather group (None when cfg == 1)."""

    @classmethod
    def build(cls, layout: ParallelLayout, device: torch.device | str,
              timeout: timedelta = DEFAULT_TIMEOUT) -> ParallelGroups:
        """Create the engine's groups. Collective: every rank of the default group calls it, in the same order."""
        if not dist.is_initialized():
            raise RuntimeError("torch.distributed is not initialized: call init_process_group on every rank first")
        world = dist.get_world_size()
        if max(layout.ranks) >= world:
            raise ConfigError("model.parallel", f"the engine needs global ranks {list(layout.ranks)}, "
                              f"but the process group has {world}")
        me = dist.get_rank()
        rank = layout.ranks.index(me) if me in layout.ranks else None
        ranks = list(layout.ranks)
        # A gloo group's timeout is per process: the followers wait idle, the leader's sends are bounded.
        control = dist.new_group(ranks, timeout=timeout if rank == 0 else IDLE_TIMEOUT, backend="gloo")
        data = dist.new_group(ranks, timeout=timeout)
        ulysses_group = cfg_group = None
        if layout.ulysses > 1:
            for c in range(layout.cfg):
                g = dist.new_group(layout.ulysses_group_ranks(c), timeout=timeout)
                if rank is not None and layout.cfg_rank(rank) == c:
                    ulysses_group = g
        if layout.cfg > 1:
            for u in range(layout.ulysses):
                g = dist.new_group(layout.cfg_group_ranks(u), timeout=timeout)
                if rank is not None and layout.ulysses_rank(rank) == u:
                    cfg_group = g
        member = rank is not None
        return cls(layout=layout, device=torch.device(device), timeout=timeout, rank=rank,
                   control=control if member else None, data=data if member else None,
                   ulysses_group=ulysses_group, cfg_group=cfg_group)

    @property
    def is_leader(self) -> bool:
        return self.rank == 0

    @property
    def cfg_rank(self) -> int:
        return self.layout.cfg_rank(self._rank())

    @property
    def ulysses_rank(self) -> int:
        return self.layout.ulysses_rank(self._rank())

    def _rank(self) -> int:
        if self.rank is None:
            raise RuntimeError(f"global rank {dist.get_rank()} is not part of the engine {list(self.layout.ranks)}")
        return self.rank
