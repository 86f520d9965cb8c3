"""`JobStore` on SQLAlchemy Core: SQLite (WAL) by default, PostgreSQL by URL (see serving.db).

One implementation for both databases; PostgreSQL locks the counter row to serialize admission,
skips locked rows when claiming and keeps the in-flight window with a slot per running job (taken
under a try-lock, so claims never queue on one another: `_claim`); SQLite's up-front write lock
serializes all of it.
"""

from __future__ import annotations

import base64
import json
import random
import time
from collections.abc import Callable, Collection, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from serving.db import Database
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, Reason, ResourceExhausted
from serving.jobs.models import Artifact, Conditioning, Job, JobEvent, Lease, NewJob, Quota, Review, Stage, Visibility
from serving.jobs.states import TERMINAL, JobStatus, check_transition
from serving.jobs.store import JobStore, StaleLease
from serving.schema import job_events as events
from serving.schema import jobs
from serving.schema import kino_meta as meta

# a job that leaves in_progress is held by nobody, and frees its window slot
_NO_LEASE = {"lease_owner": None, "lease_expires_at": None, "claim_slot": None}
_CLAIM_TRIES = 3  # a claim raced out of its slot (or its tenant's last place) tries again this often
_SLOT_TRIES = 16  # free slots a PostgreSQL claim tries the lock of before it finds the window full
# PostgreSQL advisory lock classes (the two-key form: apart from the migrations' one-key lock)
_SLOT_LOCKS = 7172018  # (class, slot): a claim taking a window slot
_TENANT_LOCKS = 7172019  # (class, hashtext(tenant)): a claim of a tenant with max_concurrent
_TAKEN = object()


