"""Scaling on the backlog: how many Denoiser replicas the queue needs, and how many jobs the dispatchers
let into the stages. Pure functions: the Serve autoscaling policy (serving/on_ray/autoscaling.py) and
the cluster simulator (loadtests/simulator.py) call the same ones, so the simulator's 10-1000 GPU
tables predict what the cluster does.

Serve's default policy scales on the requests a deployment sees, but the dispatchers keep most of a
backlog in the job store (the stages see only the window), so a thousand queued jobs would look like
one replica's worth. Here the store's backlog drives the pool: enough replicas that the work queued
and running, at the step time the replicas measure, drains within `drain_seconds`.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class DenoiseLoad:
    """What the Denoiser pool faces, as its replicas report it."""

    queued: int  # jobs waiting in the job store
    in_progress: int  # jobs inside the stages
    per_replica: int  # jobs one replica holds at once (batching.max_running)
    steps_per_job: float  # mean denoising steps of the jobs running
    request_step_seconds: float | None  # measured: one replica's seconds per request-step at its batch size


def denoise_replicas(load: DenoiseLoad, *, min_replicas: int, max_replicas: int, drain_seconds: float) -> int:
    """Replicas to run: hold what runs now, and drain the whole backlog within `drain_seconds`."""
    jobs = load.queued + load.in_progress
    hold = math.ceil(load.in_progress / load.per_replica)
    if load.request_step_seconds:
        drain = math.ceil(jobs * load.steps_per_job * load.request_step_seconds / drain_seconds)
    else:  # nothing measured yet: a replica per `per_replica` jobs
        drain = math.ceil(jobs / load.per_replica)
    return max(min_replicas, min(max_replicas, max(hold, drain)))


def dispatch_window(denoise_replicas_running: int, per_replica: int, cap: int) -> int:
    """Jobs the dispatchers let into the stages at once: what the running Denoisers hold, within `cap`."""
    return max(1, min(cap, max(1, denoise_replicas_running) * per_replica))
