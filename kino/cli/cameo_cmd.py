"""`kino cameo ...`: register yourself as a cameo, grant and revoke its use, review videos of you."""

from __future__ import annotations

import argparse
from pathlib import Path

from kino.cli.videos_cmd import client_options, connect, status_name, when
from kino_api.v1 import video_service_pb2 as pb


def register(sub: argparse._SubParsersAction) -> None:
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


def _show_cameo(c: pb.Cameo) -> None:
    print(f"{c.id}\t{c.name}\tapproval {'required' if c.require_approval else 'not required'}\t"
          f"consent {when(c.consent_at)} (key {c.consent_key_id})")
    for g in c.grants:
        state = f"revoked {when(g.revoked_at)}" if g.revoked_at.seconds else "live"
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
                print(f"{when(n.at)}\t{n.kind}\t{n.video_id}\tby {n.creator_tenant}\t{n.message}", flush=True)
        else:
            resp = client.call(client.cameos.ListCameoNotifications, pb.ListCameoNotificationsRequest())
            for n in resp.notifications:
                print(f"{when(n.at)}\t{n.kind}\t{n.video_id}\tby {n.creator_tenant}\t{n.message}")
    return 0


def cameo_delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.call(client.cameos.DeleteCameo, pb.DeleteCameoRequest(cameo_id=args.cameo_id))
    print(f"deleted {args.cameo_id}")
    return 0
