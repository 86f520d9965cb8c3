"""Fixtures of the control plane's tests in this process: a job store with jobs to add, and the artifact store."""

from __future__ import annotations

import pytest

from engines.params import GenerationRequest, params_to_dict
from serving.artifacts import LocalArtifactStore
from serving.jobs import NewJob, open_store
from tests.tools import migrated


@pytest.fixture
def setup(tmp_path, staged, tiny_config):
    store = open_store(migrated(f"sqlite:///{tmp_path}/jobs.db"))
    artifacts = LocalArtifactStore(tmp_path / "artifacts")

    def add(i: int, steps: int = 3, job_id: str | None = None) -> str:
        p = GenerationRequest(prompt=f"job {i}", seed=i, steps=steps).validated(tiny_config)
        job, _ = store.create(NewJob(id=job_id or f"video_{i}", tenant="t", model="m", priority=5,
                                     params=params_to_dict(p), request_hash=job_id or str(i)), max_queued=100)
        return job.id

    yield store, artifacts, add
    store.close()
