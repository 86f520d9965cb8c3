"""Real torch.distributed worlds on one host, for the engines/parallel tests and benchmark.

`World` spawns followers (torch.multiprocessing, spawn) and makes the calling process global rank
0; the rendezvous is Kino's own (engines/parallel/world.py: rank 0's TCPStore on a port the
kernel picks). One world hosts several engines in turn: rank 0 announces on the default
group which engines come next (per engine: cfg, ulysses, timeout and its global ranks; a test
protocol, not Kino's), every rank builds their groups, each follower serves the engine it belongs
to until STOP, and all ranks report what they did. Followers load the preset's DiT and VAE parts:
the same seeded weights as rank 0's (and LoRA adapters from the world's `lora_dir`). A single engine
as Kino runs it (`kino run`) is `engines.parallel.world.LocalRanks`; this world exists to reuse
processes across test cases.

On gloo every process runs one CPU thread; on NCCL rank r computes on cuda:r.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engines.parallel import FollowerStats, Leader, ParallelGroups, ParallelLayout
from engines.parallel.world import Rendezvous, join_world, rank_device

WORLD_TIMEOUT = timedelta(seconds=180)  # the default group: the test protocol, waited on while engines run
MAX_ENGINE_RANKS = 8
_ENGINE = 3 + MAX_ENGINE_RANKS  # cfg, ulysses, timeout in ms, ranks (-1 padded)
MAX_ENGINES = 4


@dataclass(frozen=True)
class EngineSpec:
    cfg: int
    ulysses: int
    ranks: tuple[int, ...]
    timeout_s: float = 60.0


def device_of(backend: str, rank: int) -> str:
    return rank_device("cpu" if backend == "gloo" else "cuda", rank)


def _init(rank: int, rendezvous: Rendezvous, store: dist.Store | None = None) -> None:
    if rendezvous.backend == "gloo":
        torch.set_num_threads(1)
    else:
        torch.cuda.set_device(rank)
    join_world(rendezvous, rank, store or rendezvous.connect())


def _announce(specs: list[EngineSpec] | None) -> list[EngineSpec]:
    """Rank 0 sends the next engines (None: no more); the others receive them."""
    data = torch.full((1 + MAX_ENGINES * _ENGINE,), -1, dtype=torch.int64)
    if dist.get_rank() == 0:
        specs = specs or []
        data[0] = len(specs)
        for i, s in enumerate(specs):
            row = [s.cfg, s.ulysses, int(s.timeout_s * 1000), *s.ranks]
            data[1 + i * _ENGINE: 1 + i * _ENGINE + len(row)] = torch.tensor(row)
    dist.broadcast(data, 0, group=_protocol_group())
    out = []
    for i in range(int(data[0])):
        cfg, ulysses, ms, *ranks = data[1 + i * _ENGINE: 1 + (i + 1) * _ENGINE].tolist()
        out.append(EngineSpec(cfg, ulysses, tuple(r for r in ranks if r >= 0), ms / 1000))
    return out


_PROTOCOL: list[dist.ProcessGroup] = []  # this process's protocol group, once created


def _protocol_group() -> dist.ProcessGroup:
    """The test protocol runs on gloo even when the engines use NCCL (CPU tensors, no device)."""
    if not _PROTOCOL:
        _PROTOCOL.append(dist.new_group(backend="gloo", timeout=WORLD_TIMEOUT))
    return _PROTOCOL[0]


def _build(spec: EngineSpec, backend: str) -> ParallelGroups:
    layout = ParallelLayout(spec.cfg, spec.ulysses, spec.ranks)
    return ParallelGroups.build(layout, device_of(backend, dist.get_rank()), timedelta(seconds=spec.timeout_s))


def _report(stats: FollowerStats) -> list[FollowerStats]:
    mine = torch.tensor([stats.forwards, stats.decode_units])
    every = [torch.zeros(2, dtype=torch.int64) for _ in range(dist.get_world_size())]
    dist.all_gather(every, mine, group=_protocol_group())
    return [FollowerStats(*t.tolist()) for t in every]


def follower_main(rank: int, rendezvous: Rendezvous, preset_name: str, lora_dir: Path | None = None) -> None:
    """A follower process: serve each engine rank 0 announces, until it announces none."""
    from engines.config import LoraConfig, preset
    from engines.decoder import Decoder
    from engines.model_loader import DECODER_PARTS, DENOISER_PARTS, ComponentSource
    from engines.parallel import serve_follower

    _init(rank, rendezvous)
    backend = rendezvous.backend
    config = preset(preset_name, device=device_of(backend, rank)).replace(lora=LoraConfig(dir=lora_dir))
    components = ComponentSource(config).load(DENOISER_PARTS + DECODER_PARTS)
    decoder = Decoder(config, components)
    while specs := _announce(None):
        engines = [_build(s, backend) for s in specs]
        mine = [g for g in engines if g.rank not in (None, 0)]
        assert len(mine) <= 1, "a follower serves one engine at a time"
        stats = serve_follower(mine[0], transformer=components.transformer, decoder=decoder,
                               lora=config.lora) if mine else FollowerStats()
        _report(stats)
    dist.destroy_process_group()


@dataclass
class Engine:
    """One engine of a `World`, from rank 0's side."""

    groups: ParallelGroups
    leader: Leader


