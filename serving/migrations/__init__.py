"""The database schema's migrations (Alembic), run once per upgrade: `kino admin migrate`, the Helm chart's
pre-install/pre-upgrade Job, the local cluster and `kino run` before they start.

    upgrade("postgresql+psycopg://...")   # -> Migrated(before=None, after="0001")

Every process opens the database with `serving.db.Database`, which only checks that the schema is at
this release's head and says which command to run when it is not: no replica writes the schema.

A database made by the release before Alembic (its tables, no `alembic_version`) holds exactly the
baseline revision's schema: it is stamped at that revision, then upgraded like any other.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy.engine import Connection

BASELINE = "0001"  # the schema of the release before Alembic (wave 2)
_HERE = Path(__file__).parent


@dataclass(frozen=True)
class Migrated:
    before: str | None  # None: an empty database
    after: str
    stamped: bool = False  # a pre-Alembic database, recognised as the baseline

    def __str__(self) -> str:
        if self.stamped:
            return (f"made by the release before migrations: recognised as revision {BASELINE}, now at "
                    f"{self.after} (head)")
        if self.before == self.after:
            return f"at revision {self.after} (head): nothing to do"
        return f"upgraded from {self.before or 'an empty database'} to revision {self.after} (head)"


def _config(conn: Connection | None = None) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", str(_HERE))
    if conn is not None:
        cfg.attributes["connection"] = conn  # env.py runs on it (no URL in the config: no %-escaping of secrets)
    return cfg


def head() -> str:
    """This release's schema revision."""
    rev = ScriptDirectory.from_config(_config()).get_current_head()
    assert rev is not None
    return rev


def current(conn: Connection) -> str | None:
    return MigrationContext.configure(conn).get_current_revision()


def upgrade(url: str) -> Migrated:
    """Bring the database at `url` to this release's schema, in one transaction (under a lock: SQLite's write
    lock, a PostgreSQL advisory lock, so two runs at once take turns)."""
    from serving.db import Database

    db = Database(url, check=False)
    try:
        with db.write() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(7172017)"))  # any fixed key: Kino's
            before = current(conn)
            stamped = before is None and sa.inspect(conn).has_table("jobs")
            cfg = _config(conn)
            if stamped:
                command.stamp(cfg, BASELINE)
            command.upgrade(cfg, "head")
            return Migrated(before=BASELINE if stamped else before, after=current(conn) or "", stamped=stamped)
    finally:
        db.dispose()
