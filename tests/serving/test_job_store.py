"""The job store contract, run against every store implementation (`store_url` fixture)."""

from __future__ import annotations

import threading
import time
import uuid

import pytest

from serving.db import Database
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, ResourceExhausted
from serving.jobs import Artifact, IllegalTransition, JobStatus, NewJob, Stage, StaleLease, open_store
from serving.jobs.models import Quota
from serving.jobs.sql_store import SqlJobStore
from serving.jobs.states import ALLOWED, check_transition
from tests.tools import migrated


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request, tmp_path):
    """The same contract against each store: SQLite (the embedded default) and a real PostgreSQL."""
    if request.param == "postgresql":
        return migrated(request.getfixturevalue("postgres").new_database())
    return migrated(f"sqlite:///{tmp_path}/jobs.db")


class Clock:
    """Wall-clock seconds that move only when a test says so: leases expire by `advance`, not by sleeping."""

    def __init__(self) -> None:
        self.now = time.time()

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


@pytest.fixture
def clock():
    return Clock()


@pytest.fixture
def store(store_url, clock):
    s = SqlJobStore(Database(store_url), clock=clock)
    yield s
    s.close()


LEASE = 30.0  # seconds: the contract tests' leases never expire by themselves


def claim(store, owner="d1"):
    """Claim the next job; (job, its lease) or (None, None)."""
    job = store.claim_next(owner, LEASE)
    return (job, job.lease) if job is not None else (None, None)


def new_job(tenant="t1", priority=5, key=None, prompt="a cat", **kw) -> NewJob:
    return NewJob(id=f"video_{uuid.uuid4().hex[:12]}", tenant=tenant, model="ltx2-tiny", priority=priority,
                  params={"prompt": prompt}, request_hash=f"h-{prompt}", idempotency_key=key, **kw)


def test_create_get_and_events(store):
    job, created = store.create(new_job(), max_queued=10)
    assert created and job.status == JobStatus.QUEUED and job.stage == Stage.QUEUED
    assert store.get(job.id) == job
    [ev] = store.events(job.id)
    assert ev.status == JobStatus.QUEUED and ev.message == "queued"


def test_idempotency_key_returns_the_same_job(store):
    first, created1 = store.create(new_job(key="k1"), max_queued=10)
    again, created2 = store.create(new_job(key="k1"), max_queued=10)
    assert created1 and not created2 and again.id == first.id
    assert store.count_by_status()[JobStatus.QUEUED] == 1
    with pytest.raises(FailedPrecondition, match="already used for a different request") as err:
        store.create(new_job(key="k1", prompt="a dog"), max_queued=10)
    assert err.value.field == "idempotency_key"
    # Keys are per tenant.
    _, created3 = store.create(new_job(tenant="t2", key="k1"), max_queued=10)
    assert created3


def test_queue_bound_refuses_and_writes_nothing(store):
    for _ in range(2):
        store.create(new_job(), max_queued=2)
    with pytest.raises(ResourceExhausted, match="queue is full"):
        store.create(new_job(key="extra"), max_queued=2)
    assert store.count_by_status()[JobStatus.QUEUED] == 2
    # The refused key was not recorded: the same key is accepted once there is room.
    claim(store)
    _, created = store.create(new_job(key="extra"), max_queued=2)
    assert created


def test_claim_order_is_priority_then_arrival(store):
    low1, _ = store.create(new_job(priority=1), max_queued=10)
    high, _ = store.create(new_job(priority=9), max_queued=10)
    low2, _ = store.create(new_job(priority=1), max_queued=10)
    assert store.queue_position(high.id) == 0 and store.queue_position(low1.id) == 1
    assert store.queue_position(low2.id) == 2
    order = [claim(store)[0].id for _ in range(3)]
    assert order == [high.id, low1.id, low2.id]
    assert claim(store) == (None, None)
    assert store.queue_position(high.id) is None


def test_a_tenant_at_max_concurrent_waits_and_never_hides_the_others(store):
    capped = Quota(max_concurrent=1)
    backlog = [store.create(new_job("capped", priority=9, prompt=f"c{i}"), max_queued=1000, quota=capped)[0]
               for i in range(300)]  # more than one page of candidates
    other, _ = store.create(new_job("other", priority=1), max_queued=1000)
    first, lease = claim(store)
    assert first.id == backlog[0].id
    assert claim(store)[0].id == other.id  # capped's 299 higher-priority jobs wait
    assert claim(store) == (None, None)
    store.finish(lease, JobStatus.COMPLETED)
    assert claim(store)[0].id == backlog[1].id


