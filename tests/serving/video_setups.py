"""What the watch tests set up: jobs in a job store, and the domain's VideoService over it (no Ray, no server)."""

from __future__ import annotations

from pathlib import Path

from engines.params import GenerationRequest, params_to_dict
from serving.accounts import AccountStore
from serving.artifacts import LocalArtifactStore
from serving.cameos.store import CameoStore
from serving.config import load_config
from serving.control_plane.progress import ProgressFeed
from serving.db import Database
from serving.jobs import NewJob
from serving.jobs.sql_store import SqlJobStore
from serving.moderation import RuleModerator
from serving.videos import VideoService
from tests.tools import migrated


class NoDispatcher:
    async def wake(self) -> None: ...

    async def cancel(self, job_id: str) -> None: ...


def job_database(tmp_path: Path) -> Database:
    return Database(migrated(f"sqlite:///{tmp_path}/jobs.db"))


def queue_jobs(store: SqlJobStore, tiny_config, ids: list[str], steps: int) -> None:
    """Tenant `t`'s jobs `ids`, queued in that order, each a tiny "a cat" of `steps` steps."""
    params = params_to_dict(GenerationRequest(prompt="a cat", seed=1, steps=steps).validated(tiny_config))
    for n, job_id in enumerate(ids):
        store.create(NewJob(id=job_id, tenant="t", model="m", priority=5, params=params, request_hash=str(n)),
                     max_queued=10)


def video_service(db: Database, store: SqlJobStore, tmp_path: Path,
                  progress: ProgressFeed | None = None) -> VideoService:
    """The VideoService over `store`, with no dispatcher to wake and no moderation rule."""
    return VideoService(load_config({}), store, LocalArtifactStore(tmp_path / "artifacts"), NoDispatcher(),
                        moderator=RuleModerator([]), accounts=AccountStore(db), cameos=CameoStore(db),
                        progress=progress)
