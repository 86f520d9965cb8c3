"""What an idle cluster costs: the CPU each process of a local Kino cluster uses with no jobs and no clients.

    python -m loadtests.bench_idle                  # 60 s after the cluster settles
    python -m loadtests.bench_idle --seconds 30 --settle 20
    python -m loadtests.bench_idle --floor          # Ray's own floor: a bare actor, a Serve replica of nothing

It starts the local cluster as `kino serve` does (the Serve config, SQLite, the tiny preset), waits
`--settle` seconds for start-up work to end, then reads every process's CPU time (user + system, from
/proc through psutil) at the start and the end of `--seconds` and prints each process's share of one
core, grouped: Kino's replicas by deployment, then Ray's own processes. Nothing is sent to the cluster.
Beside it, wake-ups a second (voluntary context switches of all its threads, /proc/PID/task/*/status):
what idle work costs depends on the machine's state (on a shared VM the same wake-up costs twice the CPU
an hour later), their count does not.
`--floor` measures what no Kino code runs in: a bare Ray actor and a Serve replica of an empty class (with
the env vars of the Serve config's runtime_env), on a local Ray node of their own.
Results: docs/benchmarks.md ("An idle cluster").
"""

from __future__ import annotations

import argparse
import contextlib
import logging
import os
import re
import tempfile
import time
from collections import defaultdict
from collections.abc import Iterator

import psutil

from serving.on_ray.cluster import DEFAULT_SERVE_CONFIG, free_port, read_serve_config, start_local_cluster


def _name(proc: psutil.Process) -> str:
    try:
        cmd = " ".join(proc.cmdline())
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    if m := re.search(r"ray::ServeReplica:[^:\s]+:(\w+)", cmd):
        return f"kino {m.group(1)}"
    if "ServeController" in cmd:
        return "ray ServeController"
    if m := re.search(r"ray::(\w+)", cmd):
        return f"ray {m.group(1)}"
    return f"ray {proc.name()}"


def _wakes(pid: int) -> int:
    """Voluntary context switches of every thread of `pid` so far (0 if it is gone)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except OSError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/status") as f:
                total += next(int(line.split()[1]) for line in f if line.startswith("voluntary_ctxt_switches"))
        except (OSError, StopIteration):
            pass
    return total


def _cpu_seconds(procs: dict[int, psutil.Process]) -> dict[int, tuple[float, int]]:
    out = {}
    for pid, p in procs.items():
        try:
            t = p.cpu_times()
            out[pid] = (t.user + t.system, _wakes(pid))
        except psutil.NoSuchProcess:
            pass
    return out


@contextlib.contextmanager
def _kino() -> Iterator[None]:
    cluster = start_local_cluster(state_dir=tempfile.mkdtemp(prefix="kino-idle-"))
    try:
        yield
    finally:
        cluster.shutdown()


class BareActor:
    def ready(self) -> bool:
        return True


class EmptyReplica:
    pass


@contextlib.contextmanager
def _floor() -> Iterator[None]:
    """A bare actor and a Serve replica of an empty class: what every Kino replica costs before its own work."""
    import ray
    from ray import serve
    from ray.serve.config import ProxyLocation

    from serving.on_ray.compat import init_options

    [app] = read_serve_config(DEFAULT_SERVE_CONFIG)["applications"]
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    ray.init(address="local", num_cpus=2, include_dashboard=False, logging_level=logging.WARNING,
             runtime_env={"env_vars": app.get("runtime_env", {}).get("env_vars", {})},
             **init_options(tempfile.mkdtemp(prefix="kino-ray-"), free_port()))
    try:
        serve.start(proxy_location=ProxyLocation.Disabled)
        serve.run(serve.deployment(EmptyReplica).bind(), name="floor", route_prefix=None)
        bare = ray.remote(BareActor).remote()
        ray.get(bare.ready.remote())
        yield
    finally:
        ray.shutdown()


def measure(seconds: float, settle: float, floor: bool = False) -> dict[str, tuple[float, float]]:
    """Share of one core (1.0 = a whole core) and wake-ups a second per process group over `seconds` of an idle
    cluster (`floor`: of a bare actor and an empty Serve replica instead)."""
    with _floor() if floor else _kino():
        time.sleep(settle)
        me = psutil.Process()
        procs = {p.pid: p for p in me.children(recursive=True)}
        procs[me.pid] = me
        before, t0 = _cpu_seconds(procs), time.monotonic()
        time.sleep(seconds)
        after, took = _cpu_seconds(procs), time.monotonic() - t0
        shares: dict[str, list[float]] = defaultdict(lambda: [0.0, 0.0])
        for pid, (used, woke) in after.items():
            if pid in before:
                name = "driver (this benchmark)" if pid == me.pid else _name(procs[pid])
                shares[name][0] += (used - before[pid][0]) / took
                shares[name][1] += (woke - before[pid][1]) / took
        return {name: (cpu, wakes) for name, (cpu, wakes) in shares.items()}


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench_idle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to measure (default 60)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds to wait after start-up (default 20)")
    ap.add_argument("--floor", action="store_true", help="a bare Ray actor and an empty Serve replica instead")
    args = ap.parse_args(argv)
    shares = measure(args.seconds, args.settle, args.floor)
    kino = {k: v for k, v in shares.items() if k.startswith("kino ")}
    ray = {k: v for k, v in shares.items() if not k.startswith("kino ")}
    what = "Ray's floor (no Kino code)" if args.floor else "idle cluster"
    print(f"{what} over {args.seconds:.0f} s: % of one core, wake-ups a second")
    for group in (kino, ray):
        for name, (share, wakes) in sorted(group.items(), key=lambda kv: -kv[1][0]):
            print(f"  {name:32s} {100 * share:6.2f} {wakes:8.1f}")
    for label, group in (("Kino replicas in all", kino), ("Ray processes in all", ray)):
        print(f"  {label:32s} {100 * sum(v[0] for v in group.values()):6.2f} {sum(v[1] for v in group.values()):8.1f}")


if __name__ == "__main__":
    main()
