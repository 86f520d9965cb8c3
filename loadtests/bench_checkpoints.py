"""What resumable denoising costs an uninterrupted job: one job's denoising through the Denoiser's own loop
(serving/data_plane/denoise_loop.py) with checkpoints written to an artifact store every N seconds, against the
same job with none, in the same run (the two take turns, so a shared machine's noise falls on both).

    .venv/bin/python -m loadtests.bench_checkpoints                          # 512x512, 2 s, 30 steps, tiny
    .venv/bin/python -m loadtests.bench_checkpoints --every 0,2,30 --rounds 5
    .venv/bin/python -m loadtests.bench_checkpoints --object-store seaweedfs  # checkpoints into an S3 server

Prints, per interval, the median denoise wall time, its ratio to no checkpoints, the checkpoints written, their
size and the median seconds one took (taken at the step boundary, written beside the steps).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import tempfile
import time
from pathlib import Path

from engines.config import preset
from engines.denoiser import Denoiser, DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import PromptPair
from engines.staged_pipeline import StagedPipeline
from serving.artifacts import ArtifactStore, LocalArtifactStore
from serving.data_plane.denoise_loop import DenoiseLoop
from serving.data_plane.scheduler import StepScheduler
from serving.data_plane.stages import Checkpointed, Checkpointing
from serving.metrics import NoMetrics


class _Timed(NoMetrics):
    def __init__(self) -> None:
        self.writes: list[tuple[int, float]] = []

    def checkpoint_written(self, size_bytes: int, seconds: float) -> None:
        self.writes.append((size_bytes, seconds))


async def _denoise(engine: Denoiser, store: ArtifactStore, request: DenoiseRequest, every: float | None
                   ) -> tuple[float, list[tuple[int, float]]]:
    metrics = _Timed()
    loop = DenoiseLoop(engine, StepScheduler(1, max_running=1), metrics, checkpoints=store)
    checkpointing = None if every is None else Checkpointing(f"bench/{request.request_id}.ckpt", every)
    started = time.perf_counter()
    written = 0
    async for item in loop.denoise(request, 5, checkpointing):
        written += isinstance(item, Checkpointed)
    return time.perf_counter() - started, metrics.writes


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="tiny")
    ap.add_argument("--size", default="512x512")
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--steps", type=int, default=30)
    ap.add_argument("--every", default="0,2,30", help="checkpoint intervals in seconds, comma-separated")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--object-store", choices=("directory", "seaweedfs"), default="directory")
    args = ap.parse_args()

    cfg = preset(args.preset)
    pipeline = StagedPipeline(cfg)
    width, height = (int(v) for v in args.size.split("x"))
    params = GenerationRequest(prompt="a red ball bouncing on a dark floor", seed=1, steps=args.steps, width=width,
                               height=height, seconds=args.seconds).validated(cfg)
    [emb] = pipeline.text_encoder.encode([PromptPair(params.prompt, params.negative_prompt)])
    intervals: list[float | None] = [None, *(float(v) for v in args.every.split(","))]
    with contextlib.ExitStack() as stack:
        base = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="kino-bench-ckpt-")))
        if args.object_store == "seaweedfs":
            from loadtests.local_servers import seaweedfs
            from serving.artifacts.s3 import S3ArtifactStore

            s3 = stack.enter_context(seaweedfs(base / "seaweedfs", bucket="kino-bench"))
            store: ArtifactStore = S3ArtifactStore(s3.bucket, endpoint=s3.url, region=s3.region,
                                                   access_key_id=s3.access_key, secret_access_key=s3.secret_key,
                                                   allow_http=True)
        else:
            store = LocalArtifactStore(base / "artifacts")
        asyncio.run(_denoise(pipeline.denoiser, store, DenoiseRequest("warm", params, emb), None))  # warm-up
        walls: dict[float | None, list[float]] = {e: [] for e in intervals}
        writes: dict[float | None, list[tuple[int, float]]] = {e: [] for e in intervals}
        for r in range(args.rounds):
            for every in intervals[r % len(intervals):] + intervals[:r % len(intervals)]:  # take turns
                wall, w = asyncio.run(_denoise(pipeline.denoiser, store, DenoiseRequest(f"r{r}", params, emb), every))
                walls[every].append(wall)
                writes[every].extend(w)
    base_wall = statistics.median(walls[None])
    print(f"{args.preset} {args.size} {args.seconds:g} s, {args.steps} steps, {args.object_store}, "
          f"{args.rounds} rounds; step {base_wall / args.steps * 1000:.0f} ms")
    print("| checkpoint every | denoise s (median) | vs none | checkpoints per job | size | one checkpoint s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for every in intervals:
        w = writes[every]
        per_job = len(w) / args.rounds
        size = f"{w[0][0] / 2**20:.2f} MiB" if w else "-"
        took = f"{statistics.median(s for _, s in w):.4f}" if w else "-"
        name = "none" if every is None else ("every step" if every == 0 else f"{every:g} s")
        print(f"| {name} | {statistics.median(walls[every]):.2f} | {statistics.median(walls[every]) / base_wall:.3f}x "
              f"| {per_job:g} | {size} | {took} |")


if __name__ == "__main__":
    main()
