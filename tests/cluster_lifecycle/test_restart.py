"""kill -9 of the server process with jobs queued and one mid-denoise; restart; all complete once."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.on_ray.cluster import free_port
from tests.integration.conftest import wait_done, wait_for

KINO = [sys.executable, "-m", "kino.cli.main"]


def _serve(*servers: tuple[int, Path, Path, dict]) -> list[tuple[subprocess.Popen, str]]:
    """Start `kino serve` for each (port, state dir, log, environment), all at once; wait until each serves."""
    started = []
    for port, state, log, env in servers:
        ray_tmp = tempfile.mkdtemp(prefix="kr-")
        addr_file = state.parent / f"addr-{port}-{time.monotonic_ns()}"
        proc = subprocess.Popen(
            KINO + ["serve", "--grpc-port", str(port), "--rest-port", "0", "--state-dir", str(state),
                    "--address-file", str(addr_file),
                    "--ray-temp-dir", ray_tmp],
            stdout=open(log, "ab"), stderr=subprocess.STDOUT, env=env, start_new_session=True)
        started.append((proc, ray_tmp, addr_file, log))
    try:
        for proc, _, addr_file, log in started:
            wait_for(lambda: addr_file.exists() or proc.poll() is not None, timeout=240, every=0.5)  # noqa: B023
            assert proc.poll() is None, log.read_text()[-3000:]
    except BaseException:
        for proc, ray_tmp, _, _ in started:
            _kill_group(proc, ray_tmp)
        raise
    return [(proc, ray_tmp) for proc, ray_tmp, _, _ in started]


def _processes_of(ray_tmp: str) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid,args"], capture_output=True, text=True).stdout
    return [int(line.split()[0]) for line in out.splitlines()[1:] if ray_tmp in line]


def _kill_group(proc: subprocess.Popen, ray_tmp: str) -> None:
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    for pid in _processes_of(ray_tmp):
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_kill_9_then_restart_resumes_every_job_once(tmp_path):
    state, log, port = tmp_path / "state", tmp_path / "serve.log", free_port()
    env = {**os.environ, "KINO_QUEUE__MAX_IN_FLIGHT": "1"}  # one job runs, the rest stay queued
    [(proc, ray_tmp)] = _serve((port, state, log, env))
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    stub = pb_grpc.VideoServiceStub(channel)
    try:
        # The first one denoises when the server dies; the two behind it only need to wait in the queue.
        ids = [stub.CreateVideo(pb.CreateVideoRequest(prompt="job 0", size="256x256", seconds=2.0, steps=24)).id]
        ids += [stub.CreateVideo(pb.CreateVideoRequest(prompt=f"job {i}", size="128x128", seconds=1.0, steps=4,
                                                       seed=i)).id for i in (1, 2)]
        for ev in stub.WatchVideo(pb.WatchVideoRequest(id=ids[0]), timeout=120):
            if ev.stage == pb.STAGE_DENOISING and ev.step >= 2:
                break
        statuses = [stub.GetVideo(pb.GetVideoRequest(id=i)).status for i in ids]
        assert statuses[0] == pb.VIDEO_STATUS_IN_PROGRESS
        assert statuses[1:] == [pb.VIDEO_STATUS_QUEUED] * 2, statuses

        os.kill(proc.pid, signal.SIGKILL)  # the server process dies without any chance to clean up
        proc.wait(timeout=30)
        wait_for(lambda: not [p for p in _processes_of(ray_tmp)
                              if "raylet" in open(f"/proc/{p}/cmdline", "rb").read().decode(errors="ignore")],
                 timeout=60, every=0.5)
        _kill_group(proc, ray_tmp)
        channel.close()

        [(proc, ray_tmp)] = _serve((port, state, log, env))
        channel = grpc.insecure_channel(f"127.0.0.1:{port}")
        stub = pb_grpc.VideoServiceStub(channel)
        for i in ids:
            assert wait_done(stub, i, timeout=300)[-1].status == pb.VIDEO_STATUS_COMPLETED
        videos = {i: stub.GetVideo(pb.GetVideoRequest(id=i)) for i in ids}
        assert videos[ids[0]].attempts == 2  # started again after the restart
        assert all(v.status == pb.VIDEO_STATUS_COMPLETED and v.size_bytes > 0 for v in videos.values())
        listed = stub.ListVideos(pb.ListVideosRequest(page_size=100)).videos
        assert sorted(v.id for v in listed) == sorted(ids)  # nothing duplicated, nothing lost
        # The store's own record: each job completed exactly once; the first one was requeued once.
        from serving.jobs import JobStatus, open_store

        store = open_store(f"sqlite:///{state / 'jobs.db'}")
        for i in ids:
            events = store.events(i)
            assert [e.status for e in events].count(JobStatus.COMPLETED) == 1
        # The dead server's dispatcher held it with a lease; the new one requeued it when the lease expired.
        assert any(e.message.startswith("requeued: the lease of dispatcher") for e in store.events(ids[0]))
        store.close()
    finally:
        channel.close()
        _kill_group(proc, ray_tmp)  # cleanup: a graceful stop is not what this test is about


def test_an_upgrade_two_clusters_on_one_database_then_the_old_one_killed_loses_nothing(tmp_path):
    """KubeRay's zero-downtime upgrade: a second cluster starts beside the first on the same database,
    traffic moves, the first is deleted (here: kill -9, the worst case) with jobs in flight."""
    state = tmp_path / "state"
    lease, heartbeat = 3.0, 1.0
    env = {**os.environ, "KINO_QUEUE__LEASE_SECONDS": str(lease), "KINO_QUEUE__HEARTBEAT_SECONDS": str(heartbeat),
           "KINO_QUEUE__MAX_IN_FLIGHT": "2"}
    old_port, new_port = free_port(), free_port()
    [(old, old_tmp)] = _serve((old_port, state, tmp_path / "old.log", env))
    new = new_tmp = None
    channels = []
    try:
        [(new, new_tmp)] = _serve((new_port, state, tmp_path / "new.log", env))  # the new cluster, same database
        channels.append(grpc.insecure_channel(f"127.0.0.1:{old_port}"))
        old_stub = pb_grpc.VideoServiceStub(channels[-1])
        channels.append(grpc.insecure_channel(f"127.0.0.1:{new_port}"))
        new_stub = pb_grpc.VideoServiceStub(channels[-1])
        ids = [old_stub.CreateVideo(pb.CreateVideoRequest(prompt=f"upgrade {i}", size="256x256", seconds=2.0,
                                                          steps=24, seed=i)).id for i in range(6)]
        from serving.jobs import JobStatus, Stage, open_store

        store = open_store(f"sqlite:///{state / 'jobs.db'}")
        # Wait until the old cluster runs something, then delete it without warning.
        old_dispatchers = {str(pid) for pid in _dispatcher_pids(old)}

        def held_by_old() -> list[str]:
            jobs = [store.get(i) for i in ids]
            return [j.id for j in jobs if j.status == JobStatus.IN_PROGRESS and j.stage == Stage.DENOISING
                    and (j.lease_owner or "-").split("-")[-2] in old_dispatchers]

        try:
            victims = wait_for(held_by_old, timeout=120)
        except TimeoutError:
            raise AssertionError(f"the old cluster ({old_dispatchers}) never ran a job: "
                                 f"{[(j.status, j.step, j.lease_owner) for j in map(store.get, ids)]}") from None
        killed_at = time.time()
        _kill_group(old, old_tmp)

        def story() -> str:  # what each job went through, for a failure's message (seconds from the kill)
            return "\n".join(f"{i} ({'victim' if i in victims else 'other'}): " + "; ".join(
                f"{e.at - killed_at:+.1f}s {e.status.value} {e.message}" for e in store.events(i)) for i in ids)

        for i in ids:  # watched through the new cluster, as clients are once traffic moved
            assert wait_done(new_stub, i, timeout=300)[-1].status == pb.VIDEO_STATUS_COMPLETED, story()
        for i in victims:
            requeued = [e.at for e in store.events(i) if e.message.startswith("requeued: the lease of dispatcher")]
            assert requeued and requeued[0] - killed_at <= lease + 2 * heartbeat + 3, story()
        for i in ids:
            assert [e.status for e in store.events(i)].count(JobStatus.COMPLETED) == 1, story()
        store.close()
    finally:
        for ch in channels:
            ch.close()
        _kill_group(old, old_tmp)
        if new is not None:
            _kill_group(new, new_tmp)  # cleanup: a graceful stop is not what this test is about


def _dispatcher_pids(server: subprocess.Popen) -> list[int]:
    """Pids of the Dispatcher replicas of the cluster `server` runs (its Ray processes share its session)."""
    out = subprocess.run(["ps", "-eo", "pid,sid,args"], capture_output=True, text=True).stdout
    rows = [line.split(None, 2) for line in out.splitlines()[1:]]
    return [int(pid) for pid, sid, args in (r for r in rows if len(r) == 3)
            if int(sid) == server.pid and "Dispatcher" in args]
