"""The VAE decode of one video spread over the ranks of an engine.

`Decoder.iter_video` plans a chunked decode as temporal chunks of spatial tiles (`DecodeUnit`s, one
VAE decoder call each) and hands the plan to its `UnitRunner`. `ParallelUnitRunner` (engine rank 0)
broadcasts the latents and the four numbers of the plan (chunk, context, tile, halo) in one
DECODE message; every rank rebuilds the same plan and decodes the units it owns. Unit k of chunk c
belongs to engine rank (c + k) % world: a chunk of one tile goes to the ranks in turn, the tiles of
a tiled chunk are dealt out and the deal rotates from chunk to chunk (tiles differ in size at the
edges). Followers send the kept frames of each unit (float32 [f, rows, cols, 3], converted and laid
out there: rank 0 only copies them into place) to rank 0 point to point, in plan order, at most two
chunks ahead; rank 0 posts its receives, decodes its own units, then assembles the chunk.

Each unit is the same decoder call on the same latents (the latents travel bit for bit) and the
assembly is the same copy, so the frames are the bits a single-rank decode yields. A clip small
enough to decode whole (`DecodeConfig.whole_max_latents`) has no units: rank 0 decodes it alone.
"""

from __future__ import annotations

from collections.abc import Generator, Sequence

import torch
import torch.distributed as dist

from engines.config import DecodeConfig
from engines.decoder import DecodeChunk, Decoder, UnitRunner
from engines.errors import ParallelError
from engines.parallel.layout import ParallelGroups
from engines.parallel.messages import Leader, MessageKind


def unit_owner(chunk_index: int, unit_index: int, world_size: int) -> int:
    """The engine rank that decodes unit `unit_index` of chunk `chunk_index`."""
    return (chunk_index + unit_index) % world_size


def _plan_numbers(d: DecodeConfig) -> torch.Tensor:
    return torch.tensor([d.chunk_latent_frames, d.context_latent_frames, d.tile_latent_size, d.tile_halo_latents])


class ParallelUnitRunner(UnitRunner):
    """Rank 0's runner: the units of each chunk, decoded by their owners across the engine."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader

    def run(self, decoder: Decoder, z: torch.Tensor, plan: Sequence[DecodeChunk],
            decode: DecodeConfig) -> Generator[list[torch.Tensor], None, None]:
        groups = self.leader.groups
        world, data = groups.layout.world_size, groups.data
        with self.leader.round("starting a video decode"):
            self.leader.send(MessageKind.DECODE, [z, _plan_numbers(decode)])
        done = 0
        try:
            for c, chunk in enumerate(plan):
                with self.leader.round(f"decoding chunk {c + 1} of {len(plan)}"):
                    parts: list[torch.Tensor | None] = [None] * len(chunk.units)
                    receives = []
                    for k, unit in enumerate(chunk.units):
                        owner = unit_owner(c, k, world)
                        if owner != 0:
                            parts[k] = decoder.empty_unit_frames(unit)
                            receives.append(dist.irecv(parts[k], groups.layout.ranks[owner], group=data))
                    for k, unit in enumerate(chunk.units):
                        if parts[k] is None:
                            parts[k] = decoder.decode_unit(z, unit)
                    for work in receives:
                        work.wait()
                done += 1
                yield parts  # type: ignore[misc]
        finally:
            if done < len(plan) and not self.leader.failed:
                # Abandoned part way (the caller stopped reading): the followers send their units
                # regardless, so take them off the wire; the group stays in step.
                with self.leader.round("settling an abandoned video decode"):
                    for c in range(done, len(plan)):
                        self._discard_remote(decoder, c, plan[c])

    def _discard_remote(self, decoder: Decoder, c: int, chunk: DecodeChunk) -> None:
        groups = self.leader.groups
        for k, unit in enumerate(chunk.units):
            owner = unit_owner(c, k, groups.layout.world_size)
            if owner != 0:
                dist.recv(decoder.empty_unit_frames(unit), groups.layout.ranks[owner], group=groups.data)


@torch.inference_mode()
def follow_decode(decoder: Decoder, groups: ParallelGroups, tensors: Sequence[torch.Tensor | None]) -> int:
    """A follower's part of one DECODE message; returns how many units it decoded."""
    if len(tensors) != 2 or tensors[0] is None or tensors[1] is None:
        raise ParallelError(f"a DECODE message carries latents and the plan's numbers, got {len(tensors)} tensors")
    z, numbers = tensors
    chunk, context, tile, halo = (int(v) for v in numbers.tolist())
    d = DecodeConfig(chunk_latent_frames=chunk, context_latent_frames=context, tile_latent_size=tile,
                     tile_halo_latents=halo)
    z = z.to(decoder.vae.dtype)
    me, world, leader = groups.rank, groups.layout.world_size, groups.layout.leader
    decoded = 0
    in_flight: list[tuple[dist.Work, torch.Tensor]] = []  # the previous chunk's sends
    for c, ch in enumerate(decoder.chunk_plan(tuple(z.shape), d)):
        sends = []
        for k, unit in enumerate(ch.units):
            if unit_owner(c, k, world) == me:
                part = decoder.decode_unit(z, unit).contiguous()
                sends.append((dist.isend(part, leader, group=groups.data), part))
                decoded += 1
        for work, _ in in_flight:  # at most two chunks of parts held while rank 0 catches up
            work.wait()
        in_flight = sends
    for work, _ in in_flight:
        work.wait()
    return decoded
