"""The database schema: every table Kino keeps, in one module, by concern.

The stores (serving/jobs/sql_store.py, serving/accounts/store.py, serving/cameos/store.py) query these
tables; `serving/db.py` opens the database; the schema changes only through Alembic migrations
(serving/migrations/, `kino admin migrate`), which a test holds equal to what is declared here.

- jobs: one row per video, its columns grouped by concern below, and `job_events`, the state changes
  a watcher replays; `kino_meta`: counters (`next_seq`; `claims`, which claims locked before revision 0004).
- accounts: tenants, API keys (SHA-256 hashes), audit events.
- cameos: cameos, their grants, their owners' notifications.

The jobs row stays one row: the hot path (claim, renew, record a stage, finish) reads and writes the
request, lease, progress and artifact of one job in one statement; tables by concern would make each of
those a join or a multi-table write under the same lock.
"""

from __future__ import annotations

import sqlalchemy as sa

from serving.jobs.models import Review, Stage, Visibility

metadata = sa.MetaData()

# -- jobs ---------------------------------------------------------------------------------------------
jobs = sa.Table(
    "jobs", metadata,
    # the request: who asked for what
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("model", sa.String(256), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("params", sa.Text, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("seq", sa.BigInteger, nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("request_hash", sa.String(64), nullable=False, server_default=""),
    sa.Column("idempotency_key", sa.String(256)),
    # progress: the state changes the dispatcher records
    sa.Column("started_at", sa.Float),
    sa.Column("completed_at", sa.Float),
    sa.Column("stage", sa.String(16), nullable=False, server_default=Stage.QUEUED.value),
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.Float, nullable=False, server_default="0"),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("error_code", sa.String(64)),
    sa.Column("error_message", sa.Text),
    # the artifact: the MP4 a completed job points to
    sa.Column("artifact_key", sa.String(512)),
    sa.Column("artifact_size", sa.BigInteger),
    sa.Column("artifact_sha256", sa.String(64)),
    sa.Column("artifact_content_type", sa.String(64)),
    # the lease: which dispatcher holds the job, until when, under which generation
    sa.Column("attempts", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_owner", sa.String(128)),
    sa.Column("lease_generation", sa.Integer, nullable=False, server_default="0"),
    sa.Column("lease_expires_at", sa.Float),
    sa.Column("cancel_requested", sa.Boolean, nullable=False, server_default=sa.false()),
    sa.Column("cancel_reason", sa.String(64)),
    # tenancy and admission (added in wave 1: appended, as additive columns are)
    sa.Column("user", sa.String(128), nullable=False, server_default="default"),
    sa.Column("seconds", sa.Float, nullable=False, server_default="0"),
    sa.Column("max_concurrent", sa.Integer, nullable=False, server_default="0"),
    # sharing, conditioning (image, remix parent, cameo) and the enhanced prompt
    sa.Column("visibility", sa.String(16), nullable=False, server_default=Visibility.PRIVATE.value),
    sa.Column("review", sa.String(16), nullable=False, server_default=Review.NONE.value),
    sa.Column("image_key", sa.String(512)),
    sa.Column("parent_id", sa.String(64)),
    sa.Column("parent_key", sa.String(512)),
    sa.Column("strength", sa.Float, nullable=False, server_default="0"),
    sa.Column("cameo_id", sa.String(64), index=True),
    sa.Column("enhanced_prompt", sa.Text),
    # resumable denoising (added in wave 3): the checkpoint a retried attempt starts from
    sa.Column("checkpoint_key", sa.String(512)),
    sa.Column("checkpoint_step", sa.Integer),
    sa.Column("resumed_from_step", sa.Integer),
    sa.Column("denoise_steps_run", sa.Integer, nullable=False, server_default="0"),
    # the in-flight window (added in wave 4): the window slot an in-progress job holds (serving/jobs/sql_store.py)
    sa.Column("claim_slot", sa.Integer),
    sa.UniqueConstraint("tenant", "idempotency_key", name="uq_jobs_tenant_idempotency"),
    sa.Index("ix_jobs_public", "visibility", "seq"),
    sa.Index("ix_jobs_queue", "status", "priority", "seq"),
    sa.Index("ix_jobs_tenant_seq", "tenant", "seq"),
    sa.Index("ix_jobs_lease", "status", "lease_expires_at"),
    # No two running jobs share a window slot, whatever a claim's bug or race.
    sa.Index("uq_jobs_claim_slot", "claim_slot", unique=True, sqlite_where=sa.text("status = 'in_progress'"),
             postgresql_where=sa.text("status = 'in_progress'")),
)

job_events = sa.Table(
    "job_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("job_id", sa.String(64), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("stage", sa.String(16), nullable=False),
    sa.Column("step", sa.Integer, nullable=False, server_default="0"),
    sa.Column("total_steps", sa.Integer, nullable=False, server_default="0"),
    sa.Column("progress", sa.Float, nullable=False, server_default="0"),
    sa.Column("eta_seconds", sa.Float),
    sa.Column("batch_size", sa.Integer, nullable=False, server_default="0"),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
    sa.Column("extra", sa.Text, nullable=False, server_default="{}"),
)

kino_meta = sa.Table(
    "kino_meta", metadata,
    sa.Column("key", sa.String(64), primary_key=True),
    sa.Column("value", sa.BigInteger, nullable=False),
)

COUNTERS = ("next_seq", "claims")  # kino_meta rows every database has (the baseline migration adds them; since
# revision 0004 no claim locks `claims`: the window is kept by jobs.claim_slot)

# -- accounts -----------------------------------------------------------------------------------------
tenants = sa.Table(
    "tenants", metadata,
    sa.Column("id", sa.String(128), primary_key=True),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("priority", sa.Integer, nullable=False),
    sa.Column("max_concurrent", sa.Integer, nullable=False, server_default="0"),
    sa.Column("max_queued", sa.Integer, nullable=False, server_default="0"),
    sa.Column("seconds_per_day", sa.Float, nullable=False, server_default="0"),
    sa.Column("created_at", sa.Float, nullable=False),
)

api_keys = sa.Table(
    "api_keys", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("tenant_id", sa.String(128), nullable=False, index=True),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("label", sa.String(256), nullable=False, server_default=""),
    sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
    sa.Column("prefix", sa.String(16), nullable=False),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

audit_events = sa.Table(
    "audit_events", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("tenant_id", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("category", sa.String(128), nullable=False, server_default=""),
    sa.Column("reason", sa.Text, nullable=False, server_default=""),
    sa.Column("detail", sa.Text, nullable=False, server_default="{}"),
)

# -- cameos -------------------------------------------------------------------------------------------
cameos = sa.Table(
    "cameos", metadata,
    sa.Column("id", sa.String(64), primary_key=True),
    sa.Column("owner_tenant", sa.String(128), nullable=False, index=True),
    sa.Column("owner_user", sa.String(128), nullable=False),
    sa.Column("name", sa.String(256), nullable=False),
    sa.Column("require_approval", sa.Boolean, nullable=False),
    sa.Column("consent_statement", sa.Text, nullable=False),
    sa.Column("consent_at", sa.Float, nullable=False),
    sa.Column("consent_key_id", sa.String(64), nullable=False),
    sa.Column("reference_key", sa.String(512), nullable=False),
    sa.Column("voice_key", sa.String(512)),
    sa.Column("created_at", sa.Float, nullable=False),
    sa.Column("deleted_at", sa.Float),
)

cameo_grants = sa.Table(
    "cameo_grants", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cameo_id", sa.String(64), nullable=False, index=True),
    sa.Column("tenant", sa.String(128), nullable=False),
    sa.Column("user", sa.String(128), nullable=False),
    sa.Column("granted_at", sa.Float, nullable=False),
    sa.Column("revoked_at", sa.Float),
)

cameo_notifications = sa.Table(
    "cameo_notifications", metadata,
    sa.Column("id", sa.Integer, primary_key=True, autoincrement=True),
    sa.Column("cameo_id", sa.String(64), nullable=False, index=True),
    sa.Column("owner_tenant", sa.String(128), nullable=False, index=True),
    sa.Column("at", sa.Float, nullable=False),
    sa.Column("kind", sa.String(32), nullable=False),
    sa.Column("video_id", sa.String(64), nullable=False),
    sa.Column("creator_tenant", sa.String(128), nullable=False),
    sa.Column("message", sa.Text, nullable=False, server_default=""),
)