def test_state_machine_table():
    check_transition("j", JobStatus.QUEUED, JobStatus.IN_PROGRESS)
    for terminal in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED):
        assert ALLOWED[terminal] == {JobStatus.DELETED}
        with pytest.raises(IllegalTransition):
            check_transition("j", terminal, JobStatus.IN_PROGRESS)
    with pytest.raises(IllegalTransition, match="cannot become completed"):
        check_transition("j", JobStatus.QUEUED, JobStatus.COMPLETED)
    assert ALLOWED[JobStatus.DELETED] == frozenset()


def test_progress_finish_and_illegal_moves(store):
    job, _ = store.create(new_job(), max_queued=10)
    claimed, lease = claim(store)
    assert claimed.status == JobStatus.IN_PROGRESS and claimed.attempts == 1 and claimed.started_at
    assert (lease.owner, lease.generation) == ("d1", 1) and claimed.lease_expires_at > claimed.started_at
    assert store.record_progress(lease, stage=Stage.DENOISING, step=2, total_steps=4, progress=0.5,
                                 batch_size=3) is False
    done = store.finish(lease, JobStatus.COMPLETED, artifact=Artifact("k.mp4", 10, "ab" * 32))
    assert done.status == JobStatus.COMPLETED and done.progress == 1.0 and done.artifact.size_bytes == 10
    with pytest.raises(FailedPrecondition, match="completed; it cannot become cancelled"):
        store.request_cancel(job.id)
    assert done.lease_owner is None and done.lease is None
    with pytest.raises(StaleLease):
        store.finish(lease, JobStatus.FAILED)
    kinds = [(e.status, e.stage, e.batch_size) for e in store.events(job.id)]
    assert (JobStatus.IN_PROGRESS, Stage.DENOISING, 3) in kinds and kinds[-1][0] == JobStatus.COMPLETED


def test_cancel_queued_and_in_progress(store):
    queued, _ = store.create(new_job(), max_queued=10)
    running, _ = store.create(new_job(), max_queued=10)
    first, lease = claim(store)
    assert first.id == queued.id
    # (claimed queued first) -> cancel the other one while queued
    cancelled = store.request_cancel(running.id)
    assert cancelled.status == JobStatus.CANCELLED and cancelled.error_code == "cancelled"
    flagged = store.request_cancel(queued.id)
    assert flagged.status == JobStatus.IN_PROGRESS and flagged.cancel_requested
    assert store.record_progress(lease, stage=Stage.DENOISING, step=1) is True
    assert store.finish(lease, JobStatus.CANCELLED, error_code="cancelled").status == JobStatus.CANCELLED


def test_a_cancel_that_crosses_its_dispatchers_own_returns_the_cancelled_job(store):
    """The front door tells the dispatcher beside its store write: the dispatcher may record the end first."""
    job, _ = store.create(new_job(), max_queued=10)
    _, lease = claim(store)
    stopped = store.finish(lease, JobStatus.CANCELLED, error_code="cancelled", step=3)
    assert (stopped.status, stopped.step) == (JobStatus.CANCELLED, 3)  # the record ends where the job stopped
    again = store.request_cancel(job.id)
    assert again.status == JobStatus.CANCELLED and again.step == 3 and again.error_code == "cancelled"


def test_an_idle_dispatch_round_takes_no_write_lock(store, monkeypatch):
    """Nothing queued and no lease lapsed: claim_next and reap_expired only read."""
    from contextlib import contextmanager

    job, _ = store.create(new_job(), max_queued=10)
    claim(store)  # held, its lease fresh
    writes, real = [], store.db.write

    @contextmanager
    def counted():
        writes.append(1)
        with real() as conn:
            yield conn

    monkeypatch.setattr(store.db, "write", counted)
    assert store.claim_next("d2", LEASE) is None and store.reap_expired(max_attempts=3) == []
    assert writes == []
    queued, _ = store.create(new_job(), max_queued=10)
    assert store.claim_next("d2", LEASE).id == queued.id


def test_old_progress_events_of_finished_jobs_are_pruned_in_batches(store, clock):
    old, _ = store.create(new_job(), max_queued=10)
    _, lease = claim(store)
    for step in range(1, 4):
        store.record_progress(lease, stage=Stage.DENOISING, step=step, total_steps=3)
    store.finish(lease, JobStatus.COMPLETED, artifact=Artifact("k.mp4", 10, "ab" * 32))
    running, _ = store.create(new_job(), max_queued=10)
    claim(store)
    n_old, n_running = len(store.events(old.id)), len(store.events(running.id))
    assert store.prune_events(ended_before=clock() - 3600) == 0  # ended too recently
    assert store.prune_events(ended_before=clock() + 1, limit=2) == 2  # a bounded batch
    assert store.prune_events(ended_before=clock() + 1) == n_old - 2
    assert store.events(old.id) == [] and len(store.events(running.id)) == n_running  # only finished jobs
    assert store.get(old.id).status == JobStatus.COMPLETED  # the job's own record stays
    assert store.prune_events(ended_before=clock() + 1) == 0


