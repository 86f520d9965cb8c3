"""Tenants and API keys: validation, hashed storage, lookup and revocation, authentication."""

import pytest

from serving.accounts.service import AccountService
from serving.accounts.store import AccountStore
from serving.config import AuthConfig
from serving.db import Database
from serving.errors import FailedPrecondition, InvalidArgument, Unauthenticated
from serving.jobs.models import Quota
from tests.tools import migrated


@pytest.fixture
def db_path(tmp_path):
    return tmp_path / "kino.db"


@pytest.fixture
def store(db_path):
    return AccountStore(Database(migrated(f"sqlite:///{db_path}")))


def test_tenants(store):
    t = store.create_tenant("acme", priority=7, quota=Quota(max_queued=3, seconds_per_day=60, max_concurrent=2))
    assert (t.priority, t.quota.max_queued, t.quota.max_concurrent) == (7, 3, 2)
    with pytest.raises(FailedPrecondition):
        store.create_tenant("acme")
    with pytest.raises(InvalidArgument, match="tenant"):
        store.create_tenant("Not A Slug")
    with pytest.raises(InvalidArgument, match="priority"):
        store.create_tenant("other", priority=12)
    assert store.update_tenant("acme", priority=2).priority == 2


def test_keys_are_stored_hashed_and_can_be_revoked(store, db_path):
    store.create_tenant("acme")
    key, secret = store.create_key("acme", user="ann", label="laptop")
    assert secret.startswith("kino_sk_") and len(secret) > 40
    assert secret.encode() not in db_path.read_bytes()  # only the hash is on disk
    found_key, tenant = store.lookup(secret)
    assert found_key.id == key.id and found_key.user == "ann" and tenant.id == "acme"
    store.revoke_key(key.id)
    assert store.lookup(secret) is None
    assert store.lookup("kino_sk_guess") is None


def test_authentication_modes(store, caplog):
    store.create_tenant("acme", priority=8)
    _, secret = store.create_key("acme")
    local = AccountService(store, AuthConfig(required=False))
    assert local.authenticate(None).tenant_id == "local"
    assert local.authenticate(secret).tenant.priority == 8  # a known key still selects its tenant
    # Keys optional: a key the server does not know (the openai SDK always sends one) runs as the local
    # tenant, and the server says so once.
    with caplog.at_level("WARNING", logger="serving.accounts.service"):
        assert local.authenticate("kino_sk_unknown").tenant_id == "local"
        assert local.authenticate("kino_sk_other").tenant_id == "local"
    assert sum("does not know" in r.message for r in caplog.records) == 1
    strict = AccountService(store, AuthConfig(required=True))
    with pytest.raises(Unauthenticated, match="missing API key"):
        strict.authenticate(None)
    with pytest.raises(Unauthenticated, match="invalid or revoked"):
        strict.authenticate("kino_sk_wrong")  # keys required: a wrong key is refused


def test_a_known_key_is_remembered_for_the_ttl_and_a_revoked_one_stops_within_it(store, monkeypatch):
    store.create_tenant("acme")
    key, secret = store.create_key("acme")
    now = [0.0]
    auth = AccountService(store, AuthConfig(required=True, key_cache_seconds=10), clock=lambda: now[0])
    reads = []
    real = store.lookup
    monkeypatch.setattr(store, "lookup", lambda s: reads.append(1) or real(s))
    assert auth.authenticate(secret).tenant.id == "acme"
    assert auth.authenticate(secret).tenant.id == "acme" and len(reads) == 1  # the second call read nothing
    store.revoke_key(key.id)
    now[0] = 9.9
    assert auth.authenticate(secret).tenant.id == "acme"  # within the TTL the cached key still works
    now[0] = 10.1
    with pytest.raises(Unauthenticated, match="revoked"):
        auth.authenticate(secret)  # past it, the revocation holds
    with pytest.raises(Unauthenticated):
        auth.authenticate("kino_sk_unknown")
    _, fresh = store.create_key("acme")  # unknown keys are not remembered: a new key works at once
    assert auth.authenticate(fresh).tenant.id == "acme"
    uncached = AccountService(store, AuthConfig(required=True, key_cache_seconds=0))
    reads.clear()
    uncached.authenticate(fresh), uncached.authenticate(fresh)
    assert len(reads) == 2


def test_bootstrap_keys_from_a_file(store, tmp_path):
    keys = tmp_path / "keys"
    keys.write_text("# tenant:user:key\nacme:ann:kino_sk_provisioned_aaaaaaaaaaaaaaaaaaaa\n\n")
    service = AccountService(store, AuthConfig(required=True))
    assert service.bootstrap(keys) == 1
    assert service.bootstrap(keys) == 0  # idempotent: a restart registers nothing twice
    principal = service.authenticate("kino_sk_provisioned_aaaaaaaaaaaaaaaaaaaa")
    assert (principal.tenant_id, principal.user) == ("acme", "ann")
    keys.write_text("not a line\n")
    from engines.errors import ConfigError

    with pytest.raises(ConfigError, match="line 1"):
        service.bootstrap(keys)



def test_a_tenant_inserted_by_another_process_meanwhile_is_found_not_an_error(postgres):
    """Two front doors' first calls race on a fresh PostgreSQL: the other one's insert is not yet
    committed when we look, so we insert too and wait on the key; when it commits our insert fails
    the unique key, and ensure_tenant returns the tenant (the soak's CreateVideo calls failed with
    UNKNOWN and a unique-key violation here)."""
    import threading
    import time

    from serving.accounts.store import tenants

    url = migrated(postgres.new_database())
    ours, theirs = AccountStore(Database(url)), Database(url)
    with theirs.engine.connect() as conn:
        transaction = conn.begin()
        conn.execute(tenants.insert().values(id="local", name="theirs", priority=5, max_concurrent=0,
                                             max_queued=0, seconds_per_day=0.0, created_at=time.time()))
        result: list = []
        racer = threading.Thread(target=lambda: result.append(ours.ensure_tenant("local", name="ours")))
        racer.start()
        _until_an_insert_waits_on_a_lock(url)  # ours waits on theirs: not a guess at how long that takes
        transaction.commit()
        racer.join(10)
    assert [t.name for t in result] == ["theirs"]


def _until_an_insert_waits_on_a_lock(url: str, timeout: float = 30.0) -> None:
    """Until a session of this database waits on a lock (PostgreSQL's pg_stat_activity says so)."""
    import time

    import sqlalchemy as sa

    watcher = sa.create_engine(url)
    deadline = time.monotonic() + timeout
    try:
        while time.monotonic() < deadline:
            with watcher.connect() as conn:
                waiting = conn.execute(sa.text("SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                                               "AND datname = current_database()")).scalar()
            if waiting:
                return
            time.sleep(0.01)
    finally:
        watcher.dispose()
    raise AssertionError("the racing insert never waited on the other transaction's lock")
