"""Tenants, API keys, quotas and the audit list."""

from serving.accounts.models import ApiKey, AuditEvent, Principal, Tenant
from serving.accounts.store import AccountStore

__all__ = ["AccountStore", "ApiKey", "AuditEvent", "Principal", "Tenant"]
