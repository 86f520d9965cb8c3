"""Serving benchmark: the cost of the cluster for one client, and throughput with and without batching.

    python -m loadtests.bench_serving                  # tiny and small
    python -m loadtests.bench_serving --presets tiny   # quicker

For each preset it (1) times one generation in this process through the engines alone, (2)
starts a local cluster with step batching on, times the same generation end to end over gRPC
(create, watch to completion, download) and measures closed-loop throughput at 1, 4 and 16
concurrent clients, then (3) redeploys with `max_batch_size: 1` and measures again. Every
ratio compares numbers taken in the same run. Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from kino.client import KinoClient
from kino_api.v1 import video_service_pb2 as pb
from serving.on_ray.cluster import LocalCluster, free_port, local_serve_config, start_local_cluster

SIZES = {"tiny": ("64x64", 1.0), "small": ("256x256", 33 / 24)}


@dataclass
class Throughput:
    clients: int
    videos: int
    seconds: float
    p50: float
    p95: float

    @property
    def per_minute(self) -> float:
        return 60 * self.videos / self.seconds


def one_video(client: KinoClient, req: pb.CreateVideoRequest, out: Path) -> float:
    t = time.perf_counter()
    video = client.create(req)
    for ev in client.watch(video.id):
        if ev.terminal:
            break
    client.download(video.id, out)
    return time.perf_counter() - t


def closed_loop(address: str, preset: str, clients: int, per_client: int, tmp: Path) -> Throughput:
    size, seconds = SIZES[preset]
    latencies: list[float] = []
    lock = threading.Lock()

    def worker(k: int) -> None:
        with KinoClient(address) as client:
            for j in range(per_client):
                req = pb.CreateVideoRequest(prompt=f"client {k} video {j}", size=size, seconds=seconds,
                                            seed=1000 * k + j)
                took = one_video(client, req, tmp / f"c{k}-{j}.mp4")
                with lock:
                    latencies.append(took)

    threads = [threading.Thread(target=worker, args=(k,)) for k in range(clients)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    took = time.perf_counter() - t
    latencies.sort()
    return Throughput(clients, len(latencies), took, statistics.median(latencies),
                      latencies[min(len(latencies) - 1, int(0.95 * len(latencies)))])


def deploy(cluster: LocalCluster, name: str, preset: str, batch: int, state: Path) -> str:
    port = free_port()
    cluster.deploy(local_serve_config(state_dir=state / name, grpc_port=port, app_name=name,
                                      overrides={"model": {"preset": preset},
                                                 "batching": {"max_batch_size": batch, "max_running": 32}}))
    return f"127.0.0.1:{port}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--clients", default="1,4,16")
    ap.add_argument("--videos-per-client", type=int, default=0, help="default: 12 for 1 client, else 2 (tiny: x3)")
    ap.add_argument("--repeats", type=int, default=5, help="single-client latency repeats")
    args = ap.parse_args()
    presets = args.presets.split(",")
    levels = [int(x) for x in args.clients.split(",")]
    tmp = Path(tempfile.mkdtemp(prefix="kino-bench-serving-"))

    from engines.config import preset as model_preset
    from engines.params import GenerationRequest
    from engines.staged_pipeline import StagedPipeline

    print("## Serving benchmark (`python -m loadtests.bench_serving`)\n")
    cluster = start_local_cluster(state_dir=tmp / "base")
    cluster.delete("kino")  # the default app; each measurement deploys its own
    try:
        for preset in presets:
            size, seconds = SIZES[preset]
            w, h = (int(x) for x in size.split("x"))
            pipe = StagedPipeline(model_preset(preset))
            params = GenerationRequest(prompt="a robot dancing on the beach", seed=1, width=w, height=h,
                                      seconds=seconds)
            pipe.generate(params, tmp / "warm.mp4")
            local = []
            for _ in range(args.repeats):
                t = time.perf_counter()
                pipe.generate(params, tmp / "local.mp4")
                local.append(time.perf_counter() - t)
            del pipe

            results: dict[str, list[Throughput]] = {}
            e2e: list[float] = []
            for mode, batch in (("batching on", 8), ("batching off", 1)):
                name = f"bench-{preset}-{batch}"
                address = deploy(cluster, name, preset, batch, tmp)
                with KinoClient(address) as client:
                    req = pb.CreateVideoRequest(prompt="a robot dancing on the beach", size=size, seconds=seconds,
                                                seed=1)
                    one_video(client, req, tmp / "warm-e2e.mp4")
                    if batch == 8:
                        e2e = [one_video(client, req, tmp / "e2e.mp4") for _ in range(args.repeats)]
                results[mode] = []
                for n in levels:
                    per = args.videos_per_client or ((12 if n == 1 else 2) * (3 if preset == "tiny" else 1))
                    results[mode].append(closed_loop(address, preset, n, per, tmp))
                cluster.delete(name)

            lm, em = statistics.median(local), statistics.median(e2e)
            print(f"### {preset}: {size}, {seconds:.3g} s, default steps\n")
            print(f"- one client: in-process engines {lm * 1000:.0f} ms, end to end over gRPC {em * 1000:.0f} ms "
                  f"(create + watch + download): **{em / lm:.2f}x** the engines alone\n")
            print("| clients | batching on: videos/min | p50 / p95 s | batching off: videos/min | p50 / p95 s "
                  "| on / off |")
            print("| ---: | ---: | ---: | ---: | ---: | ---: |")
            for on, off in zip(results["batching on"], results["batching off"], strict=True):
                print(f"| {on.clients} | {on.per_minute:.1f} | {on.p50:.2f} / {on.p95:.2f} | {off.per_minute:.1f} "
                      f"| {off.p50:.2f} / {off.p95:.2f} | {on.per_minute / off.per_minute:.2f}x |")
            print(flush=True)
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
