"""WatchVideo's generator on its own (VideoService over a real SQLite store, no Ray)."""

from __future__ import annotations

import asyncio

from serving.accounts.models import Principal, Tenant
from serving.artifacts import LocalArtifactStore
from serving.cameos.store import CameoStore
from serving.config import load_config
from serving.jobs import JobStatus
from serving.jobs.sql_store import SqlJobStore
from tests.serving.video_setups import NoDispatcher, job_database, queue_jobs, video_service


class FinishingStore(SqlJobStore):
    """Timing injection: the job is cancelled by its dispatcher right after the watcher's first
    read, the window in which a revocation or a cancel can land."""

    lease = None
    armed = False

    def _after_read(self, job_id: str) -> None:
        if self.armed:
            self.armed = False
            self.request_cancel(job_id)
            self.finish(self.lease, JobStatus.CANCELLED, error_code="cancelled", error_message="stopped")

    def get(self, job_id: str):
        job = super().get(job_id)
        self._after_read(job_id)
        return job

    def events(self, job_id: str, after_id: int = 0):
        events = super().events(job_id, after_id)
        self._after_read(job_id)
        return events


def test_a_job_finishing_as_the_watch_starts_still_ends_the_watch(tmp_path, tiny_config):
    db = job_database(tmp_path)
    store = FinishingStore(db)
    queue_jobs(store, tiny_config, ["video_1"], steps=3)
    claimed = store.claim_next("d1", 30.0)
    assert claimed.id == "video_1"
    store.lease = claimed.lease
    videos = video_service(db, store, tmp_path)

    async def watch() -> list:
        store.armed = True
        async with asyncio.timeout(10):
            return [p async for p in videos.watch(Principal(Tenant("t", "t")), "video_1", poll_seconds=0.01)]

    seen = asyncio.run(watch())
    assert seen[-1].status == JobStatus.CANCELLED and seen[-1].error_code == "cancelled"


def test_a_late_watcher_asking_for_history_sees_the_recorded_stages_then_the_end(tmp_path, tiny_config):
    db = job_database(tmp_path)
    store = SqlJobStore(db)
    queue_jobs(store, tiny_config, ["video_1"], steps=3)
    lease = store.claim_next("d1", 30.0).lease
    store.set_enhanced_prompt(lease, "a tabby cat naps on a velvet sofa", "prompt enhanced")
    store.finish(lease, JobStatus.FAILED, error_code="internal", error_message="the decoder went away")
    videos = video_service(db, store, tmp_path)

    async def watch(history: bool) -> list:
        async with asyncio.timeout(10):
            return [p async for p in videos.watch(Principal(Tenant("t", "t")), "video_1", poll_seconds=0.01,
                                                  history=history)]

    late = asyncio.run(watch(history=False))
    assert [p.message for p in late] == ["snapshot"] and late[0].error_code == "internal"
    replayed = asyncio.run(watch(history=True))
    recorded = [e for e in store.events("video_1") if not e.status.terminal]
    assert [p.message for p in replayed] == [e.message for e in recorded] + ["snapshot"]
    assert "prompt enhanced" in [p.message for p in replayed]
    assert [p.status for p in replayed[:-1]] == [e.status for e in recorded]
    assert replayed[-1].status == JobStatus.FAILED and replayed[-1].error_code == "internal"


def test_get_and_list_show_a_running_jobs_pushed_step_the_store_does_not_hold(tmp_path, tiny_config):
    """The store gets a running job's stage changes; GetVideo, ListVideos (and REST retrieve) take its step from
    the pushed progress, and the store's record again once the job ends."""
    import time

    from serving.control_plane.progress import Progress, ProgressHub
    from serving.jobs import Stage

    db = job_database(tmp_path)
    store = SqlJobStore(db)
    queue_jobs(store, tiny_config, ["video_1"], steps=30)
    lease = store.claim_next("d1", 30.0).lease
    store.record_progress(lease, stage=Stage.DENOISING, step=1, total_steps=30, progress=0.05)
    hub = ProgressHub()
    videos = video_service(db, store, tmp_path, progress=hub)
    who = Principal(Tenant("t", "t"))
    hub.publish(Progress(video_id="video_1", status=JobStatus.IN_PROGRESS, stage=Stage.DENOISING, at=time.time(),
                         step=17, total_steps=30, progress=0.55, eta_seconds=3.0))
    got = asyncio.run(videos.get(who, "video_1"))
    assert (got.stage, got.step, got.total_steps, got.progress, got.eta_seconds) == (Stage.DENOISING, 17, 30, 0.55, 3.0)
    assert store.get("video_1").step == 1  # the store holds the stage change, not the step
    [listed] = asyncio.run(videos.list(who)).jobs
    assert listed.step == 17
    done = store.finish(lease, JobStatus.CANCELLED, error_code="cancelled", step=18)
    hub.publish(Progress.of_job(done, None, "cancelled"))
    got = asyncio.run(videos.get(who, "video_1"))
    assert (got.status, got.step) == (JobStatus.CANCELLED, 18)  # the end is the store's


