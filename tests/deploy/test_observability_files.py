"""Prometheus rules (promtool check + unit tests) and the Grafana dashboard (fresh, valid PromQL)."""

from __future__ import annotations

import importlib.util
import json
import subprocess

import yaml

from tests.tools import ROOT, promtool

RULES = ROOT / "deploy" / "prometheus" / "kino-rules.yml"
DASHBOARD = ROOT / "deploy" / "grafana" / "kino-dashboard.json"


def test_rules_check_and_unit_tests():
    tool = promtool()
    check = subprocess.run([tool, "check", "rules", str(RULES)], capture_output=True, text=True)
    assert check.returncode == 0 and "SUCCESS" in check.stdout, check.stdout + check.stderr
    test = subprocess.run([tool, "test", "rules", "kino-rules.test.yml"], cwd=RULES.parent, capture_output=True,
                          text=True)
    assert test.returncode == 0 and "SUCCESS" in test.stdout, test.stdout + test.stderr


def _builder():
    spec = importlib.util.spec_from_file_location("build_dashboard", ROOT / "deploy" / "grafana" / "build_dashboard.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_dashboard_is_generated_and_fresh():
    builder = _builder()
    assert json.loads(DASHBOARD.read_text()) == builder.build(), "run deploy/grafana/build_dashboard.py"


def test_every_dashboard_query_is_valid_promql(tmp_path):
    board = json.loads(DASHBOARD.read_text())
    exprs = _builder().queries(board)
    titles = {p["title"] for p in board["panels"]}
    for needed in ("Throughput: videos finished per minute", "Stage latency p95", "Queue depth and jobs in progress",
                   "Denoise batch size", "API errors by code", "GPU utilisation"):
        assert needed in titles
    rules = tmp_path / "dashboard-queries.yml"
    rules.write_text(yaml.safe_dump({"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:query_{i}", "expr": e} for i, e in enumerate(exprs)]}]}))
    check = subprocess.run([promtool(), "check", "rules", str(rules)], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"SUCCESS: {len(exprs)} rules found" in check.stdout
