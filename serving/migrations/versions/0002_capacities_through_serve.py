"""Recorded capacities leave the database: a Denoiser replica reports its token budget through Serve.

Worker nodes never open the job database (docs/architecture.md, "Across nodes"): the front door asks a
Denoiser replica for its budget and caches it. The rows the release before kept in `kino_meta`
(`capacity:denoise_max_tokens`) are deleted; a downgrade has nothing to restore (the replicas wrote them
at start).

Revision ID: 0002
Revises: 0001
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0002'
down_revision: str | None = '0001'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    meta = sa.table("kino_meta", sa.column("key", sa.String))
    op.execute(meta.delete().where(meta.c.key.like("capacity:%")))


def downgrade() -> None:
    pass
