"""`kino audit`: your tenant's audit events."""

from __future__ import annotations

import argparse

from kino.cli.videos_cmd import client_options, connect, when
from kino_api.v1 import video_service_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("audit", help="your tenant's audit events (e.g. moderation rejections)")
    a.add_argument("--limit", type=int, default=50, help="events to show, newest first, 1-1000 (default 50)")
    client_options(a)
    a.set_defaults(func=audit)


def audit(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.call(client.audit.ListAuditEvents, pb.ListAuditEventsRequest(limit=args.limit))
    for e in resp.events:
        print(f"{when(e.at)}\t{e.kind}\t{e.category}\t{e.reason}")
    return 0
