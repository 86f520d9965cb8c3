"""A real local Ray cluster with the Kino app deployed from deploy/serve/kino.yaml, once per session.

Everything here is real: Ray, Serve replicas, the gRPC server on loopback (a free port), the
SQLite job store and the artifact directory. Clients use the generated kino.v1 stubs.
"""

from __future__ import annotations

import time

import grpc
import pytest

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc

_SHARED: dict = {}  # "cluster": the shared cluster while it runs; "last": the last test that uses it


@pytest.hookimpl(trylast=True)  # after the suite's order is set (tests/conftest.py)
def pytest_collection_modifyitems(items) -> None:
    users = [item for item in items if "cluster" in getattr(item, "fixturenames", ())]
    _SHARED["last"] = users[-1] if users else None


@pytest.hookimpl(wrapper=True)
def pytest_runtest_teardown(item, nextitem):
    """The shared cluster stops after the last test that uses it, not at the end of the session: an idle Kino
    app still costs Ray's floor (~12% of a core here), which the tests after it would pay for nothing. It stops
    after that test's teardown, module fixtures included: a module's app is deleted through the cluster."""
    try:
        return (yield)
    finally:
        if item is _SHARED.get("last") and "cluster" in _SHARED:
            _SHARED.pop("cluster").shutdown()


@pytest.fixture(scope="session")
def cluster(tmp_path_factory):
    from serving.on_ray.cluster import start_local_cluster

    # Logical CPUs, not cores: some modules deploy a second Kino app beside the main one. The prompt
    # enhancer is on (requests opt in; the tiny preset's own Gemma writes the rewrite). Batches are not
    # measured here: what a measurement decides depends on how loaded the machine is (on a busy box batch 2
    # may not beat batch 1 by min_gain, and every batch is capped at 1), so the tests that count shared steps
    # would test the machine; the measurement has its own tests (tests/serving/test_denoise_loop.py).
    c = start_local_cluster(state_dir=tmp_path_factory.mktemp("kino-state"), num_cpus=8,
                            overrides={"model": {"enhancer": {"enabled": True, "max_new_tokens": 24}},
                                       "queue": {"lease_seconds": 3, "heartbeat_seconds": 1},
                                       "batching": {"measure_batches": False},
                                       # A checkpoint every half second of a job's denoising: the kill test's
                                       # job resumes from one (the default, 30 s, is for GPU-sized steps).
                                       "checkpoints": {"every_seconds": 0.5}})
    _SHARED["cluster"] = c
    yield c
    if _SHARED.pop("cluster", None) is c:  # the run ended before its last user (-x, a keyboard interrupt)
        c.shutdown()


@pytest.fixture(scope="session")
def channel(cluster):
    ch = grpc.insecure_channel(cluster.grpc_address)
    grpc.channel_ready_future(ch).result(timeout=30)
    yield ch
    ch.close()


@pytest.fixture(scope="session")
def stub(channel):
    return pb_grpc.VideoServiceStub(channel)


def wait_done(stub, video_id: str, timeout: float = 120.0, history: bool = False) -> list[pb.VideoEvent]:
    """Watch a video to its terminal event; returns every event seen (`history`: its recorded ones first)."""
    events = []
    for ev in stub.WatchVideo(pb.WatchVideoRequest(id=video_id, history=history), timeout=timeout):
        events.append(ev)
        if ev.terminal:
            break
    return events


def wait_for(predicate, timeout: float = 60.0, every: float = 0.05):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError("condition not met in time")
