"""Load-test reports: summary tables (markdown + JSON), ratios against the baseline, PNG plots."""

from __future__ import annotations

import json
from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt  # noqa: E402

from loadtests.harness import RunResult, as_json  # noqa: E402
from loadtests.workload import Workload  # noqa: E402

STAGES = ("queue", "encode", "denoise", "decode")


def _level(workload: Workload, level: float) -> str:
    return f"{int(level)} clients" if workload.mode == "closed" else f"{level:g}/s"


def summary_table(workload: Workload, results: list[RunResult]) -> str:
    slo = workload.slo_latency_seconds
    lines = ["| target | load | done | videos/min | video-s/min | p50 s | p95 s | p99 s | queue p95 s | "
             "denoise p95 s | decode p95 s | mean batch | SLO met | errors |",
             "| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |"]
    for r in results:
        s = r.summary(slo)
        st = s["stages"]
        errors = ", ".join(f"{k}: {v}" for k, v in s["errors"].items()) or "-"
        lines.append(
            f"| {r.target} | {_level(workload, r.level)} | {s['completed']}/{s['submitted']} | "
            f"{s['videos_per_min']:.1f} | {s['video_seconds_per_min']:.1f} | {s['latency']['p50']:.2f} | "
            f"{s['latency']['p95']:.2f} | {s['latency']['p99']:.2f} | {st['queue']['p95']:.2f} | "
            f"{st['denoise']['p95']:.2f} | {st['decode']['p95']:.2f} | {s['batch_size']['mean']:.2f} | "
            f"{s['slo_attainment']:.0%} | {errors} |")
    return "\n".join(lines)


def ratio_table(workload: Workload, kino: list[RunResult], baseline: list[RunResult]) -> str:
    """Rows like `16 clients | ... | 1.8x`: Kino's throughput and p95 against the baseline's."""
    slo = workload.slo_latency_seconds
    lines = ["| load | Kino videos/min | baseline videos/min | throughput ratio | Kino p95 s | baseline p95 s | "
             "p95 ratio (lower is better) |", "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for k, b in zip(kino, baseline, strict=True):
        ks, bs = k.summary(slo), b.summary(slo)
        tr = ks["videos_per_min"] / bs["videos_per_min"] if bs["videos_per_min"] else float("inf")
        pr = ks["latency"]["p95"] / bs["latency"]["p95"] if bs["latency"]["p95"] else float("inf")
        lines.append(f"| {_level(workload, k.level)} | {ks['videos_per_min']:.1f} | {bs['videos_per_min']:.1f} | "
                     f"{tr:.2f}x | {ks['latency']['p95']:.2f} | {bs['latency']['p95']:.2f} | {pr:.2f}x |")
    return "\n".join(lines)


def plot_latency_cdf(results: list[RunResult], workload: Workload, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for r in results:
        lat = sorted(x.latency for x in r.completed)
        if lat:
            ax.step(lat, [(i + 1) / len(lat) for i in range(len(lat))], where="post",
                    label=f"{r.target}, {_level(workload, r.level)}")
    ax.axvline(workload.slo_latency_seconds, color="grey", linestyle="--", linewidth=1, label="SLO")
    ax.set(xlabel="end-to-end latency (s)", ylabel="fraction of videos", title=f"Latency CDF: {workload.name}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_throughput(results: list[RunResult], workload: Workload, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(6, 4))
    for target in dict.fromkeys(r.target for r in results):
        runs = [r for r in results if r.target == target]
        ax.plot([r.level for r in runs], [r.summary(workload.slo_latency_seconds)["videos_per_min"] for r in runs],
                marker="o", label=target)
    ax.set(xlabel="concurrent clients" if workload.mode == "closed" else "arrivals per second",
           ylabel="videos per minute", title=f"Throughput: {workload.name}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_queue_depth(results: list[RunResult], workload: Workload, path: Path) -> None:
    fig, ax = plt.subplots(figsize=(7, 4))
    for r in results:
        if r.samples:
            ax.plot([s[0] for s in r.samples], [s[2] for s in r.samples],
                    label=f"{r.target}, {_level(workload, r.level)}")
    ax.set(xlabel="seconds into the run", ylabel="videos waiting to start", title="Queue depth over time")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def plot_stage_timeline(result: RunResult, path: Path) -> None:
    """How many videos are in each stage over a run: where the time goes, and which stage starves."""
    done = [r for r in result.completed if None not in (r.started, r.first_step, r.decoding)]
    if not done:
        return
    t0 = min(r.submitted for r in done)
    t1 = max(r.done for r in done)
    steps = 400
    grid = [t0 + (t1 - t0) * i / steps for i in range(steps + 1)]
    spans = {"queue": lambda r: (r.submitted, r.started), "encode": lambda r: (r.started, r.first_step),
             "denoise": lambda r: (r.first_step, r.decoding), "decode": lambda r: (r.decoding, r.done)}
    fig, ax = plt.subplots(figsize=(8, 4))
    for name, span in spans.items():
        ax.plot([t - t0 for t in grid], [sum(1 for r in done if span(r)[0] <= t < span(r)[1]) for t in grid],
                label=name)
    ax.set(xlabel="seconds", ylabel="videos in stage", title=f"Stage occupancy: {result.target}, "
                                                             f"load {result.level:g}")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def write_report(directory: Path, workload: Workload, kino: list[RunResult],
                 baseline: list[RunResult] | None = None) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    everything = kino + (baseline or [])
    slo = workload.slo_latency_seconds
    plot_latency_cdf(everything, workload, directory / "latency_cdf.png")
    plot_throughput(everything, workload, directory / "throughput_vs_concurrency.png")
    plot_queue_depth(kino, workload, directory / "queue_depth.png")
    if kino:
        plot_stage_timeline(max(kino, key=lambda r: r.level), directory / "stage_timeline.png")
    (directory / "report.json").write_text(json.dumps(
        {"workload": workload.name, "slo_latency_seconds": slo, "runs": [as_json(r, slo) for r in everything]},
        indent=1, default=str))
    md = [f"# Load test: {workload.name}", "",
          f"{workload.mode} loop, up to {workload.max_videos} videos or {workload.max_seconds:g} s per run; "
          f"SLO: done within {slo:g} s.", "", summary_table(workload, everything), ""]
    if baseline:
        md += ["## Kino against the naive baseline", "", ratio_table(workload, kino, baseline), ""]
    md += ["![latency CDF](latency_cdf.png)", "![throughput](throughput_vs_concurrency.png)",
           "![queue depth](queue_depth.png)", "![stage occupancy](stage_timeline.png)", ""]
    path = directory / "report.md"
    path.write_text("\n".join(md))
    return path
