"""The job state machine: which status may follow which. Illegal transitions are errors."""

from __future__ import annotations

import enum

from serving.errors import FailedPrecondition


class JobStatus(enum.StrEnum):
    QUEUED = "queued"
    IN_PROGRESS = "in_progress"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"
    DELETED = "deleted"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED, JobStatus.DELETED})

# queued -> in_progress -> completed | failed | cancelled; anything finished may be deleted.
# in_progress -> queued is the requeue after a dispatcher restart (the work starts over).
ALLOWED: dict[JobStatus, frozenset[JobStatus]] = {
    JobStatus.QUEUED: frozenset({JobStatus.IN_PROGRESS, JobStatus.CANCELLED, JobStatus.FAILED}),
    JobStatus.IN_PROGRESS: frozenset({JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED,
                                      JobStatus.QUEUED}),
    JobStatus.COMPLETED: frozenset({JobStatus.DELETED}),
    JobStatus.FAILED: frozenset({JobStatus.DELETED}),
    JobStatus.CANCELLED: frozenset({JobStatus.DELETED}),
    JobStatus.DELETED: frozenset(),
}


class IllegalTransition(FailedPrecondition):
    def __init__(self, job_id: str, current: JobStatus, target: JobStatus) -> None:
        self.job_id, self.current, self.target = job_id, current, target
        super().__init__(f"status: video {job_id} is {current.value}; it cannot become {target.value}", field="status")


def check_transition(job_id: str, current: JobStatus, target: JobStatus) -> None:
    if target not in ALLOWED[current]:
        raise IllegalTransition(job_id, current, target)
