"""A local Ray cluster running the Kino application from the Serve config file.

`kino serve`, `make demo` and the integration tests use this. It deploys the config the way
KubeRay does (the Serve controller applies the same ServeDeploySchema), with local overrides:
loopback gRPC on a chosen port, storage under a state directory, no HTTP proxy.

One node by default, holding every node group's resource; with `nodes=True` (`kino serve --nodes`) a head and
one node per worker group (Ray's multi-node harness, `ray.cluster_utils.Cluster`, as Ray Serve's own
node-failure tests run it), each advertising its group's resource as the Helm chart's pods do, so the Serve
config's placement is the chart's. `LocalNodes` removes and adds worker nodes as KubeRay replaces a pod.
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

from serving.db import NODE_GROUP_ENV
from serving.on_ray.compat import deploy_apps, init_options

log = logging.getLogger(__name__)

DEFAULT_SERVE_CONFIG = Path(__file__).resolve().parents[2] / "deploy" / "serve" / "kino.yaml"
APP_NAME = "kino"
NODE_GROUPS: dict[str, str] = {"head": "kino_head", "text-encoder": "kino_text_encoder", "dit": "kino_dit",
                               "decoder": "kino_decoder"}
"""Node group -> the custom resource its nodes advertise (the chart's groups, its templates/rayservice.yaml); each
deployment of the Serve config asks for one unit of its group's."""
GROUP_UNITS = 1000  # what a node advertises of its group's resource: replicas are bounded by CPUs, not by this


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


def read_serve_config(path: str | Path) -> dict[str, Any]:
    """A Serve config file, or the serveConfigV2 of the RayService in a rendered chart."""
    with open(path) as f:
        docs = [d for d in yaml.safe_load_all(f) if d]
    for d in docs:
        if d.get("kind") == "RayService":
            return yaml.safe_load(d["spec"]["serveConfigV2"])
    if len(docs) != 1 or "applications" not in docs[0]:
        raise ValueError(f"{path}: neither a Serve config (one document with `applications`) nor a rendered chart "
                         "with a RayService")
    return docs[0]


def local_serve_config(path: str | Path = DEFAULT_SERVE_CONFIG, *, state_dir: str | Path, grpc_port: int,
                       rest_port: int | None = None, app_name: str = APP_NAME,
                       overrides: dict[str, Any] | None = None,
                       deployments: dict[str, dict[str, Any]] | None = None) -> dict[str, Any]:
    """The Serve config file with local settings applied (returns a plain mapping). `path` may also be the Helm
    chart rendered (`helm template kino deploy/helm/kino > kino.yaml`): its RayService's serveConfigV2 is used."""
    doc = read_serve_config(path)
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
        d.update(_deep_merge(d, change))  # ray_actor_options merge: a changed num_cpus keeps the node group
    doc["applications"] = [app]
    doc["proxy_location"] = "Disabled"  # clients speak gRPC to the Frontend; Serve's HTTP proxy is unused here
    return doc


def _group_of(resources: dict[str, float]) -> str:
    """The node group a node serves, by the resources it advertises (a one-node cluster's node: `all`)."""
    groups = [g for g, r in NODE_GROUPS.items() if resources.get(r, 0) > 0]
    return groups[0] if len(groups) == 1 else "all"


@dataclass
class LocalNodes:
    """A head and one node per worker group on this machine (`ray.cluster_utils.Cluster`). Worker nodes run with
    `KINO_NODE_GROUP` set, so a replica there that opened the job database would fail to start
    (serving/db.py)."""

    harness: Any  # ray.cluster_utils.Cluster
    node_options: dict[str, Any]
    workers: dict[str, Any] = field(default_factory=dict)  # group -> its node now (the harness's Node)

    @classmethod
    def start(cls, *, num_cpus: int, object_store_mb: int, temp_dir: str, metrics_port: int) -> LocalNodes:
        from ray.cluster_utils import Cluster

        Path("/tmp/ray").mkdir(exist_ok=True)  # the harness writes the cluster's address there
        options = {"num_cpus": num_cpus, "object_store_memory": object_store_mb * 2**20, "include_dashboard": False}
        harness = Cluster(initialize_head=True, head_node_args={
            **options, "resources": {NODE_GROUPS["head"]: GROUP_UNITS}, "temp_dir": temp_dir,
            "metrics_export_port": metrics_port, "env_vars": {NODE_GROUP_ENV: "head"}})
        nodes = cls(harness, options)
        for group in NODE_GROUPS:
            if group != "head":
                nodes.add(group)
        return nodes

    def add(self, group: str) -> None:
        """Start a node of `group` (a fresh one, as KubeRay starts a pod for a lost one)."""
        self.workers[group] = self.harness.add_node(**self.node_options, resources={NODE_GROUPS[group]: GROUP_UNITS},
                                                    metrics_export_port=free_port(),
                                                    env_vars={NODE_GROUP_ENV: group})

    def remove(self, group: str) -> None:
        """Kill `group`'s node at once, every process on it (a lost machine: nothing shuts down gracefully)."""
        self.harness.remove_node(self.workers.pop(group), allow_graceful=False)

    def replace(self, group: str) -> None:
        self.remove(group)
        self.add(group)

    def shutdown(self) -> None:
        self.harness.shutdown()


@dataclass
class LocalCluster:
    """A running local cluster; `grpc_address` is where clients connect."""

    grpc_address: str
    rest_url: str
    state_dir: Path
    ray_temp_dir: str
    nodes: LocalNodes | None = None  # several nodes (`start_local_cluster(nodes=True)`), else one
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
        import ray
        from ray.serve.schema import ServeDeploySchema

        if not ray.is_initialized():  # else Ray would start a bare local instance and deploy there
            raise RuntimeError("this local cluster has been shut down")
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

    def placement(self, app_name: str = APP_NAME) -> dict[str, list[str]]:
        """Deployment -> the node group of each of its live replicas (`all` on a one-node cluster)."""
        import ray

        from serving.on_ray.compat import live_replica_nodes

        group = {n["NodeID"]: _group_of(n["Resources"]) for n in ray.nodes() if n["Alive"]}
        return {d: sorted(group.get(node, "gone") for node in nodes)
                for d, nodes in live_replica_nodes(app_name).items()}

    def shutdown(self) -> None:
        """Stop the whole local cluster (Serve's replicas end with it; jobs stay in the store)."""
        import ray

        ray.shutdown()
        if self.nodes is not None:
            self.nodes.shutdown()


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
                        deploy_timeout_s: float = 180.0, nodes: bool = False) -> LocalCluster:
    """Start Ray on this machine only, deploy Kino, and return once the gRPC front door serves (or fail after
    `deploy_timeout_s`).

    `grpc_port=0` picks a free port. Ray's session files go to a short temporary directory
    (Unix socket paths are limited to ~107 characters). `nodes`: a head and one node per worker group
    (`LocalNodes`, each with `num_cpus` and `object_store_mb`), else one node with every group's resource.
    """
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    state = Path(state_dir).resolve()
    state.mkdir(parents=True, exist_ok=True)
    port = grpc_port or free_port()
    rest = rest_port or free_port()
    temp_dir = ray_temp_dir or tempfile.mkdtemp(prefix="kino-ray-")
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")  # loopback only; token auth is on by default in 2.60
    cpus = num_cpus or os.cpu_count() or 2
    several = None
    if nodes:
        several = LocalNodes.start(num_cpus=cpus, object_store_mb=object_store_mb, temp_dir=temp_dir,
                                   metrics_port=metrics_port or free_port())
        ray.init(address=several.harness.address, log_to_driver=log_to_driver, configure_logging=True,
                 logging_level=logging.WARNING)
    else:
        _init_ray(temp_dir, metrics_port or free_port(), num_cpus=cpus, include_dashboard=False,
                  resources={r: GROUP_UNITS for r in NODE_GROUPS.values()}, object_store_memory=object_store_mb * 2**20,
                  log_to_driver=log_to_driver, configure_logging=True, logging_level=logging.WARNING)
    logging.getLogger("ray.serve").setLevel(logging.WARNING)
    serve.start(proxy_location=ProxyLocation.Disabled)
    cluster = LocalCluster(grpc_address=f"127.0.0.1:{port}", rest_url=f"http://127.0.0.1:{rest}/v1", state_dir=state,
                           ray_temp_dir=temp_dir, nodes=several)
    try:
        cluster.deploy(local_serve_config(serve_config, state_dir=state, grpc_port=port, rest_port=rest,
                                          overrides=overrides, deployments=deployments), deploy_timeout_s)
    except BaseException:
        cluster.shutdown()
        raise
    return cluster
