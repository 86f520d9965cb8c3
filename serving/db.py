"""One database for every store (jobs, accounts, cameos): SQLite (WAL) by default, PostgreSQL by URL.

The stores share one SQLAlchemy engine and one MetaData; each module declares its tables on
`metadata`. SQLite takes its write lock up front (BEGIN IMMEDIATE) so read-modify-write
transactions never fail halfway; PostgreSQL serializes through row locks.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import Connection, Engine

metadata = sa.MetaData()

class Database:
    def __init__(self, url: str) -> None:
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
        # Importing the table modules registers them on `metadata`.
        import serving.accounts.store  # noqa: F401
        import serving.cameos.store  # noqa: F401
        import serving.jobs.sql_store  # noqa: F401

        metadata.create_all(self.engine)
        _add_missing_columns(self.engine)

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


def _add_missing_columns(engine: Engine) -> None:
    """Additive schema upgrades: a column declared here but missing from an existing table (a
    database made by an older Kino) is added. New columns are nullable or have a server default,
    so old rows stay valid; anything beyond adding columns needs a real migration."""
    inspector = sa.inspect(engine)
    with engine.connect().execution_options(kino_write=True) as conn, conn.begin():
        for table in metadata.sorted_tables:
            have = {c["name"] for c in inspector.get_columns(table.name)}
            for column in table.columns:
                if column.name in have:
                    continue
                if not column.nullable and column.server_default is None:
                    raise RuntimeError(f"{table.name}.{column.name} is new, NOT NULL and has no default; "
                                       "it needs a migration")
                ddl = sa.schema.CreateColumn(column).compile(dialect=engine.dialect)
                conn.exec_driver_sql(f"ALTER TABLE {table.name} ADD COLUMN {ddl}")


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
