"""Scaling on the backlog in Ray Serve: the Denoiser's custom autoscaling policy, the stats its replicas
report for it, and the running replica count the dispatchers size their window by (`RunningReplicas`).

Wired in deploy/serve/kino.yaml: `autoscaling_config.policy.policy_function:
serving.on_ray.autoscaling:scale_on_backlog` on the Denoiser. The decision itself is
`serving.control_plane.autoscaling.denoise_replicas`, which the simulator uses too.
"""

from __future__ import annotations

import asyncio
import logging
import time
from typing import Any

from ray import serve
from ray.serve.autoscaling_policy import replica_queue_length_autoscaling_policy
from ray.serve.config import AutoscalingContext
from ray.serve.handle import DeploymentHandle
from ray.serve.schema import ReplicaState

from serving.control_plane.autoscaling import DenoiseLoad, denoise_replicas
from serving.on_ray.compat import routed_replicas

log = logging.getLogger(__name__)
STATS = ("queued", "in_progress", "per_replica", "steps_per_job", "request_step_seconds", "drain_seconds")


def scale_on_backlog(ctx: AutoscalingContext) -> tuple[int, dict[str, Any]]:
    """Denoiser replicas for the job store's backlog at the replicas' measured step time."""
    metrics = ctx.aggregated_metrics or {}
    if any(not metrics.get(name) for name in STATS):  # no replica has reported yet: Serve's own rule
        return replica_queue_length_autoscaling_policy(ctx)

    def most(name: str) -> float:
        return max(metrics[name].values())

    measured = [v for v in metrics["request_step_seconds"].values() if v > 0]
    load = DenoiseLoad(queued=int(most("queued")), in_progress=int(most("in_progress")),
                       per_replica=int(most("per_replica")), steps_per_job=most("steps_per_job"),
                       request_step_seconds=sum(measured) / len(measured) if measured else None)
    want = denoise_replicas(load, min_replicas=ctx.capacity_adjusted_min_replicas,
                            max_replicas=ctx.capacity_adjusted_max_replicas, drain_seconds=most("drain_seconds"))
    if want != ctx.current_num_replicas:
        log.info("Denoiser: %s -> %d replicas (now %d)", load, want, ctx.current_num_replicas)
    return want, ctx.policy_state


def running_replicas(app_name: str, deployment: str) -> int:
    """Replicas of `deployment` serving now (a status read from the Serve controller)."""
    app = serve.status().applications.get(app_name)
    if app is None or deployment not in app.deployments:
        return 0
    return app.deployments[deployment].replica_states.get(ReplicaState.RUNNING, 0)


class RunningReplicas:
    """The running replicas of the deployment `handle` calls, read without a call: Serve's controller pushes every
    change to the handle (`routed_replicas`). Until the handle has heard, or where that cannot be read, a status
    read in the background (at most every `every_seconds`) gives it; 0 is never the answer (the last count stays).
    Call it on the event loop."""

    def __init__(self, handle: DeploymentHandle, app_name: str, deployment: str, *, every_seconds: float = 10.0,
                 initial: int = 1) -> None:
        self.handle = handle.options()  # used from now on (so it hears of the replicas), not from its first call
        self.app_name, self.deployment, self.every = app_name, deployment, every_seconds
        self.last, self._read_at = initial, float("-inf")

    def __call__(self) -> int:
        if n := routed_replicas(self.handle):
            self.last = n
        elif time.monotonic() - self._read_at >= self.every:
            self._read_at = time.monotonic()
            asyncio.get_running_loop().create_task(self._read())
        return self.last

    async def _read(self) -> None:
        try:
            self.last = await asyncio.to_thread(running_replicas, self.app_name, self.deployment) or self.last
        except Exception as e:  # noqa: BLE001 - keep the last count while the controller is busy or replaced
            log.debug("could not read the running %s replicas: %r", self.deployment, e)
