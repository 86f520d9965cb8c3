"""`kino remix`: a new video from one of yours (or a public one) and a new prompt."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console

from kino.cli.videos_cmd import client_options, connect, follow_and_download
from kino_api.v1 import video_service_pb2 as pb


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