def test_delete_only_finished_jobs_then_not_found(store):
    job, _ = store.create(new_job(key="dk"), max_queued=10)
    with pytest.raises(FailedPrecondition, match="cancel it before deleting"):
        store.delete(job.id)
    store.request_cancel(job.id)
    store.delete(job.id)
    with pytest.raises(NotFound):
        store.get(job.id)
    assert store.list("t1")[0] == []
    _, created = store.create(new_job(key="dk"), max_queued=10)  # the key is free again
    assert created


def test_an_expired_lease_is_requeued_by_anyone_and_fences_the_old_holder(store, clock):
    a, _ = store.create(new_job(), max_queued=10)
    b, _ = store.create(new_job(), max_queued=10)
    old_a = store.claim_next("dead", 10).lease  # a dispatcher that then stopped renewing
    store.claim_next("dead", 10)
    store.request_cancel(b.id)  # a cancel asked for while its dispatcher was gone is honoured
    assert store.reap_expired(max_attempts=3) == []  # not yet
    clock.advance(10.5)
    reaped = {j.id: j.status for j in store.reap_expired(max_attempts=3)}
    assert reaped == {a.id: JobStatus.QUEUED, b.id: JobStatus.CANCELLED}
    with pytest.raises(StaleLease):
        store.record_progress(old_a, stage=Stage.DENOISING)
    again, lease = claim(store, "alive")
    assert again.id == a.id and again.attempts == 2 and lease.generation == old_a.generation + 1
    with pytest.raises(StaleLease):
        store.finish(old_a, JobStatus.COMPLETED)  # the old holder's late write is refused
    store.finish(lease, JobStatus.COMPLETED)
    assert "requeued: the lease of dispatcher dead expired" in [e.message for e in store.events(a.id)]
    assert store.reap_expired(max_attempts=3) == []


def test_renewal_keeps_a_lease_and_attempts_run_out(store, clock):
    job, _ = store.create(new_job(), max_queued=10)
    lease = store.claim_next("d1", 10).lease
    for _ in range(3):
        clock.advance(6)
        assert store.renew("d1", [job.id], 10) == {job.id}  # renewed: never expires
        assert store.reap_expired(max_attempts=3) == []
    assert store.renew("d2", [job.id], 10) == set()  # only its holder renews it
    store.requeue(lease, "handed back", count_attempt=False)
    assert store.get(job.id).attempts == 0  # a hand back uses no attempt
    for attempt in (1, 2):
        assert store.claim_next("d1", 10).attempts == attempt
        clock.advance(11)
        [requeued] = store.reap_expired(max_attempts=2)
        assert requeued.status == (JobStatus.QUEUED if attempt == 1 else JobStatus.FAILED)
    failed = store.get(job.id)
    assert failed.error_code == "lease_expired" and "2 attempts" in failed.error_message


def test_list_pages_and_filters(store):
    ids = [store.create(new_job(), max_queued=100)[0].id for _ in range(5)]
    store.create(new_job(tenant="other"), max_queued=100)
    page1, token = store.list("t1", page_size=2)
    page2, token2 = store.list("t1", page_size=2, page_token=token)
    page3, token3 = store.list("t1", page_size=2, page_token=token2)
    assert [j.id for j in page1 + page2 + page3] == ids[::-1] and token3 is None
    store.request_cancel(ids[0])
    cancelled, _ = store.list("t1", status=JobStatus.CANCELLED)
    assert [j.id for j in cancelled] == [ids[0]]
    with pytest.raises(InvalidArgument) as err:
        store.list("t1", page_token="garbage!")
    assert err.value.field == "page_token"