def test_a_cameo_owners_watch_wakes_on_a_notification_not_on_a_timer(tmp_path):
    """A notification's write nudges its owner's watchers through the hub; they read the store then, well within
    the fallback interval (FALLBACK_SECONDS) that only a lost nudge waits for."""
    import time

    from serving.cameos import service as cameo_service
    from serving.cameos.models import Cameo
    from serving.cameos.service import CameoService
    from serving.control_plane.progress import ProgressHub

    db = job_database(tmp_path)
    hub, cameos, artifacts = ProgressHub(), CameoStore(db), LocalArtifactStore(tmp_path / "artifacts")
    jobs = FinishingStore(db)
    videos = video_service(db, jobs, tmp_path, progress=hub)
    service = CameoService(load_config({}), cameos, jobs, artifacts, videos, NoDispatcher(), progress=hub)
    owner = Principal(Tenant("ann", "ann"), user="ann")
    cameo = cameos.create(Cameo(id="cameo_1", owner_tenant="ann", owner_user="ann", name="Ann", require_approval=False,
                                consent_statement="yes", consent_at=0.0, consent_key_id="local",
                                reference_key="cameos/cameo_1/reference.png", voice_key=None, created_at=0.0))

    async def main() -> tuple[list, float]:
        seen: list = []

        async def watch() -> None:
            async for n in service.watch(owner):
                seen.append(n)
                if len(seen) == 2:
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(0.3)  # the watcher read the (empty) store and waits
        started = time.monotonic()
        await service._notify(cameo, "used", "video_1", "acme", "")
        await service._notify(cameo, "completed", "video_1", "acme", "")
        async with asyncio.timeout(cameo_service.FALLBACK_SECONDS * 3):
            await watcher
        return seen, time.monotonic() - started

    seen, took = asyncio.run(main())
    assert [n.kind for n in seen] == ["used", "completed"]
    assert took < cameo_service.FALLBACK_SECONDS / 2, f"woke after {took:.2f} s: the nudge did not reach the watcher"
    assert hub._nudged == {}  # the watcher's subscription ended with it


def test_a_queued_watcher_reads_its_position_when_the_queue_moves_not_on_a_timer(tmp_path, tiny_config):
    """While nothing moves, a queued watcher reads nothing; a claim's nudge has it read its new position at once."""
    import time

    from serving.control_plane.progress import QUEUE_TOPIC, ProgressHub

    class CountingStore(SqlJobStore):
        positions = 0

        def queue_position(self, job_id: str) -> int | None:
            CountingStore.positions += 1
            return super().queue_position(job_id)

    db = job_database(tmp_path)
    store, hub = CountingStore(db), ProgressHub()
    queue_jobs(store, tiny_config, [f"video_{i}" for i in range(3)], steps=3)
    videos = video_service(db, store, tmp_path, progress=hub)

    async def main() -> tuple[list, int, float]:
        seen: list = []

        async def watch() -> None:
            async for p in videos.watch(Principal(Tenant("t", "t")), "video_2"):
                seen.append(p)
                if p.queue_position == 0:  # next in line
                    return

        watcher = asyncio.create_task(watch())
        await asyncio.sleep(1.5)  # idle: no claim, no nudge
        idle_reads = CountingStore.positions - 1  # beyond the snapshot's
        started = time.monotonic()
        for _ in range(2):
            store.claim_next("d1", 30.0)
            hub.nudge(QUEUE_TOPIC)  # as the dispatcher does after each claim
        async with asyncio.timeout(10):
            await watcher
        return seen, idle_reads, time.monotonic() - started

    seen, idle_reads, took = asyncio.run(main())
    assert seen[0].queue_position == 2 and seen[-1].queue_position == 0
    assert idle_reads == 0, f"{idle_reads} position reads while nothing moved"
    assert took < 2.5, f"the new position took {took:.1f} s (the fallback is 5 s)"
