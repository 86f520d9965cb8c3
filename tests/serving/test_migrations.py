"""The schema's migrations (serving/migrations, `kino admin migrate`) on SQLite and a real PostgreSQL: from an
empty database and from the previous release's, each ends exactly at the schema serving/schema.py declares."""

from __future__ import annotations

from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from serving import migrations
from serving.db import Database, SchemaOutOfDate
from serving.jobs import JobStatus, NewJob, open_store
from serving.schema import jobs, kino_meta, metadata

SCHEMAS = Path(__file__).parent / "schemas"


@pytest.fixture(params=["sqlite", "postgresql"])
def empty_url(request, tmp_path):
    if request.param == "postgresql":
        return request.getfixturevalue("postgres").new_database()
    return f"sqlite:///{tmp_path}/jobs.db"


def _drift(url: str) -> list:
    """What differs between the database and the declared schema (nothing, when migrations are right)."""
    engine = sa.create_engine(url)
    try:
        with engine.connect() as conn:
            return compare_metadata(MigrationContext.configure(conn), metadata)
    finally:
        engine.dispose()


def _counters(url: str) -> dict[str, int]:
    db = Database(url)
    try:
        with db.read() as conn:
            return {r.key: r.value for r in conn.execute(sa.select(kino_meta))}
    finally:
        db.dispose()


def test_an_empty_database_is_refused_then_migrated_to_the_declared_schema(empty_url):
    with pytest.raises(SchemaOutOfDate, match=r"has no Kino schema; this Kino needs revision \w+: run "
                                              r"`kino admin migrate --database-url "):
        Database(empty_url)
    done = migrations.upgrade(empty_url)
    assert (done.before, done.after, done.stamped) == (None, migrations.head(), False)
    assert _drift(empty_url) == []
    assert _counters(empty_url) == {"next_seq": 0, "claims": 0}
    again = migrations.upgrade(empty_url)
    assert again.before == again.after == migrations.head() and "nothing to do" in str(again)
    store = open_store(empty_url)
    job, created = store.create(NewJob(id="video_1", tenant="t", model="m", priority=5, params={"prompt": "x"},
                                       request_hash="h"), max_queued=10)
    assert created and job.seq == 1 and store.count_by_status(JobStatus.QUEUED)[JobStatus.QUEUED] == 1
    store.close()


def test_the_previous_releases_database_keeps_its_jobs_and_reaches_the_declared_schema(empty_url):
    """A database the release before migrations made (its create_all DDL, replayed from tests/serving/schemas)
    with a queued job in it."""
    engine = sa.create_engine(empty_url)
    dialect = engine.dialect.name
    ddl = (SCHEMAS / f"wave2.{dialect}.sql").read_text()
    with engine.begin() as conn:
        for statement in (s.strip() for s in ddl.split(";")):
            lines = [line for line in statement.splitlines() if not line.startswith("--")]
            if "".join(lines).strip():
                conn.exec_driver_sql("\n".join(lines))
        conn.execute(kino_meta.insert(), [{"key": "next_seq", "value": 7}, {"key": "claims", "value": 3}])
        conn.execute(jobs.insert().values(id="video_old", tenant="t", model="m", priority=5, params='{"prompt": "x"}',
                                          status="queued", seq=7, created_at=1.0))
    engine.dispose()
    done = migrations.upgrade(empty_url)
    assert done.stamped and done.before == migrations.BASELINE and done.after == migrations.head()
    assert "the release before migrations" in str(done)
    assert _drift(empty_url) == []
    assert _counters(empty_url) == {"next_seq": 7, "claims": 3}  # kept, not seeded again
    store = open_store(empty_url)
    assert store.get("video_old").status == JobStatus.QUEUED and store.claim_next("d", 30).id == "video_old"
    store.close()


def test_a_database_at_another_revision_is_refused_naming_both(tmp_path):
    url = f"sqlite:///{tmp_path}/jobs.db"
    migrations.upgrade(url)
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
    engine.dispose()
    with pytest.raises(SchemaOutOfDate, match=rf"is at schema revision 9999; this Kino needs revision "
                                              rf"{migrations.head()}"):
        Database(url)
