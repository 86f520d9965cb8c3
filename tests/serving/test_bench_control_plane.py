"""The control-plane benchmark's short version (`python -m loadtests.bench_control_plane --short`) on the suite's
PostgreSQL: what it must show whatever the machine's speed. No figure of speed is asserted."""

from __future__ import annotations

import json

from loadtests.bench_control_plane import GOAL_FLAT, main


def test_the_short_control_plane_benchmark_runs_every_job_once_and_counts_truly(postgres, tmp_path, capsys):
    out = tmp_path / "report.json"
    report = main(["--short", "--database-url", postgres.new_database(), "--json", str(out)])
    assert len(report.throughput) == 2 and {t.steps for t in report.throughput} == {4, 32}
    for t in report.throughput:
        assert t.completed_once, t.not_once  # completed, first claim, one terminal event stored and one pushed
        assert t.statements_per_job > 0 and t.created_per_s > 0 and t.completed_per_s > 0
    few, many = sorted(report.throughput, key=lambda t: t.steps)
    # A step travels by push only: 8x the steps, the same statements per job (the dispatchers' timed reads aside).
    assert abs(many.statements_per_job - few.statements_per_job) <= GOAL_FLAT * few.statements_per_job
    assert report.claims[0].per_s > 0 and report.latency_jobs_completed
    assert report.every_step_seen and report.push_ms[1] > 0  # every watcher got every pushed step
    assert report.idle_write_statements == 0, report.idle_writes_by_query
    printed = capsys.readouterr().out
    assert "statements per job (32 steps)" in printed and "idle write statements/min" in printed
    assert json.loads(out.read_text())["goals"]["idle_writes"] is True
