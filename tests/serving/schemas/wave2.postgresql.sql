-- The schema Kino's previous release (wave 2, before Alembic) made with metadata.create_all: the database
-- `kino admin migrate` upgrades in tests/serving/test_migrations.py.
CREATE TABLE api_keys (
	id VARCHAR(64) NOT NULL, 
	tenant_id VARCHAR(128) NOT NULL, 
	"user" VARCHAR(128) NOT NULL, 
	label VARCHAR(256) DEFAULT '' NOT NULL, 
	key_hash VARCHAR(64) NOT NULL, 
	prefix VARCHAR(16) NOT NULL, 
	created_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	PRIMARY KEY (id), 
	UNIQUE (key_hash)
);
CREATE INDEX ix_api_keys_tenant_id ON api_keys (tenant_id);
CREATE TABLE audit_events (
	id SERIAL NOT NULL, 
	tenant_id VARCHAR(128) NOT NULL, 
	at FLOAT NOT NULL, 
	kind VARCHAR(64) NOT NULL, 
	category VARCHAR(128) DEFAULT '' NOT NULL, 
	reason TEXT DEFAULT '' NOT NULL, 
	detail TEXT DEFAULT '{}' NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_audit_events_tenant_id ON audit_events (tenant_id);
CREATE TABLE cameo_grants (
	id SERIAL NOT NULL, 
	cameo_id VARCHAR(64) NOT NULL, 
	tenant VARCHAR(128) NOT NULL, 
	"user" VARCHAR(128) NOT NULL, 
	granted_at FLOAT NOT NULL, 
	revoked_at FLOAT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_cameo_grants_cameo_id ON cameo_grants (cameo_id);
CREATE TABLE cameo_notifications (
	id SERIAL NOT NULL, 
	cameo_id VARCHAR(64) NOT NULL, 
	owner_tenant VARCHAR(128) NOT NULL, 
	at FLOAT NOT NULL, 
	kind VARCHAR(32) NOT NULL, 
	video_id VARCHAR(64) NOT NULL, 
	creator_tenant VARCHAR(128) NOT NULL, 
	message TEXT DEFAULT '' NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_cameo_notifications_owner_tenant ON cameo_notifications (owner_tenant);
CREATE INDEX ix_cameo_notifications_cameo_id ON cameo_notifications (cameo_id);
CREATE TABLE cameos (
	id VARCHAR(64) NOT NULL, 
	owner_tenant VARCHAR(128) NOT NULL, 
	owner_user VARCHAR(128) NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	require_approval BOOLEAN NOT NULL, 
	consent_statement TEXT NOT NULL, 
	consent_at FLOAT NOT NULL, 
	consent_key_id VARCHAR(64) NOT NULL, 
	reference_key VARCHAR(512) NOT NULL, 
	voice_key VARCHAR(512), 
	created_at FLOAT NOT NULL, 
	deleted_at FLOAT, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_cameos_owner_tenant ON cameos (owner_tenant);
CREATE TABLE job_events (
	id SERIAL NOT NULL, 
	job_id VARCHAR(64) NOT NULL, 
	at FLOAT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	stage VARCHAR(16) NOT NULL, 
	step INTEGER DEFAULT '0' NOT NULL, 
	total_steps INTEGER DEFAULT '0' NOT NULL, 
	progress FLOAT DEFAULT '0' NOT NULL, 
	eta_seconds FLOAT, 
	batch_size INTEGER DEFAULT '0' NOT NULL, 
	message TEXT DEFAULT '' NOT NULL, 
	extra TEXT DEFAULT '{}' NOT NULL, 
	PRIMARY KEY (id)
);
CREATE INDEX ix_job_events_job_id ON job_events (job_id);
CREATE TABLE jobs (
	id VARCHAR(64) NOT NULL, 
	tenant VARCHAR(128) NOT NULL, 
	model VARCHAR(256) NOT NULL, 
	priority INTEGER NOT NULL, 
	params TEXT NOT NULL, 
	status VARCHAR(16) NOT NULL, 
	seq BIGINT NOT NULL, 
	created_at FLOAT NOT NULL, 
	request_hash VARCHAR(64) DEFAULT '' NOT NULL, 
	idempotency_key VARCHAR(256), 
	started_at FLOAT, 
	completed_at FLOAT, 
	stage VARCHAR(16) DEFAULT 'queued' NOT NULL, 
	step INTEGER DEFAULT '0' NOT NULL, 
	total_steps INTEGER DEFAULT '0' NOT NULL, 
	progress FLOAT DEFAULT '0' NOT NULL, 
	eta_seconds FLOAT, 
	error_code VARCHAR(64), 
	error_message TEXT, 
	artifact_key VARCHAR(512), 
	artifact_size BIGINT, 
	artifact_sha256 VARCHAR(64), 
	artifact_content_type VARCHAR(64), 
	attempts INTEGER DEFAULT '0' NOT NULL, 
	lease_owner VARCHAR(128), 
	lease_generation INTEGER DEFAULT '0' NOT NULL, 
	lease_expires_at FLOAT, 
	cancel_requested BOOLEAN DEFAULT false NOT NULL, 
	cancel_reason VARCHAR(64), 
	"user" VARCHAR(128) DEFAULT 'default' NOT NULL, 
	seconds FLOAT DEFAULT '0' NOT NULL, 
	max_concurrent INTEGER DEFAULT '0' NOT NULL, 
	visibility VARCHAR(16) DEFAULT 'private' NOT NULL, 
	review VARCHAR(16) DEFAULT 'none' NOT NULL, 
	image_key VARCHAR(512), 
	parent_id VARCHAR(64), 
	parent_key VARCHAR(512), 
	strength FLOAT DEFAULT '0' NOT NULL, 
	cameo_id VARCHAR(64), 
	enhanced_prompt TEXT, 
	PRIMARY KEY (id), 
	CONSTRAINT uq_jobs_tenant_idempotency UNIQUE (tenant, idempotency_key)
);
CREATE INDEX ix_jobs_lease ON jobs (status, lease_expires_at);
CREATE INDEX ix_jobs_cameo_id ON jobs (cameo_id);
CREATE INDEX ix_jobs_public ON jobs (visibility, seq);
CREATE INDEX ix_jobs_queue ON jobs (status, priority, seq);
CREATE INDEX ix_jobs_tenant_seq ON jobs (tenant, seq);
CREATE TABLE kino_meta (
	key VARCHAR(64) NOT NULL, 
	value BIGINT NOT NULL, 
	PRIMARY KEY (key)
);
CREATE TABLE tenants (
	id VARCHAR(128) NOT NULL, 
	name VARCHAR(256) NOT NULL, 
	priority INTEGER NOT NULL, 
	max_concurrent INTEGER DEFAULT '0' NOT NULL, 
	max_queued INTEGER DEFAULT '0' NOT NULL, 
	seconds_per_day FLOAT DEFAULT '0' NOT NULL, 
	created_at FLOAT NOT NULL, 
	PRIMARY KEY (id)
);
