"""One database for every store (jobs, accounts, cameos): SQLite (WAL) by default, PostgreSQL by URL.

The tables are declared in serving/schema.py and created or changed only by migrations
(serving/migrations, `kino admin migrate`); opening a `Database` checks that its schema is this
release's and says what to run when it is not. SQLite takes its write lock up front (BEGIN IMMEDIATE)
so read-modify-write transactions never fail halfway; PostgreSQL serializes through row locks.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine


class SchemaOutOfDate(RuntimeError):
    """The database's schema is not this release's: `kino admin migrate` brings it there."""


NODE_GROUP_ENV = "KINO_NODE_GROUP"
"""The node group of this process's Ray node: `head`, `text-encoder`, `dit` or `decoder`. The Helm chart sets it on
every pod and `kino serve --nodes` on every local node; unset is the head (one node holds everything)."""


class WorkerNodeDatabase(RuntimeError):
    """A process on a worker node tried to open the job database, which only the head's replicas may."""


class Database:
    def __init__(self, url: str, *, check: bool = True) -> None:
        """`check`: refuse a database whose schema is not at this release's migration head (every store does;
        the migrations themselves open it unchecked). Refused outright on a worker node (`KINO_NODE_GROUP`)."""
        if (group := os.environ.get(NODE_GROUP_ENV, "head")) != "head":
            raise WorkerNodeDatabase(
                f"this process runs on a {group!r} worker node ({NODE_GROUP_ENV}); only the head's replicas "
                "(Frontend, Dispatcher, ProgressHub) open the job database: a stage reaches the control plane "
                "through Serve (serving/app.py)")
        self.url = url
        self.sqlite = url.startswith("sqlite")
        if self.sqlite:
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = sa.create_engine(url, connect_args={"check_same_thread": False, "timeout": 30})
            _sqlite_setup(self.engine)
        else:
            self.engine = sa.create_engine(url, pool_pre_ping=True, pool_size=10, max_overflow=20)
        if check:
            self._check_schema()

    def _check_schema(self) -> None:
        from serving import migrations

        with self.read() as conn:
            have, want = migrations.current(conn), migrations.head()
        if have != want:
            where = self.engine.url.render_as_string(hide_password=True)
            self.dispose()
            state = "has no Kino schema" if have is None else f"is at schema revision {have}"
            raise SchemaOutOfDate(f"the database {where} {state}; this Kino needs revision {want}: run "
                                  f"`kino admin migrate --database-url {where}` (the Helm chart's migrate Job "
                                  "and `kino serve` run it for you)")

    @contextmanager
    def write(self) -> Iterator[Connection]:
        with self.engine.connect().execution_options(kino_write=True) as conn, conn.begin():
            yield conn

    @contextmanager
    def read(self) -> Iterator[Connection]:
        with self.engine.connect() as conn, conn.begin():
            yield conn

    def dispose(self) -> None:
        self.engine.dispose()


def _sqlite_setup(engine: Engine) -> None:
    """WAL for concurrent readers across processes; writes take the lock up front."""

    @event.listens_for(engine, "connect")
    def _connect(dbapi_conn, _record) -> None:  # noqa: ANN001
        dbapi_conn.isolation_level = None  # let SQLAlchemy's begin event issue BEGIN
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE" if conn.get_execution_options().get("kino_write") else "BEGIN")
