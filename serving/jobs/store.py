"""The job store's interfaces, one per role. SQLite (WAL) is the embedded default; PostgreSQL
implements the same (`serving.jobs.sql_store.SqlJobStore` is all three).

- `SubmissionStore`: what the front door does with jobs (create, read, list, cancel, delete);
- `DispatchQueue`: what the dispatcher does (claim, record progress, finish, requeue);
- `EventLog`: the progress events watchers replay.

Every state change goes through the store before anyone acts on it, so a restart finds the
truth there. Dispatchers hold in-progress jobs with *leases*: a claim gives the claiming dispatcher
a lease (owner, expiry, generation); it renews its leases with a heartbeat; any dispatcher requeues
a job whose lease expired (counting the attempt; past `max_attempts` the job fails with a reason);
and every write carries the lease, refused (`StaleLease`) once a later claim bumped the generation.
So any number of dispatchers, in one cluster or in two during an upgrade, share one database, and a
job is finished once.
"""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Collection

from serving.jobs.models import Artifact, Job, JobEvent, Lease, NewJob, Quota, Review, Stage, Visibility
from serving.jobs.states import JobStatus


class StaleLease(Exception):
    """A dispatcher wrote under a lease it no longer holds (the job was requeued and claimed again, or ended)."""


class _Reads(ABC):
    @abstractmethod
    def get(self, job_id: str) -> Job:
        """The job, unless missing or deleted (NotFound)."""


class SubmissionStore(_Reads):
    """The front door's side: jobs as clients create, read and change them."""

    @abstractmethod
    def create(self, job: NewJob, *, max_queued: int, quota: Quota = Quota()) -> tuple[Job, bool]:
        """Insert a queued job; (job, created). A known idempotency key returns the existing job
        (created=False). Raises ResourceExhausted when `max_queued` jobs are already queued or the
        tenant's quota is used up (naming the quota), and FailedPrecondition when the key was used
        for a different request; nothing is written then."""

    @abstractmethod
    def list(self, tenant: str, *, status: JobStatus | None = None, page_size: int = 20,
             page_token: str | None = None, after_id: str | None = None,
             ascending: bool = False) -> tuple[list[Job], str | None]:
        """A tenant's jobs, newest first (or oldest first), from a page token or past a video id,
        and the token of the next page (None at the end)."""

    @abstractmethod
    def list_public(self, *, page_size: int = 20, page_token: str | None = None) -> tuple[list[Job], str | None]:
        """Completed public videos of every tenant, newest first."""

    @abstractmethod
    def list_by_cameo(self, cameo_id: str, *, page_size: int = 20,
                      page_token: str | None = None) -> tuple[list[Job], str | None]:
        """Every video that uses a cameo, whoever made it."""

    @abstractmethod
    def active_with_cameo(self, cameo_id: str) -> list[Job]:
        """Queued and in-progress jobs that use a cameo."""

    @abstractmethod
    def set_visibility(self, job_id: str, visibility: Visibility) -> Job: ...

    @abstractmethod
    def set_review(self, job_id: str, review: Review) -> Job: ...

    @abstractmethod
    def queue_position(self, job_id: str) -> int | None:
        """0-based position among queued jobs (priority, then arrival); None if not queued."""

    @abstractmethod
    def request_cancel(self, job_id: str, *, reason: str = "cancelled",
                       message: str = "cancelled by the client") -> Job:
        """Queued: cancelled at once. In progress: flagged for the dispatcher. Cancelled already (its dispatcher,
        told first, stopped it): as it is. Completed, failed or deleted: FailedPrecondition. `reason` becomes
        the job's error code (e.g. "cancelled", "consent_revoked")."""

    @abstractmethod
    def delete(self, job_id: str) -> Job:
        """A finished job becomes deleted (its artifact is the caller's to remove)."""

class DispatchQueue(_Reads):
    """The dispatcher's side: the queue of work and the writes that move a job along."""

    @abstractmethod
    def count_by_status(self, *statuses: JobStatus) -> dict[JobStatus, int]:
        """Jobs in each of `statuses` (all statuses when none is named); the active ones (queued, in
        progress) are read through an index, whatever the length of the history."""

    @abstractmethod
    def claim_next(self, owner: str, lease_seconds: float, *, max_in_progress: int | None = None) -> Job | None:
        """The next queued job (highest priority, then oldest) whose tenant is under its concurrency
        limit, now in progress under a new lease of `owner` (`job.lease`); None as well when
        `max_in_progress` jobs are in progress already, whoever holds them (the cluster-wide window)."""

    @abstractmethod
    def prune_events(self, ended_before: float, limit: int = 10_000) -> int:
        """Delete up to `limit` progress events of jobs that ended before `ended_before` (a time.time());
        how many went. Only reads when there is nothing to delete."""

    @abstractmethod
    def cancels_requested(self, job_ids: Collection[str]) -> set[str]:
        """Which of `job_ids` a client asked to cancel (a read: the heartbeat's fallback to the hub)."""

    @abstractmethod
    def renew(self, owner: str, job_ids: Collection[str], lease_seconds: float) -> set[str]:
        """Extend `owner`'s leases on `job_ids` (the jobs it is working on); the ids it still holds. A job
        it holds but no longer works on (a lost task) is not renewed: its lease expires and it is requeued."""

    @abstractmethod
    def reap_expired(self, max_attempts: int) -> list[Job]:
        """Requeue every in-progress job whose lease expired (a cancel requested: cancelled; `max_attempts`
        claims used: failed with `lease_expired`); the jobs as they are now."""

    @abstractmethod
    def record_progress(self, lease: Lease, *, stage: Stage, step: int = 0, total_steps: int = 0,
                        progress: float = 0.0, eta_seconds: float | None = None, batch_size: int = 0,
                        message: str = "", resumed_from_step: int | None = None) -> bool:
        """Store a progress event (and, given, the step this attempt resumed at); returns whether a cancel was
        requested. Raises StaleLease."""

    @abstractmethod
    def record_checkpoint(self, lease: Lease, key: str, step: int) -> None:
        """The job's denoise state is in the artifact store under `key`, at `step`: a retried attempt starts
        there. Fenced like every write of the holder (a stale writer raises StaleLease). No event: a checkpoint
        is not a change a watcher sees."""

    @abstractmethod
    def set_enhanced_prompt(self, lease: Lease, prompt: str, message: str) -> Job:
        """Keep the prompt the enhancer wrote (a resumed job reuses it). Raises StaleLease."""

    @abstractmethod
    def finish(self, lease: Lease, status: JobStatus, *, artifact: Artifact | None = None,
               error_code: str | None = None, error_message: str | None = None, step: int | None = None,
               steps_run: int = 0) -> Job:
        """Move an in-progress job to completed, failed or cancelled; `step`, when given, is the last step it
        took (a cancelled or failed job's record ends where its pushed progress did); `steps_run`: the denoising
        steps this claim's attempts computed. Its checkpoint record goes. Raises StaleLease."""

    @abstractmethod
    def requeue(self, lease: Lease, message: str, *, count_attempt: bool = True) -> Job:
        """Put a held job back in the queue (its work starts over); `count_attempt=False` hands it back
        without using one of its attempts (its dispatcher is stopping). Raises StaleLease."""


class EventLog(ABC):
    """What watchers read: every progress event and status change of a job."""

    @abstractmethod
    def events(self, job_id: str, after_id: int = 0) -> list[JobEvent]:
        """Events of a job with id > after_id, oldest first."""


class JobStore(SubmissionStore, DispatchQueue, EventLog):
    """All three roles over one database."""

    @abstractmethod
    def close(self) -> None:
        """Release connections."""
