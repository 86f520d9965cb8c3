"""Build Kino's Grafana dashboard in code (grafana-foundation-sdk) and write kino-dashboard.json.

    .venv/bin/python deploy/grafana/build_dashboard.py      # regenerate after editing the panels

Every query reads the metrics Kino exports through Ray (prefix ray_kino_); a test checks the JSON
is fresh and every query is valid PromQL (promtool). GPU utilisation comes from Ray's own node
metrics, present where the nodes have GPUs.
"""

from __future__ import annotations

import json
from pathlib import Path

from grafana_foundation_sdk.builders import dashboard, prometheus, timeseries
from grafana_foundation_sdk.cog.encoder import JSONEncoder

OUT = Path(__file__).with_name("kino-dashboard.json")

# (title, unit, [(legend, PromQL)])
PANELS: list[tuple[str, str, list[tuple[str, str]]]] = [
    ("Throughput: videos finished per minute", "short", [
        ("{{status}}", 'sum by (status) (rate(ray_kino_jobs_finished_total[5m])) * 60')]),
    ("Jobs accepted per minute by tenant", "short", [
        ("{{tenant}}", 'sum by (tenant) (rate(ray_kino_jobs_created_total[5m])) * 60')]),
    ("End-to-end latency (completed jobs)", "s", [
        (f"p{q}",
         f'histogram_quantile(0.{q}, sum by (le) (rate(ray_kino_job_seconds_bucket{{status="completed"}}[5m])))')
        for q in (50, 95, 99)]),
    ("Stage latency p95", "s", [
        ("{{stage}}", 'histogram_quantile(0.95, sum by (le, stage) (rate(ray_kino_stage_seconds_bucket[5m])))')]),
    ("Stage latency p50", "s", [
        ("{{stage}}", 'histogram_quantile(0.5, sum by (le, stage) (rate(ray_kino_stage_seconds_bucket[5m])))')]),
    ("Queue depth and jobs in progress", "short", [
        ("queued", "max(ray_kino_queue_depth)"), ("in progress", "max(ray_kino_jobs_in_progress)")]),
    ("Queue wait", "s", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(ray_kino_queue_wait_seconds_bucket[5m])))")
        for q in (50, 95)]),
    ("Denoise step latency", "s", [
        (f"p{q}", f"histogram_quantile(0.{q}, sum by (le) (rate(ray_kino_denoise_step_seconds_bucket[5m])))")
        for q in (50, 95, 99)]),
    ("Denoise batch size", "short", [
        ("mean", "sum(rate(ray_kino_denoise_request_steps_total[5m]))"
                 " / sum(rate(ray_kino_denoise_step_seconds_count[5m]))"),
        ("p95", "histogram_quantile(0.95, sum by (le) (rate(ray_kino_denoise_batch_size_bucket[5m])))")]),
    ("Latent tokens per second", "short", [("tokens/s", "sum(rate(ray_kino_denoise_tokens_total[5m]))")]),
    ("Step cache: share of request-steps skipped", "percentunit", [
        ("skipped", 'sum(rate(ray_kino_denoise_cached_request_steps_total{result="skipped"}[5m]))'
                    " / sum(rate(ray_kino_denoise_cached_request_steps_total[5m]))")]),
    ("Denoise batch cap by bucket (measured)", "short", [
        ("{{bucket}}", "max by (bucket) (ray_kino_denoise_batch_cap)")]),
    ("API errors by code", "reqps", [
        ("{{protocol}} {{code}}", 'sum by (protocol, code) (rate(ray_kino_api_requests_total{code!~"OK|2.."}[5m]))')]),
    ("Artifact bytes written per second", "Bps", [("bytes/s", "sum(rate(ray_kino_artifact_bytes_total[5m]))")]),
    ("GPU utilisation", "percent", [
        ("{{instance}} gpu {{GpuIndex}}", "avg by (instance, GpuIndex) (ray_node_gpus_utilization)")]),
]


def build() -> dict:
    d = dashboard.Dashboard("Kino").uid("kino-serving").tags(["kino", "ray"]).refresh("10s").time("now-1h", "now")
    for title, unit, queries in PANELS:
        panel = timeseries.Panel().title(title).unit(unit).height(8).span(12)
        for ref, (legend, expr) in zip("ABCDEFGH", queries, strict=False):
            panel = panel.with_target(prometheus.Dataquery().expr(expr).legend_format(legend).ref_id(ref))
        d = d.with_panel(panel)
    return json.loads(JSONEncoder(sort_keys=True, indent=2).encode(d.build()))


def queries(board: dict) -> list[str]:
    return [t["expr"] for p in board["panels"] for t in p.get("targets", [])]


if __name__ == "__main__":
    OUT.write_text(json.dumps(build(), indent=2, sort_keys=True) + "\n")
    print(f"wrote {OUT} ({len(PANELS)} panels)")
