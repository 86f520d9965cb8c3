"""`kino serve`: a local Ray cluster running Kino, and `kino demo`: serve, generate one video, stop."""

from __future__ import annotations

import argparse
import json
import os
import signal
import threading
from pathlib import Path
from types import SimpleNamespace

from rich.console import Console

from kino.cli.options import add_model_options, model_mapping_from_args
from serving.on_ray.cluster import DEFAULT_SERVE_CONFIG
from training.world import EXAMPLE_PROMPT as DEMO_PROMPT


def _cluster_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", type=Path, default=DEFAULT_SERVE_CONFIG,
                   help="the Serve config file (default: deploy/serve/kino.yaml, the one Helm embeds), or the Helm "
                        "chart rendered (`helm template kino deploy/helm/kino > kino.yaml`: its serveConfigV2)")
    p.add_argument("--nodes", action="store_true",
                   help="a head and one Ray node per worker group on this machine, as the Helm chart's pods "
                        "(text-encoder, dit, decoder): each stage on its own node, latents crossing between "
                        "nodes, worker nodes never opening the job database (default: one node)")
    p.add_argument("--state-dir", type=Path, default=Path("var/kino"),
                   help="job database and artifacts live here; a restart resumes its jobs (default: var/kino)")
    p.add_argument("--max-batch-size", type=int, help="denoising requests per forward (1 turns batching off)")
    p.add_argument("--ray-temp-dir", help="Ray's session directory (default: a new one under /tmp; keep it short)")
    add_model_options(p)


def register(sub: argparse._SubParsersAction) -> None:
    s = sub.add_parser("serve", help="start a local cluster and serve the gRPC API",
                       description="Start Ray on this machine, deploy Kino from the Serve config file and serve "
                                   "gRPC on loopback until interrupted (Ctrl-C). Jobs survive a restart.")
    s.add_argument("--grpc-port", type=int, default=50051, help="0 picks a free port (default 50051)")
    s.add_argument("--rest-port", type=int, default=8080,
                   help="the OpenAI-compatible REST API; 0 picks a free port (default 8080)")
    s.add_argument("--metrics-port", type=int, default=0,
                   help="Prometheus /metrics of the node (Ray's and Kino's); 0 picks a free port")
    s.add_argument("--address-file", type=Path, help="write host:port here once serving (for scripts)")
    _cluster_options(s)
    s.set_defaults(func=serve_forever)

    d = sub.add_parser("demo", help="start a local cluster, generate one video over gRPC, stop",
                       description="The main job in one command: a local cluster on the chosen model, one video "
                                   "with audio generated through the gRPC API with a progress bar, then a clean "
                                   "shutdown.")
    d.add_argument("prompt", nargs="?", default=DEMO_PROMPT,
                   help=f"what the video shows and sounds like (default: {DEMO_PROMPT!r}; the demo model knows red, "
                        "green, blue or yellow balls or squares bouncing or sliding left or right on a dark or "
                        "light floor)")
    d.add_argument("-o", "--output", type=Path, default=Path("out/demo.mp4"), help="default: out/demo.mp4")
    d.add_argument("--seconds", type=float, help="duration in seconds (default: the model's, 17/24 s for demo)")
    d.add_argument("--seed", type=int, default=7, help="noise seed: the same seed gives the same video (default 7)")
    _cluster_options(d)
    # The trained demo model, not tiny's random weights: a video that shows what the prompt asks for.
    d.set_defaults(func=demo, preset="demo")


def _start(args: argparse.Namespace, grpc_port: int, rest_port: int = 0, metrics_port: int = 0):
    from serving.on_ray.cluster import start_local_cluster

    overrides: dict = {"model": model_mapping_from_args(args)}
    if args.max_batch_size is not None:
        overrides["batching"] = {"max_batch_size": args.max_batch_size,
                                 "max_running": max(32, args.max_batch_size)}
    # A Denoiser over several ranks places its followers beside it, each with the replica's CPU share:
    # count one logical CPU more per follower (Ray's CPUs are bookkeeping here; the cores are shared).
    followers = (args.cfg_parallel or 1) * (args.ulysses or 1) - 1
    return start_local_cluster(state_dir=args.state_dir, grpc_port=grpc_port, serve_config=args.config,
                               overrides=overrides, ray_temp_dir=args.ray_temp_dir, rest_port=rest_port,
                               metrics_port=metrics_port, num_cpus=(os.cpu_count() or 2) + followers,
                               nodes=args.nodes)


def serve_forever(args: argparse.Namespace) -> int:
    console = Console()
    with console.status("starting Ray and deploying Kino (first start takes ~20 s)"):
        cluster = _start(args, args.grpc_port, args.rest_port, args.metrics_port)
    console.print(f"Kino serving gRPC on [bold]{cluster.grpc_address}[/bold] "
                  f"(state in {cluster.state_dir}); Ctrl-C stops it")
    console.print(f"  REST (OpenAI-compatible): {cluster.rest_url}   metrics: {cluster.metrics_url}")
    console.print(f"  export KINO_ADDRESS={cluster.grpc_address}; kino generate \"a cat playing piano\" -o cat.mp4")
    if cluster.nodes is not None:
        placement = sorted(cluster.placement().items())
        where = ", ".join(f"{d} on {'/'.join(sorted(set(groups)))}" for d, groups in placement)
        console.print(f"  nodes: {where}")
    if args.address_file:
        args.address_file.write_text(cluster.grpc_address)
        args.address_file.with_suffix(".json").write_text(json.dumps(
            {"grpc": cluster.grpc_address, "rest": cluster.rest_url, "metrics": cluster.metrics_url}))
    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    stop.wait()
    console.print("stopping")
    cluster.shutdown()
    return 0


def demo(args: argparse.Namespace) -> int:
    from kino.cli.videos_cmd import generate

    console = Console()
    with console.status(f"starting a local cluster (Ray + Serve + gRPC) on the {args.preset} model"):
        cluster = _start(args, 0)
    console.print(f"cluster up; gRPC on {cluster.grpc_address}")
    try:
        args.output.parent.mkdir(parents=True, exist_ok=True)
        request = SimpleNamespace(prompt=args.prompt, negative_prompt=None, size=None, fps=None,
                                  seconds=args.seconds, seed=args.seed, steps=None, guidance_scale=None,
                                  audio_guidance_scale=None, priority=None, idempotency_key=None,
                                  output=args.output, address=cluster.grpc_address, api_key=None)
        return generate(request)
    finally:
        with console.status("shutting the cluster down"):
            cluster.shutdown()
        console.print("cluster stopped")