def test_concurrent_claims_never_share_a_job(store):
    n = 40
    for _ in range(n):
        store.create(new_job(), max_queued=100)
    claimed: list[str] = []
    lock = threading.Lock()

    def worker():
        while (job := store.claim_next(threading.current_thread().name, LEASE)) is not None:
            with lock:
                claimed.append(job.id)

    threads = [threading.Thread(target=worker) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(claimed) == n and len(set(claimed)) == n


def test_data_survives_reopening(store_url):
    s1 = open_store(store_url)
    job, _ = s1.create(new_job(key="durable"), max_queued=10)
    s1.close()
    s2 = open_store(store_url)
    assert s2.get(job.id).params == {"prompt": "a cat"}
    s2.close()


def test_enhanced_prompt_is_kept_across_a_restart_and_fenced_by_the_lease(store, clock):
    job, _ = store.create(new_job(), max_queued=10)
    old = store.claim_next("dead", 10).lease
    updated = store.set_enhanced_prompt(old, "a tabby cat naps on a velvet sofa", "prompt enhanced")
    assert updated.enhanced_prompt == "a tabby cat naps on a velvet sofa"
    assert store.events(job.id)[-1].message == "prompt enhanced"
    clock.advance(11)
    store.reap_expired(max_attempts=3)  # the dispatcher died: the job is queued again with its rewrite
    assert store.get(job.id).enhanced_prompt == "a tabby cat naps on a velvet sofa"
    with pytest.raises(StaleLease):
        store.set_enhanced_prompt(old, "late write", "x")
    assert claim(store)[0].enhanced_prompt == "a tabby cat naps on a velvet sofa"


def test_the_window_counts_the_jobs_of_every_dispatcher(store):
    jobs = [store.create(new_job(), max_queued=10)[0] for _ in range(3)]
    first = store.claim_next("a", LEASE, max_in_progress=2)
    assert store.claim_next("b", LEASE, max_in_progress=2) is not None
    assert store.claim_next("a", LEASE, max_in_progress=2) is None  # two in progress, whoever holds them
    store.finish(first.lease, JobStatus.COMPLETED)
    assert store.claim_next("b", LEASE, max_in_progress=2).id == jobs[2].id


def test_a_shrunk_window_and_jobs_without_a_slot_count_against_it(store):
    """Running jobs holding no slot below the window (claimed without one, as before the slots, or under a wider
    window) count against it until they end: the window is never exceeded, even as it shrinks."""
    for _ in range(6):
        store.create(new_job(), max_queued=10)
    bare = store.claim_next("old", LEASE)  # no window: no slot, as a job running at the upgrade
    wide = [store.claim_next("a", LEASE, max_in_progress=4) for _ in range(3)]
    assert all(wide) and store.claim_next("a", LEASE, max_in_progress=4) is None
    assert store.claim_next("b", LEASE, max_in_progress=2) is None  # the window shrank to 2: 4 running
    store.finish(wide[0].lease, JobStatus.COMPLETED)
    store.finish(wide[1].lease, JobStatus.COMPLETED)
    assert store.claim_next("b", LEASE, max_in_progress=2) is None  # 2 running: wide[2] and the bare one
    store.finish(bare.lease, JobStatus.COMPLETED)
    assert store.claim_next("b", LEASE, max_in_progress=2) is not None
    assert store.claim_next("b", LEASE, max_in_progress=2) is None
    assert store.count_by_status(JobStatus.IN_PROGRESS)[JobStatus.IN_PROGRESS] == 2


def test_concurrent_claims_never_exceed_the_window_or_a_tenants_max_concurrent(store_url):
    """Rounds of claimers on stores of their own, let go at once, each claiming until it gets nothing, on a window
    of 5 and a tenant capped at 2: after each round (nothing ends meanwhile, so the count is exact) no more run
    than either allows. (A count checked without a lock, or a slot without its guard, fails this on PostgreSQL.)"""
    window, cap, claimers, rounds = 5, 2, 8, 8
    stores = [SqlJobStore(Database(store_url)) for _ in range(claimers)]
    for i in range(rounds * window):
        stores[0].create(new_job("capped", prompt=f"c{i}"), max_queued=1000, quota=Quota(max_concurrent=cap))
        stores[0].create(new_job("free", prompt=f"f{i}"), max_queued=1000)
    counts, claimed = [], []
    go = threading.Barrier(claimers + 1)

    def claimer(store: SqlJobStore, name: str) -> None:
        for _ in range(rounds):
            go.wait()
            while (job := store.claim_next(name, LEASE, max_in_progress=window)) is not None:
                claimed.append(job)
            go.wait()

    threads = [threading.Thread(target=claimer, args=(s, f"d{n}"), daemon=True) for n, s in enumerate(stores)]
    for t in threads:
        t.start()
    try:
        for _ in range(rounds):
            go.wait(timeout=120)
            go.wait(timeout=120)  # every claimer got nothing more
            running = stores[0].list("capped", status=JobStatus.IN_PROGRESS, page_size=100)[0]
            counts.append((stores[0].count_by_status(JobStatus.IN_PROGRESS)[JobStatus.IN_PROGRESS], len(running)))
            for job in claimed:
                stores[0].finish(job.lease, JobStatus.COMPLETED)
            claimed.clear()
    finally:
        for s in stores:
            s.close()
    assert all(total <= window and capped <= cap for total, capped in counts), counts
    assert (window, cap) in counts  # the window and the cap were reached, not only respected
