"""Scheduling beyond FIFO batches, measured on a local cluster.

    python -m loadtests.bench_scheduling

1. Preemption: a saturating low-priority load (closed loop) while one client sends
   high-priority videos; p95 of the high-priority videos with `policy: priority` (the denoiser
   runs higher priority first, pausing others between steps) against `policy: fifo`.
2. Mixed shapes: a closed-loop mix of three sizes; throughput and p95 per size with buckets
   following the oldest request against buckets taking turns (`rotate_buckets`).

Each configuration is deployed fresh on the same cluster and measured in the same run.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time

from loadtests.harness import JobRecord, KinoTarget, run
from loadtests.workload import RequestClass, Workload
from serving.on_ray.cluster import free_port, local_serve_config, start_local_cluster


def deploy(cluster, name: str, batching: dict, preset: str) -> str:
    port = free_port()
    cluster.deploy(local_serve_config(state_dir=tempfile.mkdtemp(prefix="kino-sched-"), grpc_port=port, app_name=name,
                                      overrides={"model": {"preset": preset},
                                                 "batching": {"max_running": 32, **batching}}))
    return f"127.0.0.1:{port}"


def p(values: list[float], q: float) -> float:
    values = sorted(values)
    return values[min(len(values) - 1, int(q * len(values)))] if values else float("nan")


def preemption(address: str, seconds: float, low_clients: int, low: RequestClass,
               high: RequestClass) -> dict[str, list[float]]:
    target = KinoTarget(address)
    stop = time.monotonic() + seconds
    lat: dict[str, list[float]] = {"low": [], "high": []}

    def loop(cls: RequestClass, key: str, pause: float) -> None:
        n = 0
        while time.monotonic() < stop:
            rec = JobRecord(cls=key, video_seconds=cls.seconds, priority=cls.priority, submitted=time.time())
            target.run_one(cls, f"{key} {n}", n, rec)
            if rec.status == "completed":
                lat[key].append(rec.latency)
            n += 1
            time.sleep(pause)

    threads = [threading.Thread(target=loop, args=(low, "low", 0.0)) for _ in range(low_clients)]
    for th in threads:
        th.start()
    time.sleep(3.0)  # let the low-priority load saturate the denoiser first
    loop(high, "high", 0.5)
    for th in threads:
        th.join()
    target.close()
    return lat


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--seconds", type=float, default=60.0, help="length of each preemption run")
    args = ap.parse_args()
    cluster = start_local_cluster(state_dir=tempfile.mkdtemp(prefix="kino-sched-"), num_cpus=4)
    cluster.delete("kino")
    try:
        print("## Scheduling benchmark (`python -m loadtests.bench_scheduling`)\n")
        low = RequestClass(size="128x128", seconds=1.0, priority=1, steps=30)
        high = RequestClass(size="128x128", seconds=1.0, priority=9, steps=30)
        print(f"### Preemption: 12 low-priority clients saturating, 1 high-priority client; {low.size}, "
              f"{low.steps} steps, max_batch_size 4, {args.seconds:.0f} s per policy\n")
        print("| policy | high-priority videos | high p50 s | high p95 s | low videos | low p95 s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for policy in ("priority", "fifo"):
            name = f"sched-{policy}"
            address = deploy(cluster, name, {"max_batch_size": 4, "policy": policy}, args.preset)
            lat = preemption(address, args.seconds, 12, low, high)
            print(f"| {policy} | {len(lat['high'])} | {statistics.median(lat['high']):.2f} | "
                  f"{p(lat['high'], 0.95):.2f} | {len(lat['low'])} | {p(lat['low'], 0.95):.2f} |", flush=True)
            cluster.delete(name)

        mix = (RequestClass(size="64x64", seconds=1.0, weight=2, steps=20),
               RequestClass(size="128x128", seconds=1.0, weight=1, steps=20),
               RequestClass(size="192x192", seconds=1.0, weight=1, steps=20))
        workload = Workload(name="mixed-shapes", mix=mix, clients=(8,), max_videos=48, max_seconds=300)
        print("\n### Mixed shapes: 8 clients, 64x64 (2 parts), 128x128 and 192x192 (1 part each), 20 steps, "
              "max_batch_size 8\n")
        print("| buckets | videos/min | p95 s | p95 64x64 | p95 128x128 | p95 192x192 | mean batch |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
        for rotate in (False, True):
            name = f"sched-rotate-{int(rotate)}"
            address = deploy(cluster, name, {"max_batch_size": 8, "rotate_buckets": rotate}, args.preset)
            target = KinoTarget(address)
            run(target, Workload(name="warm", mix=mix, clients=(1,), max_videos=3, max_seconds=60), 1)
            result = run(target, workload, 8)
            target.close()
            s = result.summary(60)
            per = {c.size: p([r.latency for r in result.completed if r.cls.startswith(c.size)], 0.95) for c in mix}
            print(f"| {'take turns' if rotate else 'follow the oldest'} | {s['videos_per_min']:.1f} | "
                  f"{s['latency']['p95']:.2f} | {per['64x64']:.2f} | {per['128x128']:.2f} | {per['192x192']:.2f} | "
                  f"{s['batch_size']['mean']:.2f} |", flush=True)
            cluster.delete(name)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
