"""`kino admin`: tenants, API keys and audit events, straight in the database (whoever can reach it is admin)."""

from __future__ import annotations

import argparse
import datetime as dt
import os
from pathlib import Path

from serving.jobs.models import Quota


def _when(ts: float | None) -> str:
    return dt.datetime.fromtimestamp(ts, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ") if ts else "-"


def register(sub: argparse._SubParsersAction) -> None:
    admin = sub.add_parser("admin", help="migrate the database; manage tenants, API keys and audit events",
                           description="Administer a Kino deployment through its database: bring its schema to "
                                       "this release (migrate), create tenants with quotas and priorities, issue "
                                       "and revoke API keys, read audit events.")
    admin.add_argument("--database-url", default=os.environ.get("KINO_STORAGE__DATABASE_URL"),
                       help="the job database (default: $KINO_STORAGE__DATABASE_URL, else sqlite in --state-dir)")
    admin.add_argument("--state-dir", type=Path, default=Path("var/kino"), help="local state (default var/kino)")
    groups = admin.add_subparsers(dest="admin_command", required=True, metavar="WHAT")

    m = groups.add_parser("migrate", help="bring the database's schema to this release (run once per upgrade)",
                          description="Apply the schema migrations this release needs (Alembic, "
                                      "serving/migrations/), in one transaction; a database made by the release "
                                      "before migrations is recognised and upgraded. Every Kino process refuses a "
                                      "database that is not at this release's revision. The Helm chart runs this "
                                      "in a Job before each install and upgrade; `kino serve` and `kino run` run it "
                                      "on their local database.")
    m.set_defaults(func=migrate)

    t = groups.add_parser("tenant", help="create, update or list tenants").add_subparsers(
        dest="tenant_command", required=True, metavar="ACTION")
    create = t.add_parser("create", help="create a tenant")
    update = t.add_parser("update", help="change a tenant's priority or quotas")
    for p in (create, update):
        p.add_argument("tenant", help="tenant id: lowercase letters, digits, - and _")
        p.add_argument("--priority", type=int, help="0-9: its jobs' priority (default 5)")
        p.add_argument("--max-concurrent", type=int, help="jobs running at once (0: unlimited)")
        p.add_argument("--max-queued", type=int, help="jobs waiting at once (0: unlimited)")
        p.add_argument("--seconds-per-day", type=float, help="seconds of video per UTC day (0: unlimited)")
    create.add_argument("--name", default="", help="a display name")
    create.set_defaults(func=tenant_create)
    update.set_defaults(func=tenant_update)
    t.add_parser("list", help="list tenants").set_defaults(func=tenant_list)

    k = groups.add_parser("key", help="create, revoke or list API keys").add_subparsers(
        dest="key_command", required=True, metavar="ACTION")
    kc = k.add_parser("create", help="issue a key (shown once)")
    kc.add_argument("tenant", help="the tenant the key acts for")
    kc.add_argument("--user", default="default", help="the user the key belongs to (default: default)")
    kc.add_argument("--label", default="", help="a note to recognise the key by")
    kc.set_defaults(func=key_create)
    kr = k.add_parser("revoke", help="revoke a key by its id (key_...)")
    kr.add_argument("key_id", help="the key to revoke (key_...; `kino admin key list` shows them)")
    kr.set_defaults(func=key_revoke)
    kl = k.add_parser("list", help="list keys (never the secrets)")
    kl.add_argument("--tenant", help="only this tenant's keys")
    kl.set_defaults(func=key_list)

    a = groups.add_parser("audit", help="a tenant's audit events (moderation rejections, ...)")
    a.add_argument("tenant", help="the tenant id")
    a.add_argument("--limit", type=int, default=50, help="events to show, newest first (default 50)")
    a.set_defaults(func=audit_list)


def _url(args: argparse.Namespace) -> str:
    return args.database_url or f"sqlite:///{(args.state_dir / 'jobs.db').resolve()}"


def _store(args: argparse.Namespace):
    from serving.accounts.store import AccountStore
    from serving.db import Database

    return AccountStore(Database(_url(args)))


def migrate(args: argparse.Namespace) -> int:
    from sqlalchemy.engine import make_url

    from serving.migrations import upgrade

    url = _url(args)
    print(f"database {make_url(url).render_as_string(hide_password=True)}: {upgrade(url)}")
    return 0


def _quota(args: argparse.Namespace, base: Quota | None = None) -> Quota:
    base = base or Quota()
    return Quota(max_concurrent=base.max_concurrent if args.max_concurrent is None else args.max_concurrent,
                 max_queued=base.max_queued if args.max_queued is None else args.max_queued,
                 seconds_per_day=base.seconds_per_day if args.seconds_per_day is None else args.seconds_per_day)


def _print_tenant(t) -> None:
    q = t.quota
    print(f"{t.id}\tpriority {t.priority}\tmax_concurrent {q.max_concurrent}\tmax_queued {q.max_queued}\t"
          f"seconds_per_day {q.seconds_per_day:g}\t{t.name}")


def tenant_create(args: argparse.Namespace) -> int:
    t = _store(args).create_tenant(args.tenant, name=args.name, priority=5 if args.priority is None else args.priority,
                                   quota=_quota(args))
    _print_tenant(t)
    return 0


def tenant_update(args: argparse.Namespace) -> int:
    store = _store(args)
    current = store.tenant(args.tenant)
    _print_tenant(store.update_tenant(args.tenant, priority=args.priority, quota=_quota(args, current.quota)))
    return 0


def tenant_list(args: argparse.Namespace) -> int:
    for t in _store(args).tenants():
        _print_tenant(t)
    return 0


def key_create(args: argparse.Namespace) -> int:
    key, secret = _store(args).create_key(args.tenant, user=args.user, label=args.label)
    print(f"{key.id}\ttenant {key.tenant_id}\tuser {key.user}")
    print(secret)
    print("# store this key now: only its hash is kept. Use it as KINO_API_KEY or 'authorization: Bearer <key>'.")
    return 0


def key_revoke(args: argparse.Namespace) -> int:
    key = _store(args).revoke_key(args.key_id)
    print(f"revoked {key.id} ({key.prefix}...) of tenant {key.tenant_id} at {_when(key.revoked_at)}")
    return 0


def key_list(args: argparse.Namespace) -> int:
    for k in _store(args).keys(args.tenant):
        state = f"revoked {_when(k.revoked_at)}" if k.revoked_at else "active"
        print(f"{k.id}\t{k.tenant_id}\t{k.user}\t{k.prefix}...\t{state}\t{k.label}")
    return 0


def audit_list(args: argparse.Namespace) -> int:
    for e in _store(args).audit_events(args.tenant, limit=args.limit):
        print(f"{_when(e.at)}\t{e.kind}\t{e.category}\t{e.reason}")
    return 0
