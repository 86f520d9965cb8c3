"""A Denoiser replica that spans several ranks (model.parallel): rank 0 is the replica, its followers Ray actors.

The replica owns a placement group of ``cfg x ulysses - 1`` bundles, one device each (a GPU when the
model computes on CUDA; otherwise the CPU share the replica itself was given, e.g. the Serve
config's 0.5), and starts one `DenoiserRank` actor in each. They meet
rank 0 at a TCPStore it opened on a port the kernel picked, on this node's address (engines/
parallel/world.py), and join one torch.distributed world: NCCL on GPUs, gloo on CPUs. Rank 0 keeps
the denoise loop (the scheduler and every request's state) and drives each step; the actors only
follow. The bundles are pinned to the replica's own node (STRICT_PACK and Ray's ``node:<ip>``
resource): the engine's collectives run every step, so NCCL stays on NVLink or PCIe; the chart
gives each DiT pod the GPUs of one replica (deploy/helm/kino/README.md, with the NCCL settings).

Failure: a follower that dies (or hangs past the engine's timeout) fails rank 0's next step with
`ParallelError`; the requests of that step fail with it, which the dispatcher retries like a dead
replica (serving/on_ray/stages.py), and from then on the replica refuses every step and fails its
health check, so Serve replaces it. The actors and the placement group are owned by the replica
process: they end with it, however it ends.
"""

from __future__ import annotations

import logging
import uuid
from datetime import timedelta

import ray
from ray.util.placement_group import PlacementGroup, placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from engines.config import ModelConfig
from engines.errors import ParallelError
from engines.parallel.layout import DEFAULT_TIMEOUT
from engines.parallel.world import EngineLead, Rendezvous, backend_for, run_follower

log = logging.getLogger(__name__)

ACTOR_PREFIX = "DenoiserRank:"
"""Followers are named ``DenoiserRank:<replica actor id>:<rank>`` (owned by the replica all the same)."""
PLACEMENT_TIMEOUT_S = 120.0
"""Longest wait for the cluster to hold the followers' bundles (the replica fails to start after it)."""


@ray.remote(max_restarts=0)
class DenoiserRank:
    """One follower of a spread Denoiser: `serve` returns (its steps and decode units) when rank 0 stops it."""

    def serve(self, config: ModelConfig, rendezvous: Rendezvous, rank: int, timeout_s: float) -> tuple[int, int]:
        stats = run_follower(config, rendezvous, rank, timedelta(seconds=timeout_s))
        return stats.forwards, stats.decode_units


def _own_cpus() -> float:
    """The CPUs Ray assigned to this process's actor (1 outside an actor, or when it was given none)."""
    try:
        assigned = ray.get_runtime_context().get_assigned_resources()
    except Exception:  # noqa: BLE001 - a driver has no assignment
        assigned = {}
    return float(assigned.get("CPU") or 1.0)


class RayRanks:
    """The followers of one replica's engine, placed and started; `lead()` joins them as rank 0."""

    def __init__(self, config: ModelConfig, timeout: timedelta = DEFAULT_TIMEOUT) -> None:
        self.config, self.timeout = config, timeout
        followers = config.parallel.world_size - 1
        if followers < 1:
            raise ValueError("RayRanks needs model.parallel with at least 2 ranks (cfg x ulysses)")
        gpu = config.device.startswith("cuda")
        host = ray.util.get_node_ip_address()
        # Each follower gets what rank 0 (this replica) was given: a GPU, or the replica's CPU share.
        cpus = _own_cpus()
        device = {"GPU": 1.0, "CPU": cpus} if gpu else {"CPU": cpus}
        # On this replica's node (Ray's per-node resource): the whole engine on one host.
        bundle = {**device, f"node:{host}": 0.001}
        self.placement: PlacementGroup = placement_group([bundle] * followers, strategy="STRICT_PACK")
        try:
            ray.get(self.placement.ready(), timeout=PLACEMENT_TIMEOUT_S)
        except ray.exceptions.GetTimeoutError:
            remove_placement_group(self.placement)
            raise ParallelError(f"the cluster did not place {followers} x {bundle} for the followers of a Denoiser "
                                f"over {followers + 1} ranks (model.parallel) within {PLACEMENT_TIMEOUT_S:g} s: "
                                "add capacity or lower model.parallel") from None
        self.rendezvous, self._store = Rendezvous.open(config.parallel.world_size, backend_for(config.device), host)
        follower_config = config.replace(device="cuda") if gpu else config  # each actor sees its one GPU as cuda:0
        owner = ray.get_runtime_context().get_actor_id() or uuid.uuid4().hex
        self.actors = [DenoiserRank.options(
            name=f"{ACTOR_PREFIX}{owner}:{i + 1}", num_cpus=device["CPU"], num_gpus=device.get("GPU", 0.0),
            scheduling_strategy=PlacementGroupSchedulingStrategy(self.placement, placement_group_bundle_index=i),
        ).remote() for i in range(followers)]
        self.served = [a.serve.remote(follower_config, self.rendezvous, i + 1, timeout.total_seconds())
                       for i, a in enumerate(self.actors)]
        self._lead: EngineLead | None = None

    def check(self) -> None:
        """Raise `ParallelError` if a follower has ended (they end only when rank 0 stops them)."""
        ended, _ = ray.wait(self.served, num_returns=len(self.served), timeout=0)
        for ref in ended:
            rank = self.served.index(ref) + 1
            try:
                ray.get(ref)
                why = "returned"
            except Exception as e:  # noqa: BLE001 - the reason goes into the error
                why = f"failed: {type(e).__name__}: {e}"
            raise ParallelError(f"engine rank {rank} of the Denoiser (a DenoiserRank actor) {why}")

    def lead(self) -> EngineLead:
        """Rank 0's end, joined with every follower (waits for them to load their parts)."""
        if self._lead is None:
            self._lead = EngineLead.join(self.config, self.rendezvous, self._store, self.check, self.timeout)
        return self._lead

    def check_health(self) -> None:
        """For the replica's health check: raise once the engine has failed or lost a follower."""
        if self._lead is not None and self._lead.leader.failed:
            raise ParallelError("the Denoiser's rank group failed; this replica must be replaced")
        self.check()

    def close(self) -> None:
        """Stop the followers, then end their actors and the placement group."""
        try:
            if self._lead is not None:
                self._lead.close()
        except ParallelError as e:
            log.warning("stopping the Denoiser's followers: %s", e)
        finally:
            for actor in self.actors:
                ray.kill(actor)
            remove_placement_group(self.placement)
