"""Nothing accepted is lost: a killed Denoiser replica, an overloaded queue, batching switched off."""

from __future__ import annotations

import concurrent.futures as cf

import grpc
import pytest
import ray

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.on_ray.cluster import free_port, local_serve_config
from tests.integration.conftest import wait_done

STEPS = 100  # the killed job's: its first checkpoint (0.5 s of steps) comes well before its end on any machine


def _replica_actors(deployment: str, app: str = "kino"):
    return [a for a in ray.util.list_named_actors(all_namespaces=True)
            if a["name"].startswith(f"SERVE_REPLICA::{app}#{deployment}#")]


def _frames(data: bytes):
    import io

    import av
    import numpy as np

    with av.open(io.BytesIO(data)) as f:
        return np.stack([fr.to_ndarray(format="rgb24") for fr in f.decode(video=0)]).astype(np.float64)


def _download(stub, video_id: str) -> bytes:
    return b"".join(part.chunk for part in stub.DownloadVideo(pb.DownloadVideoRequest(id=video_id))
                    if not part.HasField("header"))


def test_denoiser_replica_killed_mid_job_resumes_at_its_checkpoint_and_writes_the_same_video(cluster, stub):
    import numpy as np

    from loadtests.node_loss import wait_for_checkpoint

    request = pb.CreateVideoRequest(prompt="survive this", size="256x256", seconds=2.0, steps=STEPS, seed=3)
    video = stub.CreateVideo(request)
    events = stub.WatchVideo(pb.WatchVideoRequest(id=video.id), timeout=180)
    # The kill lands once the job store records a checkpoint (one every 0.5 s of denoising: on a fast machine
    # that is past step 20, on a loaded one before it) and well before the job's last step.
    assert wait_for_checkpoint(cluster, video.id, timeout_s=120), "the job ended before its first checkpoint"
    [victim] = _replica_actors("Denoiser")
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    final = None
    for ev in events:
        if ev.terminal:
            final = ev
            break
    assert final is not None and final.status == pb.VIDEO_STATUS_COMPLETED, final
    got = stub.GetVideo(pb.GetVideoRequest(id=video.id))
    assert got.status == pb.VIDEO_STATUS_COMPLETED and got.size_bytes > 0
    assert got.HasField("resumed_from_step") and 0 < got.resumed_from_step < STEPS, got
    replicas = _replica_actors("Denoiser")
    assert replicas and victim["name"] not in [r["name"] for r in replicas]  # Serve started a new one
    # The same video as an uninterrupted run of the same request: its latents are bit-identical (the in-process
    # tests compare them, tests/serving/test_resumable_jobs.py); the MP4s' frames, through x264 (whose bytes
    # may differ run to run for the same frames), agree far above the 32 dB two different tiny videos are apart.
    again = stub.CreateVideo(pb.CreateVideoRequest(prompt="survive this", size="256x256", seconds=2.0, steps=STEPS,
                                                   seed=3, idempotency_key="uninterrupted"))
    assert wait_done(stub, again.id, timeout=180)[-1].status == pb.VIDEO_STATUS_COMPLETED
    a, b = _frames(_download(stub, video.id)), _frames(_download(stub, again.id))
    mse = float(np.mean((a - b) ** 2))
    assert mse == 0 or 10 * np.log10(255**2 / mse) > 40, mse


@pytest.fixture(scope="module")
def small_queue_app(cluster, tmp_path_factory):
    """A second Kino app on the same cluster: a queue of 4, one job in flight, batching off."""
    port = free_port()
    name = "kino-small-queue"
    cfg = local_serve_config(state_dir=tmp_path_factory.mktemp("small-queue"), grpc_port=port, app_name=name,
                             overrides={"queue": {"max_queued": 4, "max_in_flight": 1},
                                        "batching": {"max_batch_size": 1, "max_running": 8}},
                             deployments={"Dispatcher": {"num_replicas": 1}})
    cluster.deploy(cfg)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield pb_grpc.VideoServiceStub(channel)
    channel.close()
    cluster.delete(name)


def test_overload_refuses_the_excess_and_completes_every_accepted_job(small_queue_app):
    stub = small_queue_app
    reqs = [pb.CreateVideoRequest(prompt=f"overload {i}", seconds=1.0, seed=i, steps=8) for i in range(14)]

    def create(req):
        try:
            return stub.CreateVideo(req, timeout=10)
        except grpc.RpcError as e:
            return e

    with cf.ThreadPoolExecutor(14) as pool:
        results = list(pool.map(create, reqs))
    accepted = [r for r in results if isinstance(r, pb.Video)]
    refused = [r for r in results if isinstance(r, grpc.RpcError)]
    assert refused, "the queue bound was never hit"
    for e in refused:
        assert e.code() == grpc.StatusCode.RESOURCE_EXHAUSTED and "queue" in e.details()
    assert 4 <= len(accepted) < len(reqs)
    histories = [wait_done(stub, v.id, timeout=300) for v in accepted]
    assert all(h[-1].status == pb.VIDEO_STATUS_COMPLETED for h in histories)
    listed = stub.ListVideos(pb.ListVideosRequest(page_size=100)).videos
    assert sorted(v.id for v in listed) == sorted(v.id for v in accepted)  # refused ones left no trace
    # max_batch_size: 1 switches batching off: no step ever carried more than one request.
    steps = [e for h in histories for e in h if e.stage == pb.STAGE_DENOISING and e.message != "snapshot"]
    assert steps and {e.batch_size for e in steps} == {1}


def test_a_second_app_leaves_the_first_running(small_queue_app, stub):
    """Serve configs are declarative; deploying another app must not take the main one away."""
    video = stub.CreateVideo(pb.CreateVideoRequest(prompt="still here", seconds=1.0, seed=1))
    assert wait_done(stub, video.id)[-1].status == pb.VIDEO_STATUS_COMPLETED
