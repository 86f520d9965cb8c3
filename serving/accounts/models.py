"""Who is calling: tenants, their API keys, and the principal a request runs as."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from serving.jobs.models import Quota


@dataclass(frozen=True)
class Tenant:
    id: str
    name: str
    priority: int = 5  # the highest priority its jobs get (requests may ask for less)
    quota: Quota = field(default_factory=Quota)
    created_at: float = 0.0


@dataclass(frozen=True)
class ApiKey:
    id: str
    tenant_id: str
    user: str
    label: str
    prefix: str  # the first characters of the key, to recognise it; the key itself is never stored
    created_at: float
    revoked_at: float | None = None


@dataclass(frozen=True)
class Principal:
    """The identity a request runs as: a user within a tenant (key_id None: the local default)."""

    tenant: Tenant
    user: str = "default"
    key_id: str | None = None

    @property
    def tenant_id(self) -> str:
        return self.tenant.id


@dataclass(frozen=True)
class AuditEvent:
    id: int
    tenant_id: str
    at: float
    kind: str  # e.g. "moderation_rejected"
    category: str
    reason: str
    detail: dict[str, Any] = field(default_factory=dict)
