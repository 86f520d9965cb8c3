"""The load-test harness against the running cluster: `kino loadtest` writes its report and plots,
and the naive baseline deployment really generates videos."""

from __future__ import annotations

import io
import json
import subprocess
import sys

import av
import PIL.Image

from loadtests.baseline import APP_NAME, BaselineTarget, app_config
from loadtests.harness import JobRecord, run
from loadtests.workload import RequestClass, load_workload
from tests.tools import ROOT

WORKLOAD = ROOT / "loadtests" / "workloads" / "smoke.yaml"


def test_kino_loadtest_writes_a_report_with_plots(cluster, tmp_path):
    report = tmp_path / "report"
    out = subprocess.run([sys.executable, "-m", "kino.cli.main", "loadtest", "--workload", str(WORKLOAD),
                          "--address", cluster.grpc_address, "--report", str(report)],
                         capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stdout + out.stderr
    data = json.loads((report / "report.json").read_text())
    workload = load_workload(WORKLOAD)
    runs = data["runs"]
    assert [r["summary"]["level"] for r in runs] == list(workload.clients)
    for r in runs:
        s = r["summary"]
        assert s["completed"] == s["submitted"] == workload.max_videos and not s["errors"]
        assert s["videos_per_min"] > 0 and 0 < s["latency"]["p50"] <= s["latency"]["p95"] <= s["latency"]["p99"]
        assert s["stages"]["denoise"]["p50"] > 0 and s["stages"]["decode"]["p50"] > 0
        assert s["slo_attainment"] == 1.0
        classes = {rec["cls"] for rec in r["records"]}
        assert classes <= {"64x64/1s/p5", "96x64/0.5s/p9"}
    for png in ("latency_cdf.png", "throughput_vs_concurrency.png", "queue_depth.png", "stage_timeline.png"):
        with PIL.Image.open(report / png) as im:
            assert im.width > 300 and im.height > 200
    md = (report / "report.md").read_text()
    assert "videos/min" in md and "![latency CDF](latency_cdf.png)" in md


def test_naive_baseline_generates_real_videos(cluster):
    from ray import serve

    cluster.deploy({"proxy_location": "Disabled", "applications": [app_config("tiny", 1.0)]})
    try:
        handle = serve.get_app_handle(APP_NAME)
        data = handle.generate.remote({"prompt": "a cat", "width": 64, "height": 64, "seconds": 1.0,
                                       "seed": 1, "steps": 3}).result(timeout_s=120)
        with av.open(io.BytesIO(data)) as c:
            assert {s.type for s in c.streams} == {"video", "audio"}
            assert sum(1 for _ in c.decode(video=0)) == 24
        record = JobRecord(cls="x", video_seconds=1.0, priority=5, submitted=0.0)
        BaselineTarget(handle).run_one(RequestClass(size="64x64", seconds=1.0, steps=3), "a dog", 2, record)
        assert record.status == "completed" and record.done > 0
        result = run(BaselineTarget(handle), load_workload(WORKLOAD), 2)
        assert len(result.completed) == 6
    finally:
        cluster.delete(APP_NAME)