class SqlJobStore(JobStore):
    def __init__(self, db: Database, clock: Callable[[], float] = time.time) -> None:
        """`clock`: wall-clock seconds, for every time the store records or compares (leases, events, quotas);
        tests pass one they move by hand."""
        self.db = db  # its counter (kino_meta next_seq) comes with the schema (serving/migrations)
        self.clock = clock

    # -- connections ---------------------------------------------------------------------
    @contextmanager
    def _write(self) -> Iterator[Connection]:
        with self.db.write() as conn:
            yield conn

    @contextmanager
    def _read(self) -> Iterator[Connection]:
        with self.db.read() as conn:
            yield conn

    def _lock(self, conn: Connection, key: str) -> int:
        """Lock a counter row until the transaction ends (PostgreSQL; SQLite's write lock already
        serializes writers); its value."""
        return conn.execute(sa.select(meta.c.value).where(meta.c.key == key).with_for_update()).one().value

    def _bump(self, conn: Connection, key: str) -> int:
        """Increment a counter; on PostgreSQL the row lock also serializes queue admission."""
        value = self._lock(conn, key) + 1
        conn.execute(meta.update().where(meta.c.key == key).values(value=value))
        return value

    def close(self) -> None:
        self.db.dispose()

    def _any(self, where: Any) -> bool:
        """Whether a row matches (a read through an index, before a write transaction is worth taking)."""
        with self._read() as conn:
            return conn.execute(sa.select(jobs.c.id).where(where).limit(1)).first() is not None

    # -- front door ------------------------------------------------------------------------
    def create(self, job: NewJob, *, max_queued: int, quota: Quota = Quota()) -> tuple[Job, bool]:
        with self._write() as conn:
            seq = self._bump(conn, "next_seq")  # first: takes the admission lock
            if job.idempotency_key:
                existing = conn.execute(sa.select(jobs).where(
                    jobs.c.tenant == job.tenant, jobs.c.idempotency_key == job.idempotency_key)).first()
                if existing is not None:
                    if existing.request_hash != job.request_hash:
                        raise FailedPrecondition(
                            f"idempotency_key {job.idempotency_key!r} was already used for a different request",
                            field="idempotency_key")
                    return _job(existing), False
            queued = jobs.c.status == JobStatus.QUEUED.value
            total = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(queued)).scalar_one()
            if total >= max_queued:
                raise ResourceExhausted(f"queue: the queue is full ({total} of {max_queued} jobs queued); "
                                        "retry later", field="queue")
            self._check_quota(conn, job, quota)
            now = self.clock()
            c = job.conditioning
            conn.execute(jobs.insert().values(
                id=job.id, tenant=job.tenant, model=job.model, priority=job.priority,
                params=json.dumps(job.params), status=JobStatus.QUEUED.value, seq=seq, created_at=now,
                request_hash=job.request_hash, idempotency_key=job.idempotency_key or None, user=job.user,
                seconds=float(job.params.get("seconds") or 0.0), max_concurrent=quota.max_concurrent,
                visibility=job.visibility.value, review=job.review.value, image_key=c.image_key,
                parent_id=c.parent_id, parent_key=c.parent_key, strength=c.strength, cameo_id=c.cameo_id))
            self._insert_event(conn, job.id, JobStatus.QUEUED, Stage.QUEUED, message="queued", at=now)
            return _job(conn.execute(sa.select(jobs).where(jobs.c.id == job.id)).one()), True

    def _check_quota(self, conn: Connection, job: NewJob, quota: Quota) -> None:
        mine = jobs.c.tenant == job.tenant
        if quota.max_queued:
            n = conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                mine, jobs.c.status == JobStatus.QUEUED.value)).scalar_one()
            if n >= quota.max_queued:
                raise ResourceExhausted(f"quota max_queued exceeded: {n} of {quota.max_queued} of your jobs are "
                                        "queued; wait for some to start", field="quota.max_queued",
                                        reason=Reason.QUOTA)
        if quota.seconds_per_day:
            day_start = self.clock() - self.clock() % 86400  # UTC midnight
            used = conn.execute(sa.select(sa.func.coalesce(sa.func.sum(jobs.c.seconds), 0.0)).where(
                mine, jobs.c.created_at >= day_start,
                jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value, JobStatus.COMPLETED.value,
                                   JobStatus.DELETED.value]))).scalar_one()
            asked = float(job.params.get("seconds") or 0.0)
            if used + asked > quota.seconds_per_day:
                raise ResourceExhausted(
                    f"quota seconds_per_day exceeded: {used:g} s used today + {asked:g} s asked > "
                    f"{quota.seconds_per_day:g} s allowed per day (UTC)", field="quota.seconds_per_day",
                    reason=Reason.QUOTA)

    def get(self, job_id: str) -> Job:
        with self._read() as conn:
            return self._get(conn, job_id)

    def _get(self, conn: Connection, job_id: str, *, lock: bool = False) -> Job:
        q = sa.select(jobs).where(jobs.c.id == job_id)
        row = conn.execute(q.with_for_update() if lock else q).first()
        if row is None or row.status == JobStatus.DELETED.value:
            raise NotFound(f"id {job_id!r} not found: no such video", field="id")
        return _job(row)

    def list(self, tenant: str, *, status: JobStatus | None = None, page_size: int = 20,
             page_token: str | None = None, after_id: str | None = None,
             ascending: bool = False) -> tuple[list[Job], str | None]:
        q = sa.select(jobs).where(jobs.c.tenant == tenant, jobs.c.status != JobStatus.DELETED.value)
        if status is not None:
            q = q.where(jobs.c.status == status.value)
        if after_id:  # an id cursor (the OpenAI-style `after`): continue past that video
            with self._read() as conn:
                seq = conn.execute(sa.select(jobs.c.seq).where(jobs.c.id == after_id, jobs.c.tenant == tenant)).scalar()
            if seq is None:
                raise InvalidArgument(f"after={after_id!r} is not one of your videos", field="after")
            page_token = _encode_token(seq)
        return self._page(q, page_size, page_token, ascending=ascending)

    def list_public(self, *, page_size: int = 20, page_token: str | None = None) -> tuple[list[Job], str | None]:
        q = sa.select(jobs).where(jobs.c.visibility == Visibility.PUBLIC.value,
                                  jobs.c.status == JobStatus.COMPLETED.value, jobs.c.review != Review.PENDING.value)
        return self._page(q, page_size, page_token)

    def list_by_cameo(self, cameo_id: str, *, page_size: int = 20,
                      page_token: str | None = None) -> tuple[list[Job], str | None]:
        q = sa.select(jobs).where(jobs.c.cameo_id == cameo_id, jobs.c.status != JobStatus.DELETED.value)
        return self._page(q, page_size, page_token)

    def active_with_cameo(self, cameo_id: str) -> list[Job]:
        with self._read() as conn:
            rows = conn.execute(sa.select(jobs).where(
                jobs.c.cameo_id == cameo_id,
                jobs.c.status.in_([JobStatus.QUEUED.value, JobStatus.IN_PROGRESS.value]))).all()
        return [_job(r) for r in rows]

    def _page(self, q: sa.Select, page_size: int, page_token: str | None,
              ascending: bool = False) -> tuple[list[Job], str | None]:
        if page_token:
            seq = _decode_token(page_token)
            q = q.where(jobs.c.seq > seq if ascending else jobs.c.seq < seq)
        order = jobs.c.seq.asc() if ascending else jobs.c.seq.desc()
        with self._read() as conn:
            rows = conn.execute(q.order_by(order).limit(page_size + 1)).all()
        page = [_job(r) for r in rows[:page_size]]
        return page, (_encode_token(page[-1].seq) if len(rows) > page_size else None)

    def set_visibility(self, job_id: str, visibility: Visibility) -> Job:
        with self._write() as conn:
            self._get(conn, job_id, lock=True)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(visibility=visibility.value))
            return self._get(conn, job_id)

    def set_review(self, job_id: str, review: Review) -> Job:
        with self._write() as conn:
            self._get(conn, job_id, lock=True)
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(review=review.value))
            self._insert_event(conn, job_id, JobStatus(self._get(conn, job_id).status), Stage.DONE,
                          message=f"review: {review.value}")
            return self._get(conn, job_id)

    def queue_position(self, job_id: str) -> int | None:
        with self._read() as conn:
            job = self._get(conn, job_id)
            if job.status != JobStatus.QUEUED:
                return None
            ahead = sa.or_(jobs.c.priority > job.priority,
                           sa.and_(jobs.c.priority == job.priority, jobs.c.seq < job.seq))
            return conn.execute(sa.select(sa.func.count()).select_from(jobs).where(
                jobs.c.status == JobStatus.QUEUED.value, ahead)).scalar_one()

    def count_by_status(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        q = sa.select(jobs.c.status, sa.func.count())
        if statuses:
            q = q.where(jobs.c.status.in_([s.value for s in statuses]))
        with self._read() as conn:
            rows = conn.execute(q.group_by(jobs.c.status)).all()
        counts = {s: 0 for s in (statuses or JobStatus)}
        counts.update({JobStatus(s): n for s, n in rows})
        return counts

    def request_cancel(self, job_id: str, *, reason: str = "cancelled",
                       message: str = "cancelled by the client") -> Job:
        with self._write() as conn:
            job = self._get(conn, job_id, lock=True)
            if job.status == JobStatus.CANCELLED:  # its dispatcher, told first, has already stopped it
                return job
            if job.status == JobStatus.QUEUED:
                return self._set_status(conn, job, JobStatus.CANCELLED, error_code=reason, error_message=message,
                                        completed_at=self.clock(), message=f"{message} (while queued)")
            check_transition(job.id, job.status, JobStatus.CANCELLED)  # finished jobs: FailedPrecondition
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(
                cancel_requested=True, cancel_reason=reason, error_message=message))
            return self._get(conn, job_id)

    def delete(self, job_id: str) -> Job:
        with self._write() as conn:
            job = self._get(conn, job_id, lock=True)
            if not job.status.terminal:
                raise FailedPrecondition(f"id {job_id} is {job.status.value}; cancel it before deleting it",
                                         field="id")
            # The tombstone frees its idempotency key: a later request with that key is a new request.
            conn.execute(jobs.update().where(jobs.c.id == job_id).values(idempotency_key=None))
            return self._set_status(conn, job, JobStatus.DELETED, message="deleted")

    # -- dispatcher ------------------------------------------------------------------------------
    def claim_next(self, owner: str, lease_seconds: float, *, max_in_progress: int | None = None) -> Job | None:
        if not self._any(jobs.c.status == JobStatus.QUEUED.value):
            return None  # an idle cluster takes no write lock
        with self._write() as conn:
            for _ in range(_CLAIM_TRIES):
                job = self._claim(conn, owner, lease_seconds, max_in_progress)
                if job is not _TAKEN:
                    return job
            return None  # raced out each time (rare): the dispatcher looks again at its next wake

    def _claim(self, conn: Connection, owner: str, lease_seconds: float, window: int | None) -> Any:
        """One try at a claim: the job, None (nothing to claim, the window full), or _TAKEN (another claim took
        the slot or the tenant's last place since this one looked: try again).

        The window: a running job holds a slot, 0 to `window` - 1, and no two running jobs share one (a unique
        index). Jobs that hold none (they ran from before the slots, or were claimed without a window) or one past
        a window that shrank count against it, so a claim takes a slot below `window` - their count: they only
        end, never start, so every running job's slot stays under `window` less those left, and the running jobs
        never exceed the window. On PostgreSQL concurrent claims try-lock the free slots they find (an advisory
        lock per slot, held to commit) and go on to another when one is taken, so no claim queues behind another:
        the update then checks, in a snapshot taken after the lock, that no running job holds the slot (a claim
        that held it committed before the lock was free). SQLite's write lock serializes the claims anyway.
        A tenant at its max_concurrent: the claims of its jobs take turns on a lock of the tenant's, and the update
        checks its count again."""
        running_now = jobs.c.status == JobStatus.IN_PROGRESS.value
        outside = (sa.or_(jobs.c.claim_slot.is_(None), jobs.c.claim_slot >= window) if window is not None
                   else sa.false())
        rows = conn.execute(sa.select(jobs.c.tenant, sa.func.count(), sa.func.sum(sa.case((outside, 1), else_=0)))
                            .where(running_now).group_by(jobs.c.tenant)).all()
        running = {tenant: n for tenant, n, _ in rows}
        slot = None
        if window is not None:
            if sum(running.values()) >= window:
                return None
            slot = self._free_slot(conn, window - sum(int(out or 0) for *_, out in rows))
            if slot is None:
                return None
        # A tenant at its max_concurrent waits; others go ahead (filtered in SQL, so however long a
        # capped tenant's backlog, it never hides the others' jobs).
        at_cap = [sa.and_(jobs.c.tenant == tenant, jobs.c.max_concurrent > 0, jobs.c.max_concurrent <= n)
                  for tenant, n in running.items()]
        # PostgreSQL: dispatchers claiming at once skip each other's locked rows; SQLite: the write
        # lock taken up front (BEGIN IMMEDIATE) serializes the claims.
        row = conn.execute(
            sa.select(jobs).where(jobs.c.status == JobStatus.QUEUED.value, sa.not_(sa.or_(sa.false(), *at_cap)))
            .order_by(jobs.c.priority.desc(), jobs.c.seq.asc()).limit(1)
            .with_for_update(skip_locked=True)).first()
        if row is None:
            return None
        job, now = _job(row), self.clock()
        other = jobs.alias("running")
        guards = []
        if slot is not None:
            guards.append(~sa.exists().where(other.c.status == JobStatus.IN_PROGRESS.value, other.c.claim_slot == slot))
        if row.max_concurrent > 0:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.select(sa.func.pg_advisory_xact_lock(_TENANT_LOCKS, sa.func.hashtext(job.tenant))))
            guards.append(sa.select(sa.func.count()).select_from(other).where(
                other.c.status == JobStatus.IN_PROGRESS.value, other.c.tenant == job.tenant).scalar_subquery()
                < row.max_concurrent)
        check_transition(job.id, job.status, JobStatus.IN_PROGRESS)
        done = conn.execute(jobs.update().where(jobs.c.id == job.id, *guards).values(
            status=JobStatus.IN_PROGRESS.value, started_at=now, attempts=job.attempts + 1,
            stage=Stage.ENCODING.value, lease_owner=owner, lease_generation=job.lease_generation + 1,
            lease_expires_at=now + lease_seconds, claim_slot=slot))
        if done.rowcount != 1:
            return _TAKEN
        updated = _job(conn.execute(sa.select(jobs).where(jobs.c.id == job.id)).one())
        self._insert_event(conn, job.id, JobStatus.IN_PROGRESS, updated.stage, step=updated.step,
                           total_steps=updated.total_steps, progress=updated.progress, message="started")
        return updated

    def _free_slot(self, conn: Connection, slots: int) -> int | None:
        """A window slot below `slots` that no running job holds: on PostgreSQL one this transaction now holds
        the try-lock of (None when every free one is locked by another claim), on SQLite the lowest."""
        if slots <= 0:
            return None
        held = sa.select(jobs.c.claim_slot).where(jobs.c.status == JobStatus.IN_PROGRESS.value,
                                                  jobs.c.claim_slot.is_not(None), jobs.c.claim_slot < slots)
        if conn.dialect.name != "postgresql":
            taken = set(conn.execute(held).scalars())
            return next((s for s in range(slots) if s not in taken), None)
        # The free slots from a random place on (claims at once mostly look at different ones), a few of them;
        # the first whose lock is free. The LIMIT keeps the lock call outside the subquery, row by row.
        free = sa.text(
            "SELECT s FROM (SELECT s FROM generate_series(0, :n - 1) AS s "
            "WHERE NOT EXISTS (SELECT 1 FROM jobs WHERE status = :running AND claim_slot = s) "
            "ORDER BY (s + :start) % :n LIMIT :tries) AS free "
            "WHERE pg_try_advisory_xact_lock(:locks, free.s) LIMIT 1")
        return conn.execute(free, {"n": slots, "running": JobStatus.IN_PROGRESS.value,
                                   "start": random.randrange(slots), "tries": _SLOT_TRIES,
                                   "locks": _SLOT_LOCKS}).scalar()

    def prune_events(self, ended_before: float, limit: int = 10_000) -> int:
        ended = sa.select(jobs.c.id).where(jobs.c.status.in_([s.value for s in TERMINAL]),
                                           jobs.c.completed_at < ended_before)
        old = sa.select(events.c.id).where(events.c.job_id.in_(ended)).limit(limit)
        with self._read() as conn:
            if conn.execute(old.limit(1)).first() is None:
                return 0
        with self._write() as conn:
            ids = list(conn.execute(old).scalars())
            conn.execute(events.delete().where(events.c.id.in_(ids)))
            return len(ids)

    def cancels_requested(self, job_ids: Collection[str]) -> set[str]:
        if not job_ids:
            return set()
        with self._read() as conn:
            return set(conn.execute(sa.select(jobs.c.id).where(jobs.c.id.in_(list(job_ids)),
                                                                jobs.c.cancel_requested)).scalars())

    def renew(self, owner: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        if not job_ids:
            return set()
        with self._write() as conn:
            mine = sa.and_(jobs.c.status == JobStatus.IN_PROGRESS.value, jobs.c.lease_owner == owner,
                           jobs.c.id.in_(list(job_ids)))
            conn.execute(jobs.update().where(mine).values(lease_expires_at=self.clock() + lease_seconds))
            return set(conn.execute(sa.select(jobs.c.id).where(mine)).scalars())

    def reap_expired(self, max_attempts: int) -> list[Job]:
        lapsed = sa.and_(jobs.c.status == JobStatus.IN_PROGRESS.value,
                         sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < self.clock()))
        if not self._any(lapsed):
            return []  # nothing expired: no write lock
        with self._write() as conn:
            expired = conn.execute(sa.select(jobs).where(
                jobs.c.status == JobStatus.IN_PROGRESS.value,
                sa.or_(jobs.c.lease_expires_at.is_(None), jobs.c.lease_expires_at < self.clock()))
                .with_for_update(skip_locked=True)).all()
            out = []
            for row in expired:
                job = _job(row)
                holder = f"dispatcher {job.lease_owner}" if job.lease_owner else "its dispatcher"
                if job.cancel_requested:
                    done = self._set_status(conn, job, JobStatus.CANCELLED, error_code=job.cancel_reason or "cancelled",
                                            error_message=job.error_message or "cancelled by the client",
                                            completed_at=self.clock(), **_NO_LEASE,
                                            message=f"cancelled: the lease of {holder} expired")
                elif job.attempts >= max_attempts:
                    done = self._set_status(conn, job, JobStatus.FAILED, error_code="lease_expired",
                                            error_message=f"{holder} stopped holding it on each of its {job.attempts} "
                                                          f"attempts (queue.max_attempts)",
                                            completed_at=self.clock(), message="failed: its leases kept expiring",
                                            **_NO_LEASE)
                else:
                    done = self._set_status(conn, job, JobStatus.QUEUED, stage=Stage.QUEUED, step=0, progress=0.0,
                                            message=f"requeued: the lease of {holder} expired", **_NO_LEASE)
                out.append(done)
            return out

    def record_progress(self, lease: Lease, *, stage: Stage, step: int = 0, total_steps: int = 0,
                        progress: float = 0.0, eta_seconds: float | None = None, batch_size: int = 0,
                        message: str = "", resumed_from_step: int | None = None) -> bool:
        with self._write() as conn:
            job = self._held(conn, lease)
            resumed = {} if resumed_from_step is None else {"resumed_from_step": resumed_from_step}
            conn.execute(jobs.update().where(jobs.c.id == job.id).values(
                stage=stage.value, step=step, total_steps=total_steps, progress=progress, eta_seconds=eta_seconds,
                **resumed))
            self._insert_event(conn, job.id, job.status, stage, step=step, total_steps=total_steps, progress=progress,
                          eta_seconds=eta_seconds, batch_size=batch_size, message=message)
            return job.cancel_requested

    def record_checkpoint(self, lease: Lease, key: str, step: int) -> None:
        with self._write() as conn:
            job = self._held(conn, lease)
            conn.execute(jobs.update().where(jobs.c.id == job.id).values(checkpoint_key=key, checkpoint_step=step))

    def set_enhanced_prompt(self, lease: Lease, prompt: str, message: str) -> Job:
        with self._write() as conn:
            job = self._held(conn, lease)
            conn.execute(jobs.update().where(jobs.c.id == job.id).values(enhanced_prompt=prompt))
            self._insert_event(conn, job.id, job.status, job.stage, step=job.step, total_steps=job.total_steps,
                          progress=job.progress, message=message)
            return self._get(conn, job.id)

    def finish(self, lease: Lease, status: JobStatus, *, artifact: Artifact | None = None,
               error_code: str | None = None, error_message: str | None = None, step: int | None = None,
               steps_run: int = 0) -> Job:
        if not status.terminal or status == JobStatus.DELETED:
            raise ValueError(f"finish() takes completed, failed or cancelled, not {status.value}")
        with self._write() as conn:
            job = self._held(conn, lease)
            extra: dict[str, Any] = {} if step is None else {"step": step}
            # An ended job needs no checkpoint (its dispatcher deletes the object); the steps its attempts ran add up.
            extra.update(checkpoint_key=None, checkpoint_step=None,
                         denoise_steps_run=job.denoise_steps_run + steps_run)
            if artifact is not None:
                extra.update(artifact_key=artifact.key, artifact_size=artifact.size_bytes,
                             artifact_sha256=artifact.sha256, artifact_content_type=artifact.content_type)
            done = status == JobStatus.COMPLETED
            return self._set_status(conn, job, status, completed_at=self.clock(), error_code=error_code,
                                    error_message=error_message, stage=Stage.DONE,
                                    progress=1.0 if done else job.progress,
                                    message=error_message or status.value, **extra, **_NO_LEASE)

    def requeue(self, lease: Lease, message: str, *, count_attempt: bool = True) -> Job:
        with self._write() as conn:
            job = self._held(conn, lease)
            return self._set_status(conn, job, JobStatus.QUEUED, message=message, stage=Stage.QUEUED, step=0,
                                    progress=0.0, attempts=job.attempts if count_attempt else job.attempts - 1,
                                    **_NO_LEASE)

    def _held(self, conn: Connection, lease: Lease) -> Job:
        """The job, locked, if `lease` still holds it (the fencing check of every dispatcher write)."""
        row = conn.execute(sa.select(jobs).where(jobs.c.id == lease.job_id).with_for_update()).first()
        if (row is None or row.status != JobStatus.IN_PROGRESS.value or row.lease_owner != lease.owner
                or row.lease_generation != lease.generation):
            raise StaleLease(f"job {lease.job_id} is no longer held by {lease.owner} (generation "
                             f"{lease.generation})")
        return _job(row)

    def _set_status(self, conn: Connection, job: Job, status: JobStatus, *, message: str = "",
                    **values: Any) -> Job:
        check_transition(job.id, job.status, status)
        if isinstance(values.get("stage"), Stage):
            values["stage"] = values["stage"].value
        conn.execute(jobs.update().where(jobs.c.id == job.id).values(status=status.value, **values))
        updated = _job(conn.execute(sa.select(jobs).where(jobs.c.id == job.id)).one())
        self._insert_event(conn, job.id, status, updated.stage, step=updated.step, total_steps=updated.total_steps,
                      progress=updated.progress, message=message)
        return updated

    # -- watchers ------------------------------------------------------------------------------
    def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        with self._read() as conn:
            rows = conn.execute(sa.select(events).where(events.c.job_id == job_id, events.c.id > after_id)
                                .order_by(events.c.id)).all()
        return [JobEvent(id=r.id, job_id=r.job_id, at=r.at, status=JobStatus(r.status), stage=Stage(r.stage),
                         step=r.step, total_steps=r.total_steps, progress=r.progress, eta_seconds=r.eta_seconds,
                         batch_size=r.batch_size, message=r.message, extra=json.loads(r.extra))
                for r in rows]


    def _insert_event(self, conn: Connection, job_id: str, status: JobStatus, stage: Stage, *,
                      at: float | None = None, **values: Any) -> None:
        conn.execute(events.insert().values(job_id=job_id, at=at or self.clock(), status=status.value,
                                            stage=stage.value, **values))


