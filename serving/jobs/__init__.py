"""Durable jobs: the state machine, the records, the store interface and its SQL implementation."""

from serving.jobs.models import (
    Artifact,
    Conditioning,
    Job,
    JobEvent,
    Lease,
    NewJob,
    Quota,
    Review,
    Stage,
    Visibility,
    denoise_checkpoint_key,
)
from serving.jobs.states import IllegalTransition, JobStatus
from serving.jobs.store import DispatchQueue, EventLog, JobStore, StaleLease, SubmissionStore

__all__ = ["Artifact", "Conditioning", "DispatchQueue", "EventLog", "IllegalTransition", "Job", "JobEvent",
           "JobStatus", "JobStore", "Lease", "NewJob", "Quota", "Review", "Stage", "StaleLease", "SubmissionStore",
           "Visibility", "denoise_checkpoint_key", "open_store"]


def open_store(url: str) -> JobStore:
    """A job store on its own database connection (sqlite:///path or postgresql://...)."""
    from serving.db import Database
    from serving.jobs.sql_store import SqlJobStore

    return SqlJobStore(Database(url))
