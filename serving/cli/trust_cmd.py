"""Client commands for remix, publishing, the public feed, cameos and the audit list."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kino.v1 import video_service_pb2 as pb
from serving.cli.videos_cmd import client_options, connect, follow_and_download


def _when(ts) -> str:
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else "-"


def register(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("remix", help="make a new video from one of yours (or a public one) and a new prompt",
                       description="Video-to-video: the source is encoded with the video VAE, re-noised to "
                                   "--strength and denoised with the new prompt. The new video records its parent.")
    r.add_argument("video_id", help="the source video (video_...): yours, or a public one")
    r.add_argument("prompt", help="the new prompt")
    r.add_argument("--strength", type=float, help="0.1 (close to the source) to 1 (new); default 0.6")
    r.add_argument("--seed", type=int, help="noise seed (default: random)")
    r.add_argument("--public", action="store_true", help="publish it when done")
    r.add_argument("--enhance-prompt", action="store_true", help="let the server's prompt enhancer rewrite the prompt")
    r.add_argument("-o", "--output", type=Path, default=Path("remix.mp4"),
                   help="where to write the MP4 (default remix.mp4)")
    client_options(r)
    r.set_defaults(func=remix)

    p = sub.add_parser("publish", help="make a completed video public (or private again with --private)")
    p.add_argument("video_id", help="one of your completed videos (video_...)")
    p.add_argument("--private", action="store_true", help="make it private again (gone from the feed)")
    client_options(p)
    p.set_defaults(func=publish)

    f = sub.add_parser("feed", help="public videos of everyone, newest first")
    f.add_argument("--page-size", type=int, default=20, help="videos to show, 1-100 (default 20)")
    client_options(f)
    f.set_defaults(func=feed)

    a = sub.add_parser("audit", help="your tenant's audit events (e.g. moderation rejections)")
    a.add_argument("--limit", type=int, default=50, help="events to show, newest first, 1-1000 (default 50)")
    client_options(a)
    a.set_defaults(func=audit)

    c = sub.add_parser("cameo", help="register yourself as a cameo and control who may use it").add_subparsers(
        dest="cameo_command", required=True, metavar="ACTION")
    create = c.add_parser("create", help="register from a short recording of yourself (video with audio)")
    create.add_argument("recording", type=Path,
                        help="an MP4 of you with sound: its first frame and voice become the cameo")
    create.add_argument("--name", required=True, help="the name the cameo is shown under")
    create.add_argument("--consent", required=True, metavar="STATEMENT",
                        help="the consent you give, in your words; stored with the time and your key")
    create.add_argument("--require-approval", action="store_true",
                        help="hold every video that uses you until you approve it")
    grant = c.add_parser("grant", help="let a tenant (or one of its users) use your cameo")
    revoke = c.add_parser("revoke", help="withdraw a grant; their queued and running videos stop")
    for p_ in (grant, revoke):
        p_.add_argument("cameo_id", help="your cameo (cameo_...)")
        p_.add_argument("tenant", help="the tenant id")
        p_.add_argument("--user", default="*", help="one user of the tenant (default: all of them)")
    ls = c.add_parser("list", help="your cameos and their grants")
    vids = c.add_parser("videos", help="every video that uses your cameo, whoever made it")
    vids.add_argument("cameo_id", help="your cameo (cameo_...)")
    for verb in ("approve", "reject", "remove"):
        v = c.add_parser(verb, help={"approve": "release a video held for your approval",
                                     "reject": "reject a held video (it is deleted)",
                                     "remove": "delete any video of you (a running one is stopped)"}[verb])
        v.add_argument("cameo_id", help="your cameo (cameo_...)")
        v.add_argument("video_id", help="a video that uses it (video_...)")
        v.set_defaults(func=lambda a, verb=verb: cameo_review(a, verb))
    notes = c.add_parser("notifications", help="what happened with your cameos")
    notes.add_argument("--follow", action="store_true", help="keep streaming new ones")
    delete = c.add_parser("delete", help="delete your cameo (its videos in progress stop)")
    delete.add_argument("cameo_id", help="your cameo (cameo_...)")
    for p_, fn in ((create, cameo_create), (grant, cameo_grant), (revoke, cameo_revoke), (ls, cameo_list),
                   (vids, cameo_videos), (notes, cameo_notifications), (delete, cameo_delete)):
        p_.set_defaults(func=fn)
    for name in ("create", "grant", "revoke", "list", "videos", "approve", "reject", "remove", "notifications",
                 "delete"):
        client_options(c.choices[name])


def remix(args: argparse.Namespace) -> int:
    req = pb.RemixVideoRequest(video_id=args.video_id, prompt=args.prompt,
                               visibility=pb.VISIBILITY_PUBLIC if args.public else pb.VISIBILITY_PRIVATE,
                               enhance_prompt=args.enhance_prompt)
    if args.strength is not None:
        req.strength = args.strength
    if args.seed is not None:
        req.seed = args.seed
    with connect(args) as client:
        video = client.call(client.stub.RemixVideo, req)
        return follow_and_download(client, video, args.output, Console())


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
        print(f"{v.id}\t{_when(v.created_at)}\t{v.size}\t{v.seconds:g}s\t{v.prompt[:60]}")
    return 0


def audit(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.call(client.audit.ListAuditEvents, pb.ListAuditEventsRequest(limit=args.limit))
    for e in resp.events:
        print(f"{_when(e.at)}\t{e.kind}\t{e.category}\t{e.reason}")
    return 0


def _show_cameo(c: pb.Cameo) -> None:
    print(f"{c.id}\t{c.name}\tapproval {'required' if c.require_approval else 'not required'}\t"
          f"consent {_when(c.consent_at)} (key {c.consent_key_id})")
    for g in c.grants:
        state = f"revoked {_when(g.revoked_at)}" if g.revoked_at.seconds else "live"
        print(f"  grant {g.tenant}/{g.user}\t{state}")


def cameo_create(args: argparse.Namespace) -> int:
    with connect(args) as client:
        c = client.call(client.cameos.CreateCameo, pb.CreateCameoRequest(
            recording=args.recording.read_bytes(), name=args.name, consent_statement=args.consent, consent=True,
            require_approval=args.require_approval))
    _show_cameo(c)
    return 0


def cameo_grant(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _show_cameo(client.call(client.cameos.GrantCameo, pb.GrantCameoRequest(
            cameo_id=args.cameo_id, tenant=args.tenant, user=args.user)))
    return 0


def cameo_revoke(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _show_cameo(client.call(client.cameos.RevokeCameo, pb.RevokeCameoRequest(
            cameo_id=args.cameo_id, tenant=args.tenant, user=args.user)))
    return 0


def cameo_list(args: argparse.Namespace) -> int:
    with connect(args) as client:
        for c in client.call(client.cameos.ListCameos, pb.ListCameosRequest()).cameos:
            _show_cameo(c)
    return 0


def cameo_videos(args: argparse.Namespace) -> int:
    from serving.cli.videos_cmd import status_name

    with connect(args) as client:
        resp = client.call(client.cameos.ListCameoVideos, pb.ListCameoVideosRequest(cameo_id=args.cameo_id))
    for v in resp.videos:
        review = pb.Review.Name(v.review).removeprefix("REVIEW_").lower()
        print(f"{v.id}\t{status_name(v.status)}\treview {review}\t{v.prompt[:60]}")
    return 0


def cameo_review(args: argparse.Namespace, verb: str) -> int:
    with connect(args) as client:
        if verb == "remove":
            client.call(client.cameos.DeleteCameoVideo, pb.DeleteCameoVideoRequest(cameo_id=args.cameo_id,
                                                                                   video_id=args.video_id))
        else:
            client.call(client.cameos.ReviewCameoVideo, pb.ReviewCameoVideoRequest(
                cameo_id=args.cameo_id, video_id=args.video_id, approve=verb == "approve"))
    print(f"{verb}d {args.video_id}" if verb != "remove" else f"removed {args.video_id}")
    return 0


def cameo_notifications(args: argparse.Namespace) -> int:
    with connect(args) as client:
        if args.follow:
            for n in client.stream(client.cameos.WatchCameoNotifications, pb.WatchCameoNotificationsRequest()):
                print(f"{_when(n.at)}\t{n.kind}\t{n.video_id}\tby {n.creator_tenant}\t{n.message}", flush=True)
        else:
            resp = client.call(client.cameos.ListCameoNotifications, pb.ListCameoNotificationsRequest())
            for n in resp.notifications:
                print(f"{_when(n.at)}\t{n.kind}\t{n.video_id}\tby {n.creator_tenant}\t{n.message}")
    return 0


def cameo_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.call(client.cameos.DeleteCameo, pb.DeleteCameoRequest(cameo_id=args.cameo_id))
    print(f"deleted {args.cameo_id}")
    return 0
