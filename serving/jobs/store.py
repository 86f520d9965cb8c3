"""The job store's interfaces, one per role. SQLite (WAL) is the embedded default; PostgreSQL
implements the same (`serving.jobs.sql_store.SqlJobStore` is all three).

- `SubmissionStore`: what the front door does with jobs (create, read, list, cancel, delete);
- `DispatchQueue`: what the dispatcher does (claim, record progress, finish, requeue);
- `EventLog`: the progress events watchers replay.

Every state change goes through the store before anyone acts on it, so a restart finds the
truth there. The dispatcher owns in-progress jobs through an *epoch*: each dispatcher start
takes a new one, and a write from an older epoch is refused (`StaleEpoch`), so a job resumed
after a crash can never be finished twice.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

from serving.jobs.models import Artifact, Job, JobEvent, NewJob, Quota, Review, Stage, Visibility
from serving.jobs.states import JobStatus


class StaleEpoch(Exception):
    """A dispatcher wrote to a job another (newer) dispatcher owns."""


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
        """Queued: cancelled at once. In progress: flagged for the dispatcher. Finished: FailedPrecondition.
        `reason` becomes the job's error code (e.g. "cancelled", "consent_revoked")."""

    @abstractmethod
    def delete(self, job_id: str) -> Job:
        """A finished job becomes deleted (its artifact is the caller's to remove)."""

class DispatchQueue(_Reads):
    """The dispatcher's side: the queue of work and the writes that move a job along."""

    @abstractmethod
    def count_by_status(self) -> dict[JobStatus, int]: ...

    @abstractmethod
    def begin_epoch(self) -> int:
        """A new dispatcher epoch; every in-progress job of an older epoch goes back to the queue."""

    @abstractmethod
    def claim_next(self, epoch: int) -> Job | None:
        """The next queued job (highest priority, then oldest) whose tenant is under its concurrency
        limit, now in progress under `epoch`."""

    @abstractmethod
    def record_progress(self, job_id: str, epoch: int, *, stage: Stage, step: int = 0, total_steps: int = 0,
                        progress: float = 0.0, eta_seconds: float | None = None, batch_size: int = 0,
                        message: str = "") -> bool:
        """Store a progress event; returns whether a cancel was requested. Raises StaleEpoch."""

    @abstractmethod
    def set_enhanced_prompt(self, job_id: str, epoch: int, prompt: str, message: str) -> Job:
        """Keep the prompt the enhancer wrote (a resumed job reuses it). Raises StaleEpoch."""

    @abstractmethod
    def finish(self, job_id: str, epoch: int, status: JobStatus, *, artifact: Artifact | None = None,
               error_code: str | None = None, error_message: str | None = None) -> Job:
        """Move an in-progress job to completed, failed or cancelled. Raises StaleEpoch."""

    @abstractmethod
    def in_progress(self, epoch: int) -> list[str]:
        """Ids of the jobs in progress under `epoch`."""

    @abstractmethod
    def requeue(self, job_id: str, epoch: int, message: str) -> Job:
        """Put an in-progress job of `epoch` back in the queue (its work starts over). Raises StaleEpoch."""

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
