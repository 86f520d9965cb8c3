"""One video across 2 ranks (engines/parallel) against 1 rank, side by side in one run.

    python -m loadtests.bench_parallel                      # everything (the 1080p/20 s decodes take minutes)
    python -m loadtests.bench_parallel --skip-decode        # the denoise cases only
    python -m loadtests.bench_parallel --out out/bench_parallel.md

Cases (real gloo processes on this host, one CPU thread each; rank 0 is this process):
- denoise of one `small` video at the preset's defaults (256x256, 33 frames, CFG, 8 steps): 1 rank
  (EagerBackend) vs cfg=2 on 2 ranks vs ulysses=2 on 2 ranks; the Denoiser's loop time.
- VAE decode of one `tiny` 1920x1088, 20 s video (random latents; default DecodeConfig: chunks x
  tiles): 1 rank vs 2 ranks; the time to iterate every frame chunk (what the consumer does with
  the frames is not counted; MP4 encoding stays on rank 0).

Each case runs `--repeats` times, the cases interleaved round by round (the machine is shared);
the table shows medians and the ratio to the 1-rank median of the same run, plus the largest
difference from the 1-rank output (the split must not change it) and how busy other tenants kept
the cores meanwhile (/proc/stat, minus this benchmark's own processes).
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from engines.config import preset
from engines.decoder import Decoder
from engines.model_loader import ALL_PARTS, DECODER_PARTS, ComponentSource
from engines.parallel import ParallelBackend, ParallelUnitRunner
from engines.params import GenerationRequest
from engines.stage_io import DenoisedLatents, LatentShape
from engines.staged_pipeline import StagedPipeline, StageTimes
from loadtests.parallel_world import World

_TICK = os.sysconf("SC_CLK_TCK")


def _busy_seconds() -> float:
    """CPU seconds all cores spent busy since boot."""
    with open("/proc/stat") as f:
        user, nice, system, _idle, _iowait, irq, softirq, steal = (int(v) for v in f.readline().split()[1:9])
    return (user + nice + system + irq + softirq + steal) / _TICK


def _cpu_seconds(pid: int) -> float:
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / _TICK  # utime + stime
    except FileNotFoundError:
        return 0.0


@dataclass
class Case:
    name: str
    ranks: int
    seconds: list[float] = field(default_factory=list)
    max_diff: float = 0.0
    others_load: list[float] = field(default_factory=list)  # cores other tenants kept busy, per run

    @property
    def median(self) -> float:
        return statistics.median(self.seconds)


def _measure(case: Case, run: Callable[[], tuple[float, float]], pids: list[int]) -> None:
    """`run` returns (seconds, max diff from 1 rank); also records the other tenants' load."""
    busy0, ours0, t0 = _busy_seconds(), sum(_cpu_seconds(p) for p in pids), time.perf_counter()
    seconds, diff = run()
    wall = time.perf_counter() - t0
    others = (_busy_seconds() - busy0) - (sum(_cpu_seconds(p) for p in pids) - ours0)
    case.seconds.append(seconds)
    case.max_diff = max(case.max_diff, diff)
    case.others_load.append(max(0.0, others) / wall)


def bench_denoise(repeats: int) -> list[Case]:
    config = preset("small")
    components = ComponentSource(config).load(ALL_PARTS)
    params = GenerationRequest(prompt="a lighthouse at dusk, waves", seed=1).validated(config)
    assert params.use_cfg
    world = World(2, "small")
    eager = StagedPipeline(config, components)
    reference: list[np.ndarray] = []

    def run(engine_shape: tuple[int, int] | None) -> tuple[float, float]:
        times = StageTimes()
        if engine_shape is None:
            [out] = eager.denoise([("r", params)], times=times)
        else:
            engine = world.engine(*engine_shape)
            backend = ParallelBackend(components.transformer, engine.leader)
            try:
                [out] = StagedPipeline(config, components, backend=backend).denoise([("r", params)], times=times)
            finally:
                backend.close()
            world.finish(engine)
        if not reference:
            reference.append(out.video)
        return times.denoise, float(np.abs(out.video - reference[0]).max())

    cases = {None: Case("denoise, 1 rank", 1), (2, 1): Case("denoise, cfg=2", 2),
             (1, 2): Case("denoise, ulysses=2", 2)}
    try:
        for shape in cases:  # warm-up (and the reference output first)
            run(shape)
        pids = [os.getpid(), *(p.pid for p in world.processes if p.pid)]
        for _ in range(repeats):
            for shape, case in cases.items():
                _measure(case, lambda shape=shape: run(shape), pids)
    finally:
        world.close()
    return list(cases.values())


