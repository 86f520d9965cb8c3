"""Every use of Ray's private or underscored APIs, in one place, each with why and the upstream context.

When Ray offers a public way, change it here; nothing else in Kino touches Ray's internals (a test checks).
"""

from __future__ import annotations

from typing import Any


def deploy_apps(schema: Any) -> None:
    """Apply a Serve config (a `ServeDeploySchema`) to the running Serve controller.

    Why private: the public ways to apply a config file are `serve deploy` and the dashboard's REST API
    (ray-project/ray#21881), both through the dashboard, which a local cluster on 2 cores runs without.
    The REST handler calls this same controller method, and KubeRay's serveConfigV2 ends up there too.
    """
    from ray.serve._private.api import serve_start

    serve_start().deploy_apps(schema)


async def object_ref_stream(stream: Any) -> Any:
    """The items of a streaming Serve response as object references, without fetching them.

    Why private: `DeploymentResponseGenerator` yields values only. The Denoiser's last item is the latents,
    which must go to the Decoder by reference and never through the dispatcher; yielding a `ray.put`
    reference nested inside an item instead loses its reference count under load (ray-project/ray#58080:
    decodes failed with ReferenceCountingAssertionError).
    """
    return await stream._to_object_ref_gen()


def init_options(temp_dir: str, metrics_export_port: int) -> dict[str, Any]:
    """`ray.init` keyword arguments with no public spelling for a local (address="local") cluster.

    `_temp_dir`: the session directory; Ray's default under /tmp/ray is shared by every cluster on the
    machine, and Unix socket paths must stay under ~107 characters (`ray start --temp-dir` is the public
    form, for clusters started from the command line). `_metrics_export_port`: the node's Prometheus port
    (`ray start --metrics-export-port`); a shared machine must not assume Ray's default port is free.
    """
    return {"_temp_dir": temp_dir, "_metrics_export_port": metrics_export_port}


def live_replica_nodes(app_name: str) -> dict[str, list[str]]:
    """Deployment -> the node ids of its live replicas in `app_name`.

    `ray._private.state.actors()`: `ray.util.state.list_actors` gives the same (an actor's class name and
    node) but asks the dashboard, which Kino's local clusters do not start (its processes cost start-up time
    and CPU on the machine the tests share). Replica actors are named `ServeReplica:<app>:<deployment>`.
    """
    from ray._private import state

    prefix = f"ServeReplica:{app_name}:"
    found: dict[str, list[str]] = {}
    for actor in state.actors().values():
        name = actor.get("ActorClassName", "")
        if name.startswith(prefix) and actor.get("State") == "ALIVE":
            found.setdefault(name[len(prefix):], []).append(actor["Address"]["NodeID"])
    return found


def app_status(app_name: str) -> Any:
    """The `ApplicationStatus` of `app_name` (NOT_STARTED if Serve has no such application).

    Why private: `serve.status()` is the public way, and it builds every application's and deployment's details
    in the caller (pydantic models; each deployment's request router class cloudpickled): some 60 ms of CPU per
    call, the largest share of an idle Frontend's CPU while its health probe asked every 5 s (py-spy:
    `RequestRouterConfig._serialize_request_router_cls` under `status`). The controller's per-application status
    (`ServeControllerClient.get_serve_status`, what `serve.status()` reads the status from) is a small protobuf.
    """
    from ray.serve.context import _get_global_client

    return _get_global_client().get_serve_status(app_name).app_status.status


def routed_replicas(handle: Any) -> int | None:
    """How many replicas `handle` routes to now; None until it has heard of any (a handle hears once it is used:
    `.options()` or `.remote()`).

    Why private: the public count is `serve.status()`, a call to the controller that builds every deployment's
    details (see `app_status`), which the dispatchers made every 10 s to size their window by the running Denoiser
    replicas. Serve's controller already pushes every change of a deployment's running replicas to each handle
    (its long poll, `AsyncioRouter.update_deployment_targets`): reading that costs nothing and is never stale.
    """
    try:
        router = handle._router._asyncio_router
        if not router.running_replicas_populated():
            return None
        chooser = router._request_router  # created at the handle's first request; before it, the list pushed
        return len(chooser.curr_replicas) if chooser is not None else len(router._running_replicas or ())
    except AttributeError:  # not used yet, or Ray's internals moved: the caller falls back to serve.status()
        return None
