"""Durable jobs: the state machine, the records, the store interface and its SQL implementation."""

from serving.jobs.models import Artifact, Job, JobEvent, NewJob, Stage
from serving.jobs.states import IllegalTransition, JobStatus
from serving.jobs.store import JobStore, StaleEpoch

__all__ = ["Artifact", "IllegalTransition", "Job", "JobEvent", "JobStatus", "JobStore", "NewJob", "Stage",
           "StaleEpoch", "open_store"]


def open_store(url: str) -> JobStore:
    """The store for a database URL (sqlite:///path or postgresql://...)."""
    from serving.jobs.sql_store import SqlJobStore

    return SqlJobStore(url)