def bench_decode(repeats: int, seconds: float) -> list[Case]:
    config = preset("tiny")
    components = ComponentSource(config).load(DECODER_PARTS)
    params = GenerationRequest(prompt="x", seed=1, width=1920, height=1088, seconds=seconds, steps=1).validated(config)
    one = Decoder(config, components)
    shape = LatentShape.for_params(params, one.geometry)
    g = one.geometry
    gen = torch.Generator().manual_seed(0)
    latents = DenoisedLatents("bench", shape, torch.randn(shape.video_tokens, g.latent_channels, generator=gen).numpy(),
                              np.zeros((shape.audio_frames, g.audio_latent_channels * g.latent_mel_bins), np.float32))
    world = World(2, "tiny")
    reference: list[list[float]] = []

    def run(decoder: Decoder) -> tuple[float, float]:
        """Seconds to iterate the frames, minus the time this loop spends checksumming them."""
        sums, checking, started = [], 0.0, time.perf_counter()
        for chunk in decoder.iter_video(latents):
            t = time.perf_counter()
            sums.append(float(chunk.double().sum()))
            checking += time.perf_counter() - t
        elapsed = time.perf_counter() - started - checking
        if not reference:
            reference.append(sums)
        return elapsed, max(abs(a - b) for a, b in zip(sums, reference[0], strict=True))

    what = f"decode 1920x1088 {seconds:g} s"
    single, spread = Case(f"{what}, 1 rank", 1), Case(f"{what}, 2 ranks", 2)
    try:
        engine = world.engine(1, 2)  # decode spreads over the engine's ranks; its layout does not matter
        parallel = Decoder(config, components, runner=ParallelUnitRunner(engine.leader))
        pids = [os.getpid(), *(p.pid for p in world.processes if p.pid)]
        print(f"decode: {shape.frames} x {shape.height} x {shape.width} latents, "
              f"{len(one.chunk_plan((1, g.latent_channels, shape.frames, shape.height, shape.width), config.decode))} "
              "chunks", flush=True)
        for _ in range(repeats):  # no warm-up: each run is minutes long
            _measure(single, lambda: run(one), pids)
            _measure(spread, lambda: run(parallel), pids)
            print(f"  1 rank {single.seconds[-1]:.1f} s, 2 ranks {spread.seconds[-1]:.1f} s", flush=True)
        world.finish(engine)
    finally:
        world.close()
    return [single, spread]


def markdown(groups: list[list[Case]], load: tuple[float, float]) -> str:
    lines = ["| case | ranks | median s | runs | ratio to 1 rank | max diff vs 1 rank | other tenants' load (cores) |",
             "| --- | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for cases in groups:
        base = cases[0].median
        for c in cases:
            lines.append(f"| {c.name} | {c.ranks} | {c.median:.2f} | {len(c.seconds)} | {base / c.median:.2f}x | "
                         f"{c.max_diff:.1e} | {statistics.median(c.others_load):.2f} |")
    lines.append("")
    lines.append(f"Load average (1 min) at start {load[0]:.2f}, at end {load[1]:.2f}; {os.cpu_count()} cores.")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeats", type=int, default=5, help="timed runs of each denoise case")
    ap.add_argument("--decode-repeats", type=int, default=3, help="timed runs of each decode case")
    ap.add_argument("--decode-seconds", type=float, default=20.0, help="length of the 1920x1088 clip decoded")
    ap.add_argument("--skip-decode", action="store_true", help="denoise cases only")
    ap.add_argument("--out", type=Path, help="also write the markdown table here")
    args = ap.parse_args()
    torch.set_num_threads(1)
    start_load = os.getloadavg()[0]
    groups = [bench_denoise(args.repeats)]
    if not args.skip_decode:
        groups.append(bench_decode(args.decode_repeats, args.decode_seconds))
    table = markdown(groups, (start_load, os.getloadavg()[0]))
    print("\n### One video across 2 ranks (engines/parallel), gloo on this host, 1 thread per rank\n")
    print(table)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(table + "\n")


if __name__ == "__main__":
    main()
