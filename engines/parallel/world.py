"""Starting an engine's ranks: the rendezvous, rank 0's end, a follower's whole life, local followers.

Every engine spread over ``cfg x ulysses`` ranks starts the same way, wherever its ranks run:

1. Rank 0 opens the rendezvous (`Rendezvous.open`): a TCPStore on a port the kernel picks (port 0,
   never an assumed one) on the address the followers reach it at.
2. Each follower (`run_follower`, given the rendezvous and its rank) loads the DiT and the VAE from
   the same config as rank 0 (the same weights; LoRA adapters from the same `model.lora.dir`, by
   name when a step first names them), says it is ready on the store, joins the
   torch.distributed world, builds the engine's groups and serves until STOP.
3. Rank 0 (`EngineLead.join`) waits for every follower to be ready, asking `check` meanwhile whether
   one has died (so a follower that fails to load fails rank 0 at once, with its reason, instead of
   after the rendezvous timeout), joins, builds the groups and leads: `backend(transformer)` for the
   Denoiser, `runner()` for the Decoder.

Who starts the followers is the host's business: `LocalRanks` spawns them as child processes of
this one (`kino run`, the tests, the benchmarks); serving/on_ray/parallel.py starts them as Ray
actors in a placement group. gloo on CPUs (the ranks share the cores: each follower runs the
config's `num_threads`), NCCL on GPUs (follower r of `LocalRanks` computes on cuda:r; a Ray actor
on the one GPU it was given).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from engines.config import ModelConfig
from engines.errors import ParallelError
from engines.parallel.backend import ParallelBackend
from engines.parallel.decode import ParallelUnitRunner
from engines.parallel.follower import FollowerStats, serve_follower
from engines.parallel.layout import DEFAULT_TIMEOUT, ParallelGroups, ParallelLayout
from engines.parallel.messages import Leader

JOIN_TIMEOUT = timedelta(seconds=300)
"""Longest wait for every follower to load its model parts and join (and for the world's own set-up)."""


def backend_for(device: str) -> str:
    """The torch.distributed backend of an engine computing on `device`."""
    return "nccl" if torch.device(device).type == "cuda" else "gloo"


@dataclass(frozen=True)
class Rendezvous:
    """Where an engine's ranks meet: rank 0's TCPStore. Plain data: it travels to the followers."""

    host: str
    port: int
    world_size: int
    backend: str

    @classmethod
    def open(cls, world_size: int, backend: str, host: str = "127.0.0.1") -> tuple[Rendezvous, dist.TCPStore]:
        """Rank 0's store, on a port the kernel chooses, and the rendezvous that names it."""
        store = dist.TCPStore(host, 0, world_size, is_master=True, wait_for_workers=False, timeout=JOIN_TIMEOUT)
        return cls(host, store.port, world_size, backend), store

    def connect(self) -> dist.TCPStore:
        """A follower's client of rank 0's store."""
        return dist.TCPStore(self.host, self.port, self.world_size, is_master=False, timeout=JOIN_TIMEOUT)


def _ready_key(rank: int) -> str:
    return f"kino/ready/{rank}"


def join_world(rendezvous: Rendezvous, rank: int, store: dist.Store) -> None:
    """init_process_group for `rank` over the rendezvous's store (rank 0: the master store it opened)."""
    if rendezvous.backend == "nccl":
        os.environ.setdefault("TORCH_NCCL_BLOCKING_WAIT", "1")  # a timed-out collective raises in the caller
    dist.init_process_group(rendezvous.backend, store=store, rank=rank, world_size=rendezvous.world_size,
                            timeout=JOIN_TIMEOUT)


def _groups(config: ModelConfig, timeout: timedelta) -> ParallelGroups:
    return ParallelGroups.build(ParallelLayout.of(config.parallel), config.device, timeout)


def run_follower(config: ModelConfig, rendezvous: Rendezvous, rank: int,
                 timeout: timedelta = DEFAULT_TIMEOUT) -> FollowerStats:
    """A follower's whole life: load, join, serve until rank 0 sends STOP, leave the world.

    `config` is rank 0's, with this rank's device. Raises whatever failed; the caller's process
    should then exit (which fails rank 0 at once)."""
    from engines.decoder import Decoder
    from engines.model_loader import DECODER_PARTS, DENOISER_PARTS, ComponentSource

    device = torch.device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(device.index or 0)  # "cuda" (a Ray actor's one visible GPU) is cuda:0
    components = ComponentSource(config).load(DENOISER_PARTS + DECODER_PARTS)
    decoder = Decoder(config, components)  # (sets this process's torch threads from the config)
    store = rendezvous.connect()
    store.set(_ready_key(rank), "1")
    join_world(rendezvous, rank, store)
    try:
        return serve_follower(_groups(config, timeout), transformer=components.transformer, decoder=decoder,
                              lora=config.lora)
    finally:
        dist.destroy_process_group()


class EngineLead:
    """Engine rank 0: joined with its followers, it plugs the parallel parts into its Denoiser and Decoder."""

    def __init__(self, leader: Leader) -> None:
        self.leader = leader
        self._backend: ParallelBackend | None = None

    @classmethod
    def join(cls, config: ModelConfig, rendezvous: Rendezvous, store: dist.TCPStore, check: Callable[[], None],
             timeout: timedelta = DEFAULT_TIMEOUT) -> EngineLead:
        """Wait until every follower is ready (`check` raises if one has died), then join and build the groups."""
        deadline = time.monotonic() + JOIN_TIMEOUT.total_seconds()
        waiting = set(range(1, rendezvous.world_size))
        while waiting:
            check()
            waiting = {r for r in waiting if not store.check([_ready_key(r)])}
            if waiting and time.monotonic() > deadline:
                raise ParallelError(f"followers {sorted(waiting)} were not ready within "
                                    f"{JOIN_TIMEOUT.total_seconds():g} s")
            time.sleep(0.05 if waiting else 0)
        join_world(rendezvous, 0, store)
        return cls(Leader(_groups(config, timeout)))

    @property
    def layout(self) -> ParallelLayout:
        return self.leader.groups.layout

    def backend(self, transformer: torch.nn.Module) -> ParallelBackend:
        """The Denoiser's DiT backend (one per engine: it parallelizes `transformer` in place)."""
        if self._backend is not None:
            raise RuntimeError("the engine's DiT backend was already made")
        self._backend = ParallelBackend(transformer, self.leader)
        return self._backend

    def runner(self) -> ParallelUnitRunner:
        """The Decoder's unit runner: the tiles of each decode spread over the engine's ranks."""
        return ParallelUnitRunner(self.leader)

    def close(self) -> None:
        """Stop the followers (unless the group failed: they are gone or will be killed) and leave."""
        try:
            if not self.leader.failed:
                self.leader.stop()
        finally:
            if self._backend is not None:
                self._backend.close()
            if dist.is_initialized():
                dist.destroy_process_group()


def rank_device(device: str, rank: int) -> str:
    """Follower `rank`'s device on this host: cuda:<rank> when rank 0 computes on a GPU, else the same."""
    return f"cuda:{rank}" if torch.device(device).type == "cuda" else device


def _local_follower(config: ModelConfig, rendezvous: Rendezvous, rank: int) -> None:
    run_follower(config.replace(device=rank_device(config.device, rank)), rendezvous, rank)


class LocalRanks:
    """An engine with rank 0 in this process and its followers as child processes (spawned, so they start clean).

    The followers start loading at once; `lead()` joins them (call it after loading rank 0's own
    parts, which then overlaps theirs). `close()` stops them and waits for them to exit."""

    def __init__(self, config: ModelConfig) -> None:
        if config.parallel.world_size < 2:
            raise ValueError("LocalRanks needs model.parallel with at least 2 ranks (cfg x ulysses)")
        self.config = config
        self.rendezvous, self._store = Rendezvous.open(config.parallel.world_size, backend_for(config.device))
        ctx = mp.get_context("spawn")
        self.processes: list[multiprocessing.process.BaseProcess] = [
            ctx.Process(target=_local_follower, args=(config, self.rendezvous, r), daemon=True,
                        name=f"kino-rank-{r}") for r in range(1, config.parallel.world_size)]
        for p in self.processes:
            p.start()
        self._lead: EngineLead | None = None

    def check(self) -> None:
        """Raise if a follower has exited."""
        for rank, p in enumerate(self.processes, start=1):
            if not p.is_alive():
                raise ParallelError(f"engine rank {rank} (pid {p.pid}) exited with code {p.exitcode}; "
                                    "its error is in this command's output above")

    def lead(self) -> EngineLead:
        """Rank 0's end, joined with every follower (the first call waits for them to load)."""
        if self._lead is None:
            self._lead = EngineLead.join(self.config, self.rendezvous, self._store, self.check)
        return self._lead

    def close(self, timeout_s: float = 30.0) -> None:
        """Stop the followers and wait for them; kill those that do not exit in `timeout_s`."""
        try:
            if self._lead is not None:
                self._lead.close()
        finally:
            for p in self.processes:
                p.join(timeout=timeout_s if self._lead is not None and not self._lead.leader.failed else 0)
                if p.is_alive():
                    p.kill()
                    p.join()

    def __enter__(self) -> LocalRanks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
