"""The control plane under change: a Dispatcher replica killed under load, the Denoiser pool scaling up on
the job store's backlog and back down after it drains, and a downscale under load; nothing is lost."""

from __future__ import annotations

import concurrent.futures as cf
import threading
import time

import grpc
import pytest
import ray
from ray import serve

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.on_ray.autoscaling import running_replicas
from serving.on_ray.cluster import free_port, local_serve_config
from serving.on_ray.compat import routed_replicas
from tests.integration.conftest import wait_done, wait_for

APP = "kino-scaling"


def _replicas(deployment: str, app: str) -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]


def _submit(stub, n: int, steps: int, tag: str) -> list[str]:
    reqs = [pb.CreateVideoRequest(prompt=f"{tag} {i}", seconds=1.0, seed=i, steps=steps) for i in range(n)]
    with cf.ThreadPoolExecutor(n) as pool:
        return [v.id for v in pool.map(stub.CreateVideo, reqs)]


def _all_complete(stub, ids: list[str]) -> None:
    with cf.ThreadPoolExecutor(len(ids)) as pool:
        finals = list(pool.map(lambda i: wait_done(stub, i, timeout=300)[-1], ids))
    assert [f.status for f in finals] == [pb.VIDEO_STATUS_COMPLETED] * len(ids), finals
    listed = {v.id for v in stub.ListVideos(pb.ListVideosRequest(page_size=100)).videos}
    assert set(ids) <= listed


def _scaling_config(state_dir, port: int, rest_port: int, denoiser: dict) -> dict:
    # The same ports every time: a changed one would be a new app config, and Serve would replace every replica.
    return local_serve_config(
        state_dir=state_dir, grpc_port=port, rest_port=rest_port, app_name=APP,
        overrides={"queue": {"lease_seconds": 3, "heartbeat_seconds": 1},
                   "batching": {"max_batch_size": 1, "max_running": 2, "measure_batches": False},
                   "autoscaling": {"drain_seconds": 1}},
        deployments={"Denoiser": denoiser})


@pytest.fixture(scope="module")
def scaling_app(cluster, tmp_path_factory):
    """A second Kino app on the shared cluster whose Denoiser pool scales 1..2 on the backlog, fast."""
    port, rest_port, state = free_port(), free_port(), tmp_path_factory.mktemp("scaling")
    autoscaling = {"min_replicas": 1, "max_replicas": 2, "upscale_delay_s": 0, "downscale_delay_s": 3,
                   "metrics_interval_s": 0.5, "look_back_period_s": 1,
                   "policy": {"policy_function": "serving.on_ray.autoscaling:scale_on_backlog"}}
    cluster.deploy(_scaling_config(state, port, rest_port, {"autoscaling_config": autoscaling}))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield {"stub": pb_grpc.VideoServiceStub(channel), "cluster": cluster,
           "config": lambda denoiser: _scaling_config(state, port, rest_port, denoiser)}
    channel.close()
    cluster.delete(APP)


def test_the_denoiser_pool_scales_up_on_the_backlog_and_down_after_it_drains(scaling_app):
    stub = scaling_app["stub"]
    assert len(_replicas("Denoiser", APP)) == 1
    # What a dispatcher sizes its window by: the running replicas Serve pushes to its Denoiser handle (no call),
    # sampled beside Serve's status of them for as long as the pool changes.
    heard = serve.get_deployment_handle("Denoiser", APP).options()
    wait_for(lambda: routed_replicas(heard) == 1, timeout=30)
    seen: list[tuple[int, int | None]] = []
    stop = threading.Event()

    def sample() -> None:
        while not stop.wait(1.0):
            seen.append((running_replicas(APP, "Denoiser"), routed_replicas(heard)))

    sampler = threading.Thread(target=sample, daemon=True)
    sampler.start()
    ids = _submit(stub, 8, steps=40, tag="backlog")  # 8 jobs for a pool that holds 2 per replica
    wait_for(lambda: len(_replicas("Denoiser", APP)) == 2, timeout=90, every=0.5)
    _all_complete(stub, ids)
    wait_for(lambda: len(_replicas("Denoiser", APP)) == 1, timeout=120, every=0.5)
    wait_for(lambda: routed_replicas(heard) == 1, timeout=60)
    stop.set()
    sampler.join()
    # The handle heard of every replica Serve ran (on a loaded machine the second may start only as the backlog
    # drains: then both stay at 1).
    assert max(r for r, _ in seen) == max(h or 0 for _, h in seen), seen


def test_a_dispatcher_replica_killed_under_load_loses_nothing(scaling_app):
    stub = scaling_app["stub"]
    ids = _submit(stub, 6, steps=40, tag="dispatcher")
    wait_for(lambda: any(stub.GetVideo(pb.GetVideoRequest(id=i)).step >= 2 for i in ids), timeout=120)
    victim = _replicas("Dispatcher", APP)[0]
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    _all_complete(stub, ids)  # its jobs' leases expired and the other replica (or its replacement) ran them
    attempts = [stub.GetVideo(pb.GetVideoRequest(id=i)).attempts for i in ids]
    assert max(attempts) <= 2, attempts


def test_a_downscale_under_load_finishes_or_hands_back_everything(scaling_app):
    stub, cluster = scaling_app["stub"], scaling_app["cluster"]
    cluster.deploy(scaling_app["config"]({"num_replicas": 2}))
    wait_for(lambda: len(_replicas("Denoiser", APP)) == 2, timeout=90, every=0.5)
    ids = _submit(stub, 4, steps=24, tag="downscale")  # two running on each replica
    wait_for(lambda: sum(stub.GetVideo(pb.GetVideoRequest(id=i)).step >= 2 for i in ids) >= 2, timeout=120)
    started = time.monotonic()
    cluster.deploy(scaling_app["config"]({"num_replicas": 1}))
    _all_complete(stub, ids)
    assert len(_replicas("Denoiser", APP)) == 1 and time.monotonic() - started < 300
