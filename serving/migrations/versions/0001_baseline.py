"""Baseline: the schema of the release before migrations (wave 2), and the counters every database has.

A database that release made (its tables, no alembic_version) is stamped at this revision instead of
running it (serving/migrations/__init__.py); its counters were seeded by that release's job store.

Revision ID: 0001
Revises:
Create Date: 2026-12-07
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0001'
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('api_keys',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('user', sa.String(length=128), nullable=False),
    sa.Column('label', sa.String(length=256), server_default='', nullable=False),
    sa.Column('key_hash', sa.String(length=64), nullable=False),
    sa.Column('prefix', sa.String(length=16), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('key_hash')
    )
    op.create_index('ix_api_keys_tenant_id', 'api_keys', ['tenant_id'], unique=False)
    op.create_table('audit_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('tenant_id', sa.String(length=128), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=64), nullable=False),
    sa.Column('category', sa.String(length=128), server_default='', nullable=False),
    sa.Column('reason', sa.Text(), server_default='', nullable=False),
    sa.Column('detail', sa.Text(), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_audit_events_tenant_id', 'audit_events', ['tenant_id'], unique=False)
    op.create_table('cameo_grants',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cameo_id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('user', sa.String(length=128), nullable=False),
    sa.Column('granted_at', sa.Float(), nullable=False),
    sa.Column('revoked_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cameo_grants_cameo_id', 'cameo_grants', ['cameo_id'], unique=False)
    op.create_table('cameo_notifications',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('cameo_id', sa.String(length=64), nullable=False),
    sa.Column('owner_tenant', sa.String(length=128), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('kind', sa.String(length=32), nullable=False),
    sa.Column('video_id', sa.String(length=64), nullable=False),
    sa.Column('creator_tenant', sa.String(length=128), nullable=False),
    sa.Column('message', sa.Text(), server_default='', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cameo_notifications_cameo_id', 'cameo_notifications', ['cameo_id'], unique=False)
    op.create_index('ix_cameo_notifications_owner_tenant', 'cameo_notifications', ['owner_tenant'], unique=False)
    op.create_table('cameos',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('owner_tenant', sa.String(length=128), nullable=False),
    sa.Column('owner_user', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('require_approval', sa.Boolean(), nullable=False),
    sa.Column('consent_statement', sa.Text(), nullable=False),
    sa.Column('consent_at', sa.Float(), nullable=False),
    sa.Column('consent_key_id', sa.String(length=64), nullable=False),
    sa.Column('reference_key', sa.String(length=512), nullable=False),
    sa.Column('voice_key', sa.String(length=512), nullable=True),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('deleted_at', sa.Float(), nullable=True),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_cameos_owner_tenant', 'cameos', ['owner_tenant'], unique=False)
    op.create_table('job_events',
    sa.Column('id', sa.Integer(), autoincrement=True, nullable=False),
    sa.Column('job_id', sa.String(length=64), nullable=False),
    sa.Column('at', sa.Float(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('stage', sa.String(length=16), nullable=False),
    sa.Column('step', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total_steps', sa.Integer(), server_default='0', nullable=False),
    sa.Column('progress', sa.Float(), server_default='0', nullable=False),
    sa.Column('eta_seconds', sa.Float(), nullable=True),
    sa.Column('batch_size', sa.Integer(), server_default='0', nullable=False),
    sa.Column('message', sa.Text(), server_default='', nullable=False),
    sa.Column('extra', sa.Text(), server_default='{}', nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.create_index('ix_job_events_job_id', 'job_events', ['job_id'], unique=False)
    op.create_table('jobs',
    sa.Column('id', sa.String(length=64), nullable=False),
    sa.Column('tenant', sa.String(length=128), nullable=False),
    sa.Column('model', sa.String(length=256), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('params', sa.Text(), nullable=False),
    sa.Column('status', sa.String(length=16), nullable=False),
    sa.Column('seq', sa.BigInteger(), nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.Column('request_hash', sa.String(length=64), server_default='', nullable=False),
    sa.Column('idempotency_key', sa.String(length=256), nullable=True),
    sa.Column('started_at', sa.Float(), nullable=True),
    sa.Column('completed_at', sa.Float(), nullable=True),
    sa.Column('stage', sa.String(length=16), server_default='queued', nullable=False),
    sa.Column('step', sa.Integer(), server_default='0', nullable=False),
    sa.Column('total_steps', sa.Integer(), server_default='0', nullable=False),
    sa.Column('progress', sa.Float(), server_default='0', nullable=False),
    sa.Column('eta_seconds', sa.Float(), nullable=True),
    sa.Column('error_code', sa.String(length=64), nullable=True),
    sa.Column('error_message', sa.Text(), nullable=True),
    sa.Column('artifact_key', sa.String(length=512), nullable=True),
    sa.Column('artifact_size', sa.BigInteger(), nullable=True),
    sa.Column('artifact_sha256', sa.String(length=64), nullable=True),
    sa.Column('artifact_content_type', sa.String(length=64), nullable=True),
    sa.Column('attempts', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_owner', sa.String(length=128), nullable=True),
    sa.Column('lease_generation', sa.Integer(), server_default='0', nullable=False),
    sa.Column('lease_expires_at', sa.Float(), nullable=True),
    sa.Column('cancel_requested', sa.Boolean(), server_default=sa.false(), nullable=False),
    sa.Column('cancel_reason', sa.String(length=64), nullable=True),
    sa.Column('user', sa.String(length=128), server_default='default', nullable=False),
    sa.Column('seconds', sa.Float(), server_default='0', nullable=False),
    sa.Column('max_concurrent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('visibility', sa.String(length=16), server_default='private', nullable=False),
    sa.Column('review', sa.String(length=16), server_default='none', nullable=False),
    sa.Column('image_key', sa.String(length=512), nullable=True),
    sa.Column('parent_id', sa.String(length=64), nullable=True),
    sa.Column('parent_key', sa.String(length=512), nullable=True),
    sa.Column('strength', sa.Float(), server_default='0', nullable=False),
    sa.Column('cameo_id', sa.String(length=64), nullable=True),
    sa.Column('enhanced_prompt', sa.Text(), nullable=True),
    sa.PrimaryKeyConstraint('id'),
    sa.UniqueConstraint('tenant', 'idempotency_key', name='uq_jobs_tenant_idempotency')
    )
    op.create_index('ix_jobs_cameo_id', 'jobs', ['cameo_id'], unique=False)
    op.create_index('ix_jobs_lease', 'jobs', ['status', 'lease_expires_at'], unique=False)
    op.create_index('ix_jobs_public', 'jobs', ['visibility', 'seq'], unique=False)
    op.create_index('ix_jobs_queue', 'jobs', ['status', 'priority', 'seq'], unique=False)
    op.create_index('ix_jobs_tenant_seq', 'jobs', ['tenant', 'seq'], unique=False)
    meta = op.create_table('kino_meta',
    sa.Column('key', sa.String(length=64), nullable=False),
    sa.Column('value', sa.BigInteger(), nullable=False),
    sa.PrimaryKeyConstraint('key')
    )
    op.create_table('tenants',
    sa.Column('id', sa.String(length=128), nullable=False),
    sa.Column('name', sa.String(length=256), nullable=False),
    sa.Column('priority', sa.Integer(), nullable=False),
    sa.Column('max_concurrent', sa.Integer(), server_default='0', nullable=False),
    sa.Column('max_queued', sa.Integer(), server_default='0', nullable=False),
    sa.Column('seconds_per_day', sa.Float(), server_default='0', nullable=False),
    sa.Column('created_at', sa.Float(), nullable=False),
    sa.PrimaryKeyConstraint('id')
    )
    op.bulk_insert(meta, [{'key': key, 'value': 0} for key in ('next_seq', 'claims')])


def downgrade() -> None:
    op.drop_table('tenants')
    op.drop_table('kino_meta')
    op.drop_index('ix_jobs_tenant_seq', table_name='jobs')
    op.drop_index('ix_jobs_queue', table_name='jobs')
    op.drop_index('ix_jobs_public', table_name='jobs')
    op.drop_index('ix_jobs_lease', table_name='jobs')
    op.drop_index('ix_jobs_cameo_id', table_name='jobs')
    op.drop_table('jobs')
    op.drop_index('ix_job_events_job_id', table_name='job_events')
    op.drop_table('job_events')
    op.drop_index('ix_cameos_owner_tenant', table_name='cameos')
    op.drop_table('cameos')
    op.drop_index('ix_cameo_notifications_owner_tenant', table_name='cameo_notifications')
    op.drop_index('ix_cameo_notifications_cameo_id', table_name='cameo_notifications')
    op.drop_table('cameo_notifications')
    op.drop_index('ix_cameo_grants_cameo_id', table_name='cameo_grants')
    op.drop_table('cameo_grants')
    op.drop_index('ix_audit_events_tenant_id', table_name='audit_events')
    op.drop_table('audit_events')
    op.drop_index('ix_api_keys_tenant_id', table_name='api_keys')
    op.drop_table('api_keys')