class World:
    """Rank 0 of a world of `size` processes: this one and `size - 1` spawned followers.

    The followers start at once (they import torch and load their parts meanwhile); this process
    joins the world on its first `engines` call."""

    def __init__(self, size: int, preset_name: str = "tiny", backend: str = "gloo",
                 lora_dir: Path | None = None) -> None:
        """`lora_dir`: the followers' model.lora.dir (read when a step first names an adapter, so it may be filled
        after they start)."""
        self.size, self.backend = size, backend
        self._rendezvous, self._store = Rendezvous.open(size, backend)
        ctx = mp.get_context("spawn")
        self.processes = [ctx.Process(target=follower_main, args=(r, self._rendezvous, preset_name, lora_dir),
                                      daemon=True) for r in range(1, size)]
        for p in self.processes:
            p.start()
        self._joined = self._closed = False

    def engines(self, *specs: EngineSpec) -> list[Engine]:
        """Announce and build engines (each over its global ranks; rank 0 leads all of them)."""
        if not self._joined:
            _init(0, self._rendezvous, self._store)
            self._joined = True
        _announce(list(specs))
        built = [_build(s, self.backend) for s in specs]
        return [Engine(g, Leader(g)) for g in built]

    def engine(self, cfg: int, ulysses: int, timeout_s: float = 60.0) -> Engine:
        """One engine over global ranks 0 .. cfg*ulysses - 1."""
        [engine] = self.engines(EngineSpec(cfg, ulysses, tuple(range(cfg * ulysses)), timeout_s))
        return engine

    def finish(self, *engines: Engine) -> list[FollowerStats]:
        """Stop the engines' followers; what each rank of the world did (rank 0's entry is empty)."""
        for engine in engines:
            engine.leader.stop()
        return _report(FollowerStats())

    def close(self) -> None:
        """End the world: followers return, or are killed if it is broken or they do not."""
        if self._closed:
            return
        self._closed = True
        if self._joined and all(p.is_alive() for p in self.processes):
            try:
                _announce(None)
                for p in self.processes:
                    p.join(timeout=10)
            except RuntimeError:
                pass  # a follower died meanwhile: the rest are killed below
        self.discard()

    def discard(self) -> None:
        """Kill the followers still running and leave the world (after a test broke it on purpose)."""
        self._closed = True
        for p in self.processes:
            if p.is_alive():
                p.kill()
            p.join()
        if self._joined and dist.is_initialized():
            dist.destroy_process_group()
            _PROTOCOL.clear()
