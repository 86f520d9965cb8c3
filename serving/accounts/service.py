"""Who a call runs as: API keys to principals, and the local tenant when keys are not required."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from pathlib import Path

from cachetools import TTLCache

from engines.errors import ConfigError
from serving.accounts.models import ApiKey, AuditEvent, Principal, Tenant
from serving.accounts.store import AccountStore, hash_key
from serving.config import AuthConfig
from serving.errors import InvalidArgument, Unauthenticated

log = logging.getLogger(__name__)
AUDIT_LIMIT_RANGE = (1, 1000)


class AccountService:
    def __init__(self, store: AccountStore, auth: AuthConfig, clock: Callable[[], float] = time.monotonic) -> None:
        """`clock`: the key cache's (tests pass their own)."""
        self.store, self.auth = store, auth
        self._local: Tenant | None = None
        self._told_unknown_key = False
        # Known keys by their hash (never the secret), for auth.key_cache_seconds: a call reads no database
        # when its key was seen lately. Unknown keys are not remembered: a key created a moment ago works.
        self._known: TTLCache[str, tuple[ApiKey, Tenant]] | None = TTLCache(
            maxsize=10_000, ttl=auth.key_cache_seconds, timer=clock) if auth.key_cache_seconds > 0 else None
        self._known_lock = threading.Lock()  # calls authenticate in several threads

    def _lookup(self, secret: str) -> tuple[ApiKey, Tenant] | None:
        if self._known is None:
            return self.store.lookup(secret)
        digest = hash_key(secret)
        with self._known_lock:
            found = self._known.get(digest)
        if found is None and (found := self.store.lookup(secret)) is not None:
            with self._known_lock:
                self._known[digest] = found
        return found

    def local_principal(self) -> Principal:
        if self._local is None:
            self._local = self.store.ensure_tenant(self.auth.local_tenant, name="local machine",
                                                   priority=self.auth.local_priority)
        return Principal(tenant=self._local, user="default", key_id=None)

    def bootstrap(self, path: str | Path) -> int:
        """Register the keys listed in `path` ("tenant:user:key" per line; # comments), idempotently."""
        added = 0
        for n, line in enumerate(Path(path).read_text().splitlines(), 1):
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            try:
                tenant, user, secret = line.split(":", 2)
            except ValueError:
                raise ConfigError("auth.bootstrap_keys_file", f"line {n} is not tenant:user:key") from None
            self.store.ensure_tenant(tenant)
            if self.store.lookup(secret) is None:
                self.store.add_key(tenant, secret, user=user, label="bootstrap")
                added += 1
        return added

    def authenticate(self, secret: str | None) -> Principal:
        """The principal of an API key. When keys are not required, a call with no key, or with a key
        this server does not know, runs as the local tenant (as vLLM accepts any key when it has none
        configured: the openai SDK always sends one); a known key still selects its tenant."""
        if not secret:
            if self.auth.required:
                raise Unauthenticated("authorization: missing API key: send metadata "
                                      "'authorization: Bearer kino_sk_...'", field="authorization")
            return self.local_principal()
        found = self._lookup(secret)
        if found is None:
            if self.auth.required:
                raise Unauthenticated("authorization: invalid or revoked API key", field="authorization")
            if not self._told_unknown_key:
                self._told_unknown_key = True
                log.warning("a call sent an API key this server does not know; keys are not required "
                            "(auth.required: false), so it runs as the local tenant %r", self.auth.local_tenant)
            return self.local_principal()
        key, tenant = found
        return Principal(tenant=tenant, user=key.user, key_id=key.id)

    def audit_events(self, principal: Principal, limit: int | None = None) -> list[AuditEvent]:
        """The caller's tenant's audit events, newest first (limit 0 or None: 100)."""
        limit = limit or 100
        lo, hi = AUDIT_LIMIT_RANGE
        if not lo <= limit <= hi:
            raise InvalidArgument(f"limit={limit} is not allowed: an integer in [{lo}, {hi}]", field="limit")
        return self.store.audit_events(principal.tenant_id, limit=limit)
