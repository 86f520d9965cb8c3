"""A Denoiser replica spread over 2 ranks (model.parallel.cfg = 2) on the real local Ray cluster.

A second Kino app on the suite's cluster whose one Denoiser replica places a follower actor in a
placement group and joins it over gloo. It writes the video the one-rank app writes for the same
request, and a follower killed mid-job fails the replica cleanly: the job is retried on the
replica Serve starts in its place and completes (no hang).
"""

from __future__ import annotations

import grpc
import pytest
import ray

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.db import Database
from serving.jobs.sql_store import SqlJobStore
from serving.on_ray.cluster import free_port, local_serve_config
from serving.on_ray.parallel import ACTOR_PREFIX
from tests.integration.conftest import wait_done, wait_for
from tests.integration.test_lifecycle import _download
from tests.integration.test_run_parallel import SAME_AUDIO_DB, SAME_VIDEO_DB, _audio, _frames, _psnr, _snr

APP = "kino-cfg2"


@pytest.fixture(scope="module")
def state(tmp_path_factory):
    return tmp_path_factory.mktemp("cfg2")


@pytest.fixture(scope="module")
def cfg2_app(cluster, state):
    port = free_port()
    one = {"num_replicas": 1}
    cluster.deploy(local_serve_config(
        state_dir=state, grpc_port=port, app_name=APP,
        overrides={"model": {"parallel": {"cfg": 2}}, "queue": {"lease_seconds": 3, "heartbeat_seconds": 1}},
        deployments={"Denoiser": {**one, "health_check_period_s": 1}, "TextEncoder": one, "Decoder": one,
                     "Dispatcher": one}), timeout_s=360)  # the replica also places and loads its follower
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    grpc.channel_ready_future(channel).result(timeout=30)
    yield pb_grpc.VideoServiceStub(channel)
    channel.close()
    cluster.delete(APP)


def _followers() -> list[dict]:
    return [a for a in ray.util.list_named_actors(all_namespaces=True) if a["name"].startswith(ACTOR_PREFIX)]


def test_a_two_rank_replica_writes_the_video_of_one_rank(cfg2_app, stub, tmp_path):
    request = pb.CreateVideoRequest(prompt="a kite over dunes", size="64x64", seconds=1.0, steps=4, seed=21,
                                    guidance_scale=3.0)
    spread, single = cfg2_app.CreateVideo(request), stub.CreateVideo(request)
    for s, video in ((cfg2_app, spread), (stub, single)):
        assert wait_done(s, video.id)[-1].status == pb.VIDEO_STATUS_COMPLETED
    for name, s, video in (("spread", cfg2_app, spread), ("single", stub, single)):
        (tmp_path / f"{name}.mp4").write_bytes(_download(s, video.id)[1])
    # (Frames through H.264 and audio through AAC compared as in test_run_parallel.py; the loop's latents:
    # tests/serving/test_parallel_loop.py.)
    a, b = _frames(tmp_path / "spread.mp4"), _frames(tmp_path / "single.mp4")
    assert a.shape == b.shape and _psnr(a, b) >= SAME_VIDEO_DB, f"{_psnr(a, b):.1f} dB"
    sound = _snr(_audio(tmp_path / "single.mp4"), _audio(tmp_path / "spread.mp4"))
    assert sound >= SAME_AUDIO_DB, f"audio {sound:.1f} dB SNR"
    assert len(_followers()) == 1  # the replica's one follower, placed by it


def test_a_follower_killed_mid_job_fails_the_replica_and_the_job_is_retried(cfg2_app, state):
    [victim] = _followers()
    # Long enough (100 steps of 1,440 video tokens) that the kill lands while it denoises.
    video = cfg2_app.CreateVideo(pb.CreateVideoRequest(prompt="survive this", size="384x384", seconds=3.0,
                                                       steps=100, seed=3))
    events = cfg2_app.WatchVideo(pb.WatchVideoRequest(id=video.id), timeout=600)
    for ev in events:
        if ev.stage == pb.STAGE_DENOISING and ev.step >= 2:
            break
    assert ev.step < 90, "the job nearly finished before the kill"
    ray.kill(ray.get_actor(victim["name"], namespace=victim["namespace"]), no_restart=True)
    after = []
    for ev in events:
        after.append(ev)
        if ev.terminal:
            break
    assert after[-1].status == pb.VIDEO_STATUS_COMPLETED, after[-1]
    # The dispatcher retried the denoise (WatchVideo shows only forward progress; the store keeps it all).
    store = SqlJobStore(Database(f"sqlite:///{state / 'jobs.db'}"))
    try:
        messages = [e.message or "" for e in store.events(video.id)]
    finally:
        store.close()
    assert any(m.startswith("retrying after: denoiser") for m in messages), messages
    # Serve replaced the replica, and the new one placed a follower of its own.
    replaced = wait_for(lambda: [a for a in _followers() if a["name"] != victim["name"]], timeout=60)
    assert len(replaced) == 1
