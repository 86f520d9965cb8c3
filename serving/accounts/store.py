"""Tenants, API keys (stored as SHA-256 hashes) and audit events, in the shared database."""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import time
from typing import Any

import sqlalchemy as sa

from serving.accounts.models import ApiKey, AuditEvent, Tenant
from serving.db import Database
from serving.errors import FailedPrecondition, InvalidArgument, NotFound
from serving.jobs.models import Quota
from serving.schema import api_keys, tenants
from serving.schema import audit_events as audit

KEY_PREFIX = "kino_sk_"
_SLUG = re.compile(r"^[a-z0-9][a-z0-9_-]{0,62}$")


def hash_key(key: str) -> str:
    """API keys are 256-bit random tokens, so a plain SHA-256 is enough to store them safely."""
    return hashlib.sha256(key.encode()).hexdigest()


class AccountStore:
    def __init__(self, db: Database) -> None:
        self.db = db

    # -- tenants ---------------------------------------------------------------------------
    def create_tenant(self, tenant_id: str, *, name: str = "", priority: int = 5, quota: Quota = Quota()) -> Tenant:
        if not _SLUG.match(tenant_id):
            raise InvalidArgument(f"tenant id {tenant_id!r} is not allowed: lowercase letters, digits, '-' and '_', "
                                  "1 to 63 characters", field="tenant")
        if not 0 <= priority <= 9:
            raise InvalidArgument(f"priority={priority} is not allowed: an integer in [0, 9]", field="priority")
        exists = FailedPrecondition(f"tenant {tenant_id!r} already exists", field="tenant")
        try:
            with self.db.write() as conn:
                if conn.execute(sa.select(tenants.c.id).where(tenants.c.id == tenant_id)).first():
                    raise exists
                conn.execute(tenants.insert().values(
                    id=tenant_id, name=name or tenant_id, priority=priority, max_concurrent=quota.max_concurrent,
                    max_queued=quota.max_queued, seconds_per_day=quota.seconds_per_day, created_at=time.time()))
        except sa.exc.IntegrityError:  # inserted by another process between our check and our insert
            raise exists from None
        return self.tenant(tenant_id)

    def ensure_tenant(self, tenant_id: str, **kw: Any) -> Tenant:
        try:
            return self.tenant(tenant_id)
        except NotFound:
            try:
                return self.create_tenant(tenant_id, **kw)
            except FailedPrecondition:  # created meanwhile by another process
                return self.tenant(tenant_id)

    def tenant(self, tenant_id: str) -> Tenant:
        with self.db.read() as conn:
            row = conn.execute(sa.select(tenants).where(tenants.c.id == tenant_id)).first()
        if row is None:
            raise NotFound(f"tenant {tenant_id!r} not found", field="tenant")
        return _tenant(row)

    def tenants(self) -> list[Tenant]:
        with self.db.read() as conn:
            return [_tenant(r) for r in conn.execute(sa.select(tenants).order_by(tenants.c.id))]

    def update_tenant(self, tenant_id: str, *, priority: int | None = None, quota: Quota | None = None) -> Tenant:
        values: dict[str, Any] = {}
        if priority is not None:
            values["priority"] = priority
        if quota is not None:
            values.update(max_concurrent=quota.max_concurrent, max_queued=quota.max_queued,
                          seconds_per_day=quota.seconds_per_day)
        with self.db.write() as conn:
            if conn.execute(tenants.update().where(tenants.c.id == tenant_id).values(**values)).rowcount == 0:
                raise NotFound(f"tenant {tenant_id!r} not found", field="tenant")
        return self.tenant(tenant_id)

    # -- keys --------------------------------------------------------------------------------
    def create_key(self, tenant_id: str, *, user: str = "default", label: str = "") -> tuple[ApiKey, str]:
        """A new key for a tenant: (record, the key itself). The key is shown once and not stored."""
        secret = KEY_PREFIX + secrets.token_urlsafe(32)
        return self.add_key(tenant_id, secret, user=user, label=label), secret

    def add_key(self, tenant_id: str, secret: str, *, user: str = "default", label: str = "") -> ApiKey:
        """Register a key made elsewhere (e.g. provisioned as a Kubernetes Secret); only its hash is kept."""
        self.tenant(tenant_id)
        if len(secret) < 24:
            raise InvalidArgument("key is not allowed: at least 24 characters", field="key")
        key = ApiKey(id=f"key_{secrets.token_hex(6)}", tenant_id=tenant_id, user=user, label=label,
                     prefix=secret[: len(KEY_PREFIX) + 4], created_at=time.time())
        with self.db.write() as conn:
            conn.execute(api_keys.insert().values(id=key.id, tenant_id=tenant_id, user=user, label=label,
                                                  key_hash=hash_key(secret), prefix=key.prefix,
                                                  created_at=key.created_at))
        return key

    def revoke_key(self, key_id: str) -> ApiKey:
        with self.db.write() as conn:
            n = conn.execute(api_keys.update().where(api_keys.c.id == key_id, api_keys.c.revoked_at.is_(None))
                             .values(revoked_at=time.time())).rowcount
        if n == 0:
            raise NotFound(f"active key {key_id!r} not found", field="key")
        return self.key(key_id)

    def key(self, key_id: str) -> ApiKey:
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.id == key_id)).first()
        if row is None:
            raise NotFound(f"key {key_id!r} not found", field="key")
        return _key(row)

    def keys(self, tenant_id: str | None = None) -> list[ApiKey]:
        q = sa.select(api_keys).order_by(api_keys.c.created_at)
        if tenant_id:
            q = q.where(api_keys.c.tenant_id == tenant_id)
        with self.db.read() as conn:
            return [_key(r) for r in conn.execute(q)]

    def lookup(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        """The live key and its tenant for a presented secret, or None."""
        with self.db.read() as conn:
            row = conn.execute(sa.select(api_keys).where(api_keys.c.key_hash == hash_key(secret),
                                                         api_keys.c.revoked_at.is_(None))).first()
        if row is None:
            return None
        return _key(row), self.tenant(row.tenant_id)

    # -- audit -------------------------------------------------------------------------------
    def record_audit(self, tenant_id: str, kind: str, *, category: str = "", reason: str = "",
                     detail: dict[str, Any] | None = None) -> None:
        with self.db.write() as conn:
            conn.execute(audit.insert().values(tenant_id=tenant_id, at=time.time(), kind=kind, category=category,
                                               reason=reason, detail=json.dumps(detail or {})))

    def audit_events(self, tenant_id: str, *, limit: int = 100) -> list[AuditEvent]:
        with self.db.read() as conn:
            rows = conn.execute(sa.select(audit).where(audit.c.tenant_id == tenant_id)
                                .order_by(audit.c.id.desc()).limit(limit)).all()
        return [AuditEvent(id=r.id, tenant_id=r.tenant_id, at=r.at, kind=r.kind, category=r.category, reason=r.reason,
                           detail=json.loads(r.detail)) for r in rows]


def _tenant(row: Any) -> Tenant:
    return Tenant(id=row.id, name=row.name, priority=row.priority, created_at=row.created_at,
                  quota=Quota(max_queued=row.max_queued, seconds_per_day=row.seconds_per_day,
                              max_concurrent=row.max_concurrent))


def _key(row: Any) -> ApiKey:
    return ApiKey(id=row.id, tenant_id=row.tenant_id, user=row.user, label=row.label, prefix=row.prefix,
                  created_at=row.created_at, revoked_at=row.revoked_at)
