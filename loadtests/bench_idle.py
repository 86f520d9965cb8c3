"""What an idle cluster costs: the CPU each process of a local Kino cluster uses with no jobs and no clients.

    python -m loadtests.bench_idle                  # 60 s after the cluster settles
    python -m loadtests.bench_idle --seconds 30 --settle 20

It starts the local cluster as `kino serve` does (the Serve config, SQLite, the tiny preset), waits
`--settle` seconds for start-up work to end, then reads every process's CPU time (user + system, from
/proc through psutil) at the start and the end of `--seconds` and prints each process's share of one
core, grouped: Kino's replicas by deployment, then Ray's own processes. Nothing is sent to the cluster.
Results: docs/benchmarks.md ("An idle cluster").
"""

from __future__ import annotations

import argparse
import re
import tempfile
import time
from collections import defaultdict

import psutil

from serving.on_ray.cluster import start_local_cluster


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


def _cpu_seconds(procs: dict[int, psutil.Process]) -> dict[int, float]:
    out = {}
    for pid, p in procs.items():
        try:
            t = p.cpu_times()
            out[pid] = t.user + t.system
        except psutil.NoSuchProcess:
            pass
    return out


def measure(seconds: float, settle: float) -> dict[str, float]:
    """Share of one core per process group over `seconds` of an idle cluster (1.0 = a whole core)."""
    state = tempfile.mkdtemp(prefix="kino-idle-")
    cluster = start_local_cluster(state_dir=state)
    try:
        time.sleep(settle)
        me = psutil.Process()
        procs = {p.pid: p for p in me.children(recursive=True)}
        procs[me.pid] = me
        before, t0 = _cpu_seconds(procs), time.monotonic()
        time.sleep(seconds)
        after, took = _cpu_seconds(procs), time.monotonic() - t0
        shares: dict[str, float] = defaultdict(float)
        for pid, used in after.items():
            if pid in before:
                name = "driver (this benchmark)" if pid == me.pid else _name(procs[pid])
                shares[name] += (used - before[pid]) / took
        return dict(shares)
    finally:
        cluster.shutdown()


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m loadtests.bench_idle", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--seconds", type=float, default=60.0, help="how long to measure (default 60)")
    ap.add_argument("--settle", type=float, default=20.0, help="seconds to wait after start-up (default 20)")
    args = ap.parse_args(argv)
    shares = measure(args.seconds, args.settle)
    kino = {k: v for k, v in shares.items() if k.startswith("kino ")}
    ray = {k: v for k, v in shares.items() if not k.startswith("kino ")}
    print(f"idle cluster over {args.seconds:.0f} s: % of one core")
    for group in (kino, ray):
        for name, share in sorted(group.items(), key=lambda kv: -kv[1]):
            print(f"  {name:32s} {100 * share:6.2f}")
    print(f"  {'Kino replicas in all':32s} {100 * sum(kino.values()):6.2f}")
    print(f"  {'Ray processes in all':32s} {100 * sum(ray.values()):6.2f}")


if __name__ == "__main__":
    main()
