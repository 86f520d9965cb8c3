"""One Kino app on a real PostgreSQL, in the soak's configuration (loadtests/soak.py: 2 dispatchers, 2
denoisers, short leases), shared by two scenarios:

- a real Prometheus server scrapes it and sees the job counters and the denoising step histograms move;
- the soak's short version (the script runs the long one): tiny jobs from 8 clients, a Dispatcher replica
  killed mid-run: nothing lost, nothing finished twice.
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.parse
import urllib.request

import grpc
import pytest
import yaml

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from loadtests.soak import APP, SOAK_DEPLOYMENTS, run_soak, soak_overrides
from serving.on_ray.cluster import free_port, local_serve_config
from tests.integration.conftest import wait_done
from tests.tools import prometheus


@pytest.fixture(scope="module")
def postgres_app(cluster, postgres, tmp_path_factory):
    port, url = free_port(), postgres.new_database()
    cluster.deploy(local_serve_config(state_dir=tmp_path_factory.mktemp("on-postgresql"), grpc_port=port,
                                      app_name=APP, overrides=soak_overrides(url), deployments=SOAK_DEPLOYMENTS))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield {"stub": pb_grpc.VideoServiceStub(channel), "url": url, "address": f"127.0.0.1:{port}"}
    channel.close()
    cluster.delete(APP)


@pytest.fixture(scope="module")
def prometheus_server(cluster, tmp_path_factory):
    work = tmp_path_factory.mktemp("prometheus")
    target = urllib.parse.urlparse(cluster.metrics_url).netloc
    (work / "prometheus.yml").write_text(yaml.safe_dump({
        "global": {"scrape_interval": "1s", "evaluation_interval": "1s"},
        "scrape_configs": [{"job_name": "kino", "static_configs": [{"targets": [target]}]}]}))
    port = free_port()
    proc = subprocess.Popen([prometheus(), f"--config.file={work / 'prometheus.yml'}",
                             f"--storage.tsdb.path={work / 'data'}", f"--web.listen-address=127.0.0.1:{port}"],
                            stdout=subprocess.DEVNULL, stderr=open(work / "log", "wb"))
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 60
    while True:
        try:
            urllib.request.urlopen(f"{base}/-/ready", timeout=2)
            break
        except OSError:
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError((work / "log").read_text()[-2000:]) from None
            time.sleep(0.3)
    yield base
    proc.terminate()
    proc.wait(timeout=30)


def query(base: str, expr: str) -> float:
    url = f"{base}/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    body = json.loads(urllib.request.urlopen(url, timeout=10).read())
    assert body["status"] == "success", body
    result = body["data"]["result"]
    return float(result[0]["value"][1]) if result else 0.0


def wait_above(base: str, expr: str, floor: float, timeout: float = 90) -> float:
    deadline = time.monotonic() + timeout
    while (value := query(base, expr)) <= floor:
        if time.monotonic() > deadline:
            raise AssertionError(f"{expr} stayed at {value} (needed > {floor})")
        time.sleep(1)
    return value


def test_prometheus_sees_jobs_and_steps_move(postgres_app, prometheus_server):
    stub = postgres_app["stub"]
    base = prometheus_server
    assert wait_above(base, 'up{job="kino"}', 0, timeout=30) == 1.0  # the first scrape
    completed = 'sum(ray_kino_jobs_finished_total{status="completed"})'
    steps = "sum(ray_kino_denoise_step_seconds_count)"
    request_steps = "sum(ray_kino_denoise_request_steps_total)"  # requests stepped, summed over batches
    before = {e: query(base, e) for e in (completed, steps, request_steps)}
    videos = [stub.CreateVideo(pb.CreateVideoRequest(prompt=f"metrics {i}", seconds=1.0, seed=i, steps=6))
              for i in range(3)]
    for v in videos:
        assert wait_done(stub, v.id)[-1].status == pb.VIDEO_STATUS_COMPLETED
    with pytest.raises(grpc.RpcError):
        stub.CreateVideo(pb.CreateVideoRequest(prompt=""))
    assert wait_above(base, completed, before[completed] + 2) >= before[completed] + 3
    assert wait_above(base, request_steps, before[request_steps] + 17) >= before[request_steps] + 18  # 3 x 6
    assert wait_above(base, steps, before[steps] + 5) >= before[steps] + 6  # fewer forwards when batched
    wait_above(base, 'sum(ray_kino_api_requests_total{protocol="grpc",code="INVALID_ARGUMENT"})', 0)
    # The histograms answer quantile queries (over all time here: the run is shorter than a rate window).
    assert query(base, "histogram_quantile(0.95, sum by (le) (ray_kino_denoise_step_seconds_bucket))") > 0
    assert wait_above(base, 'sum(ray_kino_stage_seconds_count{stage="decode"})', 2) >= 3
    assert wait_above(base, "sum(ray_kino_artifact_bytes_total)", 0) > 0


def test_jobs_were_kept_in_postgresql(postgres_app):
    url = postgres_app["url"]
    from serving.jobs import JobStatus, open_store

    store = open_store(url)
    counts = store.count_by_status()
    store.close()
    assert counts[JobStatus.COMPLETED] >= 3


def test_a_short_soak_with_a_dispatcher_killed(postgres_app):
    report = run_soak(postgres_app["address"], postgres_app["url"], jobs=24, kills=1)
    print(report.table())
    assert report.jobs == 24 and report.kills == 1
    assert report.lost == 0 and report.finished_twice == 0 and report.completed == 24
