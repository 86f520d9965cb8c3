"""The soak's short version (loadtests/soak.py runs the long one): tiny jobs through 2 dispatchers and 2
denoisers on a real PostgreSQL, a Dispatcher replica killed mid-run: nothing lost, nothing finished twice."""

from __future__ import annotations

import grpc

from loadtests.soak import APP, SOAK_DEPLOYMENTS, run_soak, soak_overrides
from serving.on_ray.cluster import free_port, local_serve_config


def test_a_short_soak_on_postgresql_with_a_dispatcher_killed(cluster, postgres, tmp_path):
    url, port = postgres.new_database(), free_port()
    cluster.deploy(local_serve_config(state_dir=tmp_path, grpc_port=port, app_name=APP,
                                      overrides=soak_overrides(url), deployments=SOAK_DEPLOYMENTS))
    try:
        grpc.channel_ready_future(grpc.insecure_channel(f"127.0.0.1:{port}")).result(timeout=30)
        report = run_soak(f"127.0.0.1:{port}", url, jobs=40, kills=1)
    finally:
        cluster.delete(APP)
    print(report.table())
    assert report.jobs == 40 and report.kills == 1
    assert report.lost == 0 and report.finished_twice == 0 and report.completed == 40
