"""Write a new migration: `python -m serving.migrations "add jobs.lora"`.

Alembic compares serving/schema.py with a scratch SQLite database at the current head and writes the
difference as the next revision under serving/migrations/versions/ (review it: it runs on PostgreSQL too,
and data changes are yours to add).
"""

from __future__ import annotations

import argparse
import tempfile

from alembic import command

from serving.db import Database
from serving.migrations import _config, head, upgrade


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m serving.migrations", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("message", help="what the revision changes, in a few words")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        url = f"sqlite:///{scratch}/head.db"
        upgrade(url)
        db = Database(url)
        try:
            with db.write() as conn:
                number = int(head()) + 1
                command.revision(_config(conn), message=args.message, autogenerate=True, rev_id=f"{number:04d}")
        finally:
            db.dispose()


if __name__ == "__main__":
    main()
