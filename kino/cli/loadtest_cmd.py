"""`kino loadtest`: drive Kino (and, side by side, the naive baseline) with a workload; write a report."""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from engines.config import PRESETS
from kino.cli.videos_cmd import DEFAULT_ADDRESS


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "loadtest", help="load-test Kino with a workload (optionally beside the naive baseline) and write a report",
        description="Run a workload (closed loop: N clients; open loop: Poisson arrivals) against Kino and write a "
                    "report: throughput, latency percentiles end to end and per stage, queue time, batch sizes, "
                    "errors, SLO attainment, PNG plots. Without --address it starts its own local cluster; with "
                    "--baseline it also runs the diffusers pipeline per request in one Serve deployment and prints "
                    "the ratios. Every run stops by itself after the workload's max_videos or max_seconds.")
    p.add_argument("--workload", type=Path, required=True, help="a workload YAML (see loadtests/workloads/)")
    p.add_argument("--report", type=Path, default=Path("out/loadtest"), help="report directory (default out/loadtest)")
    p.add_argument("--address", help=f"an already running Kino (e.g. {DEFAULT_ADDRESS}); default: start one here")
    p.add_argument("--api-key", help="API key for --address")
    p.add_argument("--preset", default="tiny", choices=list(PRESETS), help="model of the local cluster")
    p.add_argument("--max-batch-size", type=int, help="Kino's denoising batch size (local cluster)")
    p.add_argument("--max-running", type=int,
                   help="requests denoising at once per replica (local cluster; default: --max-batch-size)")
    p.add_argument("--replicas", action="append", default=[], metavar="STAGE=N", type=_replicas,
                   help="a fixed replica count for a stage instead of autoscaling, e.g. Denoiser=2 (repeatable; "
                        "local cluster)")
    p.add_argument("--baseline", action="store_true", help="also run the naive baseline (local cluster only)")
    p.add_argument("--baseline-threads", type=int, metavar="N",
                   help="torch threads of the baseline replica (default: torch's own choice, as a user gets it)")
    p.add_argument("--baseline-replicas", type=_at_least_one, default=1, metavar="N",
                   help="replicas of the baseline deployment (default 1, as a user starts it)")
    p.set_defaults(func=loadtest)


def _at_least_one(text: str) -> int:
    if not text.isdigit() or int(text) < 1:
        raise argparse.ArgumentTypeError(f"expected an integer >= 1, got {text!r}")
    return int(text)


def _replicas(text: str) -> tuple[str, int]:
    stage, _, n = text.partition("=")
    if stage not in ("Frontend", "TextEncoder", "Denoiser", "Decoder") or not n.isdigit() or int(n) < 1:
        raise argparse.ArgumentTypeError(f"expected STAGE=N with STAGE one of TextEncoder, Denoiser, Decoder and "
                                         f"N >= 1, got {text!r}")
    return stage, int(n)


def loadtest(args: argparse.Namespace) -> int:
    from loadtests import harness
    from loadtests.report import ratio_table, summary_table, write_report
    from loadtests.workload import load_workload

    console = Console()
    workload = load_workload(args.workload)
    if args.baseline and args.address:
        console.print("[red]--baseline needs the local cluster: leave out --address[/red]")
        return 2
    cluster = None
    if args.address:
        address = args.address
    else:
        from serving.on_ray.cluster import start_local_cluster

        overrides = {"model": {"preset": args.preset}, "queue": {"max_queued": 1024}}
        if args.max_batch_size:
            overrides["batching"] = {"max_batch_size": args.max_batch_size,
                                     "max_running": args.max_running or args.max_batch_size}
        with console.status(f"starting a local cluster ({args.preset} model)"):
            # Logical CPUs: Kino's replicas and the baseline's stay deployed side by side (idle ones cost no CPU).
            deployments = {stage: {"num_replicas": n} for stage, n in args.replicas} or None
            cluster = start_local_cluster(state_dir=tempfile.mkdtemp(prefix="kino-loadtest-"), overrides=overrides,
                                          num_cpus=6, deployments=deployments)
        address = cluster.grpc_address
    targets = [harness.KinoTarget(address, api_key=args.api_key)]
    try:
        if args.baseline:
            from ray import serve

            from loadtests.baseline import APP_NAME, BaselineTarget, app_config

            with console.status("deploying the naive baseline"):
                app = app_config(args.preset, 2.0, args.baseline_threads, args.baseline_replicas)
                cluster.deploy({"proxy_location": "Disabled", "applications": [app]})
            targets.append(BaselineTarget(serve.get_app_handle(APP_NAME)))
        results: dict[str, list] = {t.name: [] for t in targets}
        for target in targets:  # one warm-up request each: first calls pay one-off costs
            harness.run(target, _warmup(workload), 1)
        for level in workload.levels:
            for target in targets:  # alternate targets per level so drift affects both alike
                results[target.name].append(_run(console, harness, target, workload, level))
        kino = results["kino"]
        baseline = results.get("naive baseline")
        report = write_report(args.report, workload, kino, baseline)
        console.print(summary_table(workload, kino + (baseline or [])))
        if baseline:
            console.print("\n" + ratio_table(workload, kino, baseline))
        console.print(f"\nreport: [bold]{report.resolve()}[/bold]")
        return 0
    finally:
        for t in targets:
            t.close()
        if cluster is not None:
            cluster.shutdown()


def _warmup(workload):
    from dataclasses import replace

    return replace(workload, max_videos=1, mode="closed", clients=(1,))


def _run(console: Console, harness, target, workload, level):
    label = f"{target.name}: {int(level)} clients" if workload.mode == "closed" else f"{target.name}: {level:g}/s"
    with Progress(TextColumn(f"[bold]{label:<28}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
                  console=console) as bar:
        task = bar.add_task("run", total=workload.max_videos)
        return harness.run(target, workload, level, on_done=lambda _r: bar.advance(task))
