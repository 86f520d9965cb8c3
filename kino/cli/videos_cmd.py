"""Client commands over gRPC: generate (with a live progress bar), list, get, cancel, delete, download."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from kino.cli.options import add_generation_options, add_lora_options
from kino.client import KinoClient
from kino_api.v1 import video_service_pb2 as pb

DEFAULT_ADDRESS = "127.0.0.1:50051"
STATUS_NAMES = {"queued": pb.VIDEO_STATUS_QUEUED, "in_progress": pb.VIDEO_STATUS_IN_PROGRESS,
                "completed": pb.VIDEO_STATUS_COMPLETED, "failed": pb.VIDEO_STATUS_FAILED,
                "cancelled": pb.VIDEO_STATUS_CANCELLED}


def when(ts) -> str:
    """A protobuf Timestamp as local 'YYYY-MM-DD HH:MM:SS' ('-' when unset)."""
    return ts.ToDatetime().strftime("%Y-%m-%d %H:%M:%S") if ts.seconds else "-"


def status_name(value: int) -> str:
    return pb.VideoStatus.Name(value).removeprefix("VIDEO_STATUS_").lower()


def stage_name(value: int) -> str:
    return pb.Stage.Name(value).removeprefix("STAGE_").lower()


def client_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--address", default=os.environ.get("KINO_ADDRESS", DEFAULT_ADDRESS),
                   help=f"the Kino gRPC server (default: $KINO_ADDRESS or {DEFAULT_ADDRESS})")
    p.add_argument("--api-key", default=os.environ.get("KINO_API_KEY"),
                   help="your API key (default: $KINO_API_KEY; a local server needs none)")


def connect(args: argparse.Namespace) -> KinoClient:
    return KinoClient(args.address, api_key=args.api_key)


def register(sub: argparse._SubParsersAction) -> None:
    g = sub.add_parser("generate", help="generate a video through a Kino server, with a progress bar",
                       description="Queue a video on a Kino server, follow its progress live, then download the "
                                   "MP4 (checked against its sha256).")
    add_generation_options(g)
    add_lora_options(g)
    g.add_argument("-o", "--output", type=Path, default=Path("kino.mp4"), help="where to write the MP4")
    g.add_argument("--priority", type=int, help="0 (lowest) to 9 (default 5)")
    g.add_argument("--idempotency-key", help="retrying with the same key returns the same video")
    g.add_argument("--image", type=Path, help="start from this first frame (PNG or JPEG): image-to-video")
    g.add_argument("--cameo", help="put a registered person in the video (you need their grant)")
    g.add_argument("--public", action="store_true", help="publish it to the public feed when done")
    g.add_argument("--enhance-prompt", action="store_true",
                   help="let the server's prompt enhancer (an LLM) rewrite the prompt first; `kino get` shows the "
                        "rewrite")
    client_options(g)
    g.set_defaults(func=generate)

    ls = sub.add_parser("list", help="list your videos, newest first")
    ls.add_argument("--status", choices=sorted(STATUS_NAMES), help="only videos in this status")
    ls.add_argument("--page-size", type=int, default=20, help="videos per page (1-100, default 20)")
    ls.add_argument("--page-token", default="", help="continue from a previous page")
    client_options(ls)
    ls.set_defaults(func=list_videos)

    for name, func, text in (("get", get, "show one video"), ("cancel", cancel, "cancel a queued or running video"),
                             ("delete", delete, "delete a finished video and its MP4")):
        p = sub.add_parser(name, help=text, description=text[0].upper() + text[1:] + ".")
        p.add_argument("id", help="the video id (video_...)")
        client_options(p)
        p.set_defaults(func=func)

    d = sub.add_parser("download", help="download a completed video's MP4")
    d.add_argument("id", help="the video id (video_...)")
    d.add_argument("-o", "--output", type=Path, help="where to write it (default: ID.mp4)")
    client_options(d)
    d.set_defaults(func=download)


def create_request(args: argparse.Namespace) -> pb.CreateVideoRequest:
    req = pb.CreateVideoRequest(prompt=args.prompt, negative_prompt=args.negative_prompt or "",
                                idempotency_key=getattr(args, "idempotency_key", None) or "",
                                cameo_id=getattr(args, "cameo", None) or "",
                                visibility=pb.VISIBILITY_PUBLIC if getattr(args, "public", False)
                                else pb.VISIBILITY_PRIVATE, enhance_prompt=getattr(args, "enhance_prompt", False))
    if getattr(args, "image", None):
        req.image = Path(args.image).read_bytes()
    if args.size:
        req.size = args.size
    if args.fps is not None:
        req.fps = f"{args.fps.numerator}/{args.fps.denominator}"
    req.loras.extend(pb.LoraRef(name=name, scale=scale) for name, scale in getattr(args, "lora", None) or ())
    if getattr(args, "cache", None):
        req.cache = pb.StepCache.Value(f"STEP_CACHE_{args.cache.upper()}")
    for name in ("seconds", "seed", "steps", "guidance_scale", "audio_guidance_scale", "priority", "two_stage"):
        value = getattr(args, name, None)
        if value is not None:
            setattr(req, name, value)
    return req


def follow(client: KinoClient, video: pb.Video, console: Console) -> pb.Video:
    """Show WatchVideo as a progress bar until the video is finished; return its final state."""
    columns = (TextColumn("[bold]{task.fields[stage]:<10}"), BarColumn(), TextColumn("{task.percentage:>3.0f}%"),
               TextColumn("{task.fields[detail]}"), TimeElapsedColumn())
    with Progress(*columns, console=console, transient=False) as bar:
        task = bar.add_task("video", total=1.0, stage="queued", detail="")
        for ev in client.watch(video.id):
            stage = stage_name(ev.stage)
            if ev.status == pb.VIDEO_STATUS_QUEUED:
                detail = f"position {ev.queue_position} in queue"
            elif ev.stage == pb.STAGE_DENOISING:
                detail = f"step {ev.step}/{ev.total_steps}, batch of {ev.batch_size}"
                if ev.eta_seconds:
                    detail += f", ~{ev.eta_seconds:.0f}s left"
            else:
                detail = ev.message if ev.message != "snapshot" else ""
            bar.update(task, completed=ev.progress, stage=stage if not ev.terminal else status_name(ev.status),
                       detail=detail)
            if ev.terminal:
                break
    return client.get(video.id)


def generate(args: argparse.Namespace) -> int:
    with connect(args) as client:
        video = client.create(create_request(args))
        return follow_and_download(client, video, args.output, Console())


def follow_and_download(client: KinoClient, video: pb.Video, output: Path, console: Console) -> int:
    from engines.mp4 import probe

    console.print(f"queued [bold]{video.id}[/bold] ({video.size}, {video.seconds:g} s, seed {video.seed}) "
                  f"on {client.address}")
    final = follow(client, video, console)
    if final.status != pb.VIDEO_STATUS_COMPLETED:
        console.print(f"[red]{status_name(final.status)}[/red]: {final.error.code}: {final.error.message}")
        return 1
    if final.review == pb.REVIEW_PENDING:
        console.print(f"completed, and held until the cameo owner approves it: "
                      f"`kino download {final.id}` once released")
        return 0
    got = client.download(final.id, output)
    console.print(f"wrote [bold]{got.path.resolve()}[/bold] ({got.size_bytes} bytes, sha256 {got.sha256[:16]}...)")
    console.print(f"  {probe(got.path).summary()}")
    return 0


def list_videos(args: argparse.Namespace) -> int:
    with connect(args) as client:
        resp = client.list(status=STATUS_NAMES.get(args.status, 0), page_size=args.page_size,
                           page_token=args.page_token)
    rows = [(v.id, status_name(v.status), f"{v.progress:.0%}", v.size, f"{v.seconds:g}",
             v.created_at.ToDatetime().strftime("%Y-%m-%d %H:%M:%S"), v.prompt) for v in resp.videos]
    console = Console()
    if console.is_terminal:
        table = Table("id", "status", "progress", "size", "seconds", "created", "prompt")
        table.columns[0].no_wrap = True
        for row in rows:
            table.add_row(*row[:-1], row[-1][:40])
        console.print(table)
    else:  # piped: one tab-separated line per video, for scripts
        for row in rows:
            print("\t".join(row))
    if resp.next_page_token:
        print(f"more: kino list --page-token {resp.next_page_token}")
    return 0


def _show(v: pb.Video) -> None:
    print(f"{v.id}  {status_name(v.status)}  {v.progress:.0%}  stage {stage_name(v.stage)} "
          f"step {v.step}/{v.total_steps}")
    print(f"  model {v.model}, {v.size}, {v.seconds:g} s at {v.fps} fps, seed {v.seed}, {v.steps} steps, "
          f"priority {v.priority}")
    print(f"  prompt: {v.prompt}")
    if v.enhanced_prompt:
        print(f"  enhanced prompt: {v.enhanced_prompt}")
    if v.size_bytes:
        print(f"  mp4: {v.size_bytes} bytes, sha256 {v.sha256}")
    if v.HasField("resumed_from_step"):
        print(f"  resumed from its checkpoint at step {v.resumed_from_step} (attempts: {v.attempts})")
    if v.error.code:
        print(f"  error: {v.error.code}: {v.error.message}")


def get(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _show(client.get(args.id))
    return 0


def cancel(args: argparse.Namespace) -> int:
    with connect(args) as client:
        _show(client.cancel(args.id))
    return 0


def delete(args: argparse.Namespace) -> int:
    with connect(args) as client:
        client.delete(args.id)
    print(f"deleted {args.id}")
    return 0


def download(args: argparse.Namespace) -> int:
    with connect(args) as client:
        got = client.download(args.id, args.output or Path(f"{args.id}.mp4"))
    print(f"wrote {got.path} ({got.size_bytes} bytes, sha256 {got.sha256})")
    return 0
