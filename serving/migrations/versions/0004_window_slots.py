"""The in-flight window without one lock every claim queues on: a running job holds a window slot (wave 4)

A claim used to lock the `claims` counter row to count the window, so every claim of the cluster waited on one
row lock. Now a claim takes a free slot of the window (`jobs.claim_slot`, 0 to max_in_progress - 1; on PostgreSQL
under a try-lock, so concurrent claims pick different slots instead of queueing) and a unique index over the
running jobs' slots holds that no two share one (serving/jobs/sql_store.py). Jobs running at the upgrade hold no
slot; a claim counts them against the window until they end. The `claims` row stays (unused).

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0004'
down_revision: str | None = '0003'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('claim_slot', sa.Integer(), nullable=True))
        batch_op.create_index('uq_jobs_claim_slot', ['claim_slot'], unique=True,
                              sqlite_where=sa.text("status = 'in_progress'"),
                              postgresql_where=sa.text("status = 'in_progress'"))


def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_index('uq_jobs_claim_slot', sqlite_where=sa.text("status = 'in_progress'"),
                            postgresql_where=sa.text("status = 'in_progress'"))
        batch_op.drop_column('claim_slot')
