"""`kino publish` and `kino feed`: making videos public, and the public feed."""

from __future__ import annotations

import argparse

from kino.cli.videos_cmd import client_options, connect, when
from kino_api.v1 import video_service_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("publish", help="make a completed video public (or private again with --private)")
    p.add_argument("video_id", help="one of your completed videos (video_...)")
    p.add_argument("--private", action="store_true", help="make it private again (gone from the feed)")
    client_options(p)
    p.set_defaults(func=publish)

    f = sub.add_parser("feed", help="public videos of everyone, newest first")
    f.add_argument("--page-size", type=int, default=20, help="videos to show, 1-100 (default 20)")
    client_options(f)
    f.set_defaults(func=feed)


def publish(args: argparse.Namespace) -> int:
    vis = pb.VISIBILITY_PRIVATE if args.private else pb.VISIBILITY_PUBLIC
    with connect(args) as client:
        v = client.call(client.stub.SetVideoVisibility, pb.SetVideoVisibilityRequest(id=args.video_id, visibility=vis))
    print(f"{v.id} is now {pb.Visibility.Name(v.visibility).removeprefix('VISIBILITY_').lower()}")
    return 0


def feed(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.call(client.stub.ListPublicVideos, pb.ListPublicVideosRequest(page_size=args.page_size))
    for v in resp.videos:
        print(f"{v.id}\t{when(v.created_at)}\t{v.size}\t{v.seconds:g}s\t{v.prompt[:60]}")
    return 0
