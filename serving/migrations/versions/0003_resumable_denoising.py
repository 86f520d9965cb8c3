"""Resumable denoising: a job's checkpoint, the step it resumed at, the steps its attempts ran (wave 3)

Revision ID: 0003
Revises: 0002
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0003'
down_revision: str | None = '0002'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.add_column(sa.Column('checkpoint_key', sa.String(length=512), nullable=True))
        batch_op.add_column(sa.Column('checkpoint_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('resumed_from_step', sa.Integer(), nullable=True))
        batch_op.add_column(sa.Column('denoise_steps_run', sa.Integer(), server_default='0', nullable=False))



def downgrade() -> None:
    with op.batch_alter_table('jobs', schema=None) as batch_op:
        batch_op.drop_column('denoise_steps_run')
        batch_op.drop_column('resumed_from_step')
        batch_op.drop_column('checkpoint_step')
        batch_op.drop_column('checkpoint_key')

