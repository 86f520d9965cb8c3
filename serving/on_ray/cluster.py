"""A local Ray cluster running the Kino application from the Serve config file.

`kino serve`, `make demo` and the integration tests use this. It deploys the config the way
KubeRay does (the Serve controller applies the same ServeDeploySchema), with local overrides:
loopback gRPC on a chosen port, storage under a state directory, no HTTP proxy.
"""

from __future__ import annotations

import contextlib
import copy
import logging
import os
import socket
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from serving.on_ray.compat import deploy_apps, init_options

log = logging.getLogger(__name__)

DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "kino.yaml"
APP_NAME = "kino"


def free_port(host: str = "127.0.0.1") -> int:
    """A port nobody listens on right now (the machine is shared: never assume one)."""
    with socket.socket() as s:
        s.bind((host, 0))
        return s.getsockname()[1]


def _deep_merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for k, v in over.items():
        out[k] = _deep_merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


def local_serve_config(path: str | Path = DEFAULT_SERVE_CONFIG, *, state_dir: str | Path, grpc_port: int,
                       rest_port: int | None = None, app_name: str = APP_NAME,
                       overrides: dict[str, Any] | None = None,
                       deployments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Serve config file with local settings applied (returns a plain mapping)."""
    with open(path) as f:
        doc = yaml.safe_load(f)
    state = Path(state_dir).resolve()
    [app] = [a for a in doc["applications"] if a["name"] == APP_NAME]
    app = copy.deepcopy(app)
    app["name"] = app_name
    local = {"grpc": {"host": "127.0.0.1", "port": grpc_port},
             "rest": {"host": "127.0.0.1", "port": rest_port or free_port(), "enabled": True},
             "storage": {"database_url": f"sqlite:///{state / 'jobs.db'}", "artifacts_dir": str(state / "artifacts")},
             "provenance": {"dev_chain_dir": str(state / "credentials")}}
    app["args"]["config"] = _deep_merge(_deep_merge(app["args"].get("config") or {}, local), overrides or {})
    for d in app.get("deployments", []):
        change = (deployments or {}).get(d["name"], {})
        if "num_replicas" in change:  # a fixed count replaces autoscaling
            d.pop("autoscaling_config", None)
        d.update(change)
    doc["applications"] = [app]
    doc["proxy_location"] = "Disabled"  # clients speak gRPC to the Frontend; Serve's HTTP proxy is unused here
    return doc


@dataclass
class LocalCluster:
    """A running local cluster; `grpc_address` is where clients connect."""

    grpc_address: str
    rest_url: str
    state_dir: Path
    ray_temp_dir: str
    _configs: dict[str, dict[str, Any]] = field(default_factory=dict)  # app name -> its config entry
    _base: dict[str, Any] = field(default_factory=dict)  # the config's non-application settings

    @property
    def apps(self) -> list[str]:
        return sorted(self._configs)

    def deploy(self, serve_config: dict[str, Any], timeout_s: float = 180.0) -> None:
        """Deploy (or update) applications from a Serve config mapping and wait until they run.

        A Serve config is declarative: applying one removes the applications it does not list. So
        every apply here carries all the applications deployed so far (unchanged ones are left alone).
        Each application's database is migrated to this release's schema first (as the chart's migrate Job
        does before an install or upgrade): its replicas only check it.
        """
        from serving.config import load_config
        from serving.migrations import upgrade

        for app in serve_config["applications"]:
            url = load_config(app.get("args", {}).get("config")).storage.database_url
            log.info("database %s", upgrade(url))
            self._configs[app["name"]] = app
        self._base = {k: v for k, v in serve_config.items() if k != "applications"}
        self._apply()
        _wait_running([a["name"] for a in serve_config["applications"]], timeout_s)

    def _apply(self) -> None:
        from ray.serve.schema import ServeDeploySchema

        deploy_apps(ServeDeploySchema.parse_obj({**self._base, "applications": list(self._configs.values())}))

    @property
    def metrics_url(self) -> str:
        """Prometheus endpoint of this node: Ray's own metrics and every Kino metric from the replicas."""
        import ray

        return f"http://127.0.0.1:{ray.nodes()[0]['MetricsExportPort']}/metrics"

    def delete(self, app_name: str, timeout_s: float = 60.0) -> None:
        """Remove one application, keeping the others."""
        from ray import serve

        self._configs.pop(app_name, None)
        self._apply()
        deadline = time.monotonic() + timeout_s
        while app_name in serve.status().applications and time.monotonic() < deadline:
            time.sleep(0.3)

    def shutdown(self) -> None:
        """Stop the whole local cluster (Serve's replicas end with it; jobs stay in the store)."""
        import ray

        ray.shutdown()


def _wait_running(app_names: list[str], timeout_s: float) -> None:
    """Until every app runs. `timeout_s` counts from the last change of any replica's state, not from the start:
    on a loaded machine replicas start one after another, slowly but surely (Ray throttles worker start-up),
    and only a deploy that stops moving is stuck; three times `timeout_s` in all is the outer bound."""
    from ray import serve
    from ray.serve.schema import ApplicationStatus

    started = moved = time.monotonic()
    last: object = None
    while True:
        apps = serve.status().applications
        states = {n: apps[n].status if n in apps else ApplicationStatus.NOT_STARTED for n in app_names}
        failed = {n: apps[n].message for n in app_names if states[n] == ApplicationStatus.DEPLOY_FAILED}
        if failed:
            raise RuntimeError(f"Serve application failed to deploy: {failed}")
        if all(s == ApplicationStatus.RUNNING for s in states.values()):
            return
        now = time.monotonic()
        seen = {n: (states[n], {d: dict(s.replica_states) for d, s in apps[n].deployments.items()} if n in apps
                    else None) for n in app_names}
        if seen != last:
            last, moved = seen, now
        if now - moved > timeout_s or now - started > 3 * timeout_s:
            raise TimeoutError(f"Serve applications not running after {now - started:.0f}s "
                               f"({now - moved:.0f}s without a replica changing state): {states}")
        time.sleep(0.5)


RAY_START_TRIES = 3


def _init_ray(temp_dir: str, metrics_port: int, **options: Any) -> None:
    """`ray.init` of a local node in `temp_dir`. Ray waits a fixed 30 s for its raylet to register
    (ray/_private/node.py), which an overloaded machine can exceed: then the processes that attempt started
    (found by their directory) are stopped and the node is started again."""
    import psutil
    import ray

    for attempt in range(1, RAY_START_TRIES + 1):
        try:
            ray.init(address="local", **options, **init_options(temp_dir, metrics_port))
            return
        except Exception as e:  # noqa: BLE001 - Ray raises a bare Exception for this one
            if "timed out during startup" not in str(e) or attempt == RAY_START_TRIES:
                raise
            log.warning("Ray's node did not come up within its 30 s (a busy machine); starting it again "
                        "(attempt %d of %d)", attempt + 1, RAY_START_TRIES)
            ray.shutdown()
            for proc in psutil.process_iter(["cmdline"]):
                if proc.pid != os.getpid() and any(temp_dir in part for part in proc.info["cmdline"] or ()):
                    with contextlib.suppress(psutil.Error):
                        proc.kill()
    raise AssertionError("unreachable")


def start_local_cluster(*, state_dir: str | Path, grpc_port: int = 0, serve_config: str | Path = DEFAULT_SERVE_CONFIG,
                        overrides: dict[str, Any] | None = None, num_cpus: int | None = None,
                        object_store_mb: int = 512, log_to_driver: bool = False,
                        ray_temp_dir: str | None = None, rest_port: int = 0,
                        metrics_port: int = 0, deployments: dict[str, dict[str, Any]] | None = None,
                        deploy_timeout_s: float = 180.0) -> LocalCluster:
    """Start Ray on this machine only, deploy Kino, and return once the gRPC front door serves (or fail after
    `deploy_timeout_s`).

    `grpc_port=0` picks a free port. Ray's session files go to a short temporary directory
    (Unix socket paths are limited to ~107 characters).
    """
    from ray import serve
    from ray.serve.config import ProxyLocation

    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port = grpc_port or free_port()
    rest = rest_port or free_port()
    temp_dir = ray_temp_dir or tempfile.mkdtemp(prefix="kino-ray-")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; token auth is on by default in 2.60
    _init_ray(temp_dir, metrics_port or free_port(), num_cpus=num_cpus or os.cpu_count() or 2,
              include_dashboard=False, object_store_memory=object_store_mb * 2**20, log_to_driver=log_to_driver,
              configure_logging=True, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(proxy_location=ProxyLocation.Disabled)
    cluster = LocalCluster(grpc_address=f"127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{rest}/v1", state_dir=state,
                           ray_temp_dir=temp_dir)
    try:
        cluster.deploy(local_serve_config(serve_config, state_dir=state, grpc_port=port, rest_port=rest,
                                          overrides=overrides, deployments=deployments), deploy_timeout_s)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