def _job(row: Any) -> Job:
    artifact = (Artifact(key=row.artifact_key, size_bytes=row.artifact_size, sha256=row.artifact_sha256,
                         content_type=row.artifact_content_type or "video/mp4") if row.artifact_key else None)
    return Job(id=row.id, tenant=row.tenant, model=row.model, priority=row.priority, params=json.loads(row.params),
               status=JobStatus(row.status), seq=row.seq, created_at=row.created_at, request_hash=row.request_hash,
               idempotency_key=row.idempotency_key, started_at=row.started_at, completed_at=row.completed_at,
               stage=Stage(row.stage), step=row.step, total_steps=row.total_steps, progress=row.progress,
               eta_seconds=row.eta_seconds, error_code=row.error_code, error_message=row.error_message,
               artifact=artifact, attempts=row.attempts, lease_owner=row.lease_owner,
               lease_generation=row.lease_generation, lease_expires_at=row.lease_expires_at,
               cancel_requested=bool(row.cancel_requested),
               cancel_reason=row.cancel_reason, user=row.user, visibility=Visibility(row.visibility),
               review=Review(row.review), enhanced_prompt=row.enhanced_prompt, checkpoint_key=row.checkpoint_key,
               checkpoint_step=row.checkpoint_step, resumed_from_step=row.resumed_from_step,
               denoise_steps_run=row.denoise_steps_run,
               conditioning=Conditioning(image_key=row.image_key, parent_id=row.parent_id, parent_key=row.parent_key,
                                         strength=row.strength, cameo_id=row.cameo_id))


def _encode_token(seq: int) -> str:
    return base64.urlsafe_b64encode(f"seq:{seq}".encode()).decode()


def _decode_token(token: str) -> int:
    try:
        kind, value = base64.urlsafe_b64decode(token.encode()).decode().split(":")
        if kind != "seq":
            raise ValueError(kind)
        return int(value)
    except (ValueError, UnicodeDecodeError):
        raise InvalidArgument(f"page_token {token!r} is not a token this server issued", field="page_token") from None
