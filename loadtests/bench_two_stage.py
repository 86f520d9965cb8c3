"""Two-stage generation against one stage, side by side in one run.

    python -m loadtests.bench_two_stage                 # both cases (the 1080p decodes take minutes)
    python -m loadtests.bench_two_stage --skip-1080p    # the small case only
    python -m loadtests.bench_two_stage --repeats 3 --out out/bench_two_stage.md

Cases (the two arms interleaved round by round):
- `small`, 512x512, 33 frames, 40 steps, in this process (one engine serves both arms): encode and
  denoise in wall and CPU seconds (two-stage: stage 1 at 256x256 + upsampling + the 3-step refine at
  512x512) against one stage at 512x512, and the PSNR and SSIM of the two-stage frames against the
  one-stage frames. With random weights that only shows the two paths agree in shape and scale, not
  which looks better.
- `tiny`, 1920x1088 for 2 s, each run its own `kino run` process: the stage times it prints and the
  peak resident memory of each process (os.wait4's ru_maxrss). Decoding is the same work in both,
  so the table says where the time goes rather than setting a goal.

Beside each case: how busy the machine was (every tenant) while it ran, to judge the figures of a
shared machine by; CPU seconds are this process's own and do not count other tenants.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path

from engines.staged_pipeline import StageTimes
from loadtests.quality import psnr, ssim_luma


@dataclass
class Arm:
    label: str
    args: list[str]
    times: list[StageTimes] = field(default_factory=list)
    split: list[str] = field(default_factory=list)  # the "two-stage: ..." lines
    peak_mib: list[float] = field(default_factory=list)
    cpu: list[float] = field(default_factory=list)
    output: Path | None = None


def _run(arm: Arm, out: Path) -> None:
    cmd = [sys.executable, "-m", "kino.cli.main", "run", *arm.args, "-o", str(out)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    stdout = proc.stdout.read() if proc.stdout else ""
    _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{stdout}")
    arm.times.append(StageTimes.parse(stdout))
    arm.split += [line for line in stdout.splitlines() if line.startswith("two-stage:")]
    arm.peak_mib.append(usage.ru_maxrss / 1024)
    arm.cpu.append(usage.ru_utime + usage.ru_stime)
    arm.output = out


def _busy() -> tuple[int, int]:
    """(idle, total) CPU ticks of the whole machine since boot (/proc/stat), for a busy share between two reads."""
    with open("/proc/stat") as f:
        values = [int(v) for v in f.readline().split()[1:]]
    return values[3] + values[4], sum(values)  # idle + iowait, total


def _case(name: str, common: list[str], repeats: int, tmp: Path) -> tuple[Arm, Arm, float]:
    one, two = Arm("one stage", common + ["--no-two-stage"]), Arm("two-stage", common + ["--two-stage"])
    idle0, total0 = _busy()
    for r in range(repeats):
        for arm in ((one, two) if r % 2 == 0 else (two, one)):
            _run(arm, tmp / f"{name}-{arm.label.replace(' ', '_')}-{r}.mp4")
            print(f"  {name} {arm.label} run {r + 1}: {arm.times[-1]}", flush=True)
    idle1, total1 = _busy()
    busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
    return one, two, busy


def _small_case(repeats: int) -> list[str]:
    """In this process (one engine, both arms), timing each denoise in wall and in CPU seconds."""
    from engines.config import preset
    from engines.params import GenerationRequest
    from engines.staged_pipeline import StagedPipeline

    pipe = StagedPipeline(preset("small"))
    base = GenerationRequest(prompt="a lighthouse at dusk, waves on the rocks", width=512, height=512,
                            seconds=33 / 24, steps=40, seed=7)
    arms = {"one stage": base, "two-stage": dataclasses.replace(base, two_stage=True)}
    wall: dict[str, list[float]] = {k: [] for k in arms}
    cpu: dict[str, list[float]] = {k: [] for k in arms}
    split, frames = "", {}
    idle0, total0 = _busy()
    for r in range(repeats):
        for label in (list(arms) if r % 2 == 0 else list(arms)[::-1]):
            p = arms[label].validated(pipe.config)
            times = StageTimes()
            w, c = time.perf_counter(), time.process_time()
            if p.two_stage:
                latents = pipe.denoise_two_stage(p, times=times)
                split = times.two_stage_line().removeprefix("two-stage: ").replace(" | ", ", ")
            else:
                [latents] = pipe.denoise([("one", p)], times=times)
            wall[label].append(time.perf_counter() - w)
            cpu[label].append(time.process_time() - c)
            frames[label] = pipe.decoder.decode_video(latents).float()
            print(f"  small {label} run {r + 1}: {wall[label][-1]:.2f} s wall, {cpu[label][-1]:.2f} s CPU", flush=True)
    idle1, total1 = _busy()
    busy = 1 - (idle1 - idle0) / max(1, total1 - total0)
    a, b = frames["one stage"], frames["two-stage"]
    w1, w2, c1, c2 = (_med(wall["one stage"]), _med(wall["two-stage"]), _med(cpu["one stage"]),
                      _med(cpu["two-stage"]))
    return ["### small, 512x512 x 33 frames, 40 steps (encode + denoise, one engine in one process)", "",
            "| arm | wall s (median) | CPU s (median) | stage split (wall) |", "|---|---:|---:|---|",
            f"| one stage | {w1:.2f} | {c1:.2f} | |", f"| two-stage | {w2:.2f} | {c2:.2f} | {split} |", "",
            f"denoise speed-up: **{w1 / w2:.2f}x** wall, **{c1 / c2:.2f}x** CPU time; two-stage frames against "
            f"one-stage frames: PSNR {psnr(b, a):.1f} dB, SSIM {ssim_luma(b, a):.3f} (random weights: shape and "
            f"scale agree, no more); machine busy {100 * busy:.0f}% during the case (all tenants)", ""]


def _med(values: list[float]) -> float:
    return statistics.median(values)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=1, help="runs of each arm per case (default 1)")
    ap.add_argument("--skip-1080p", action="store_true", help="only the small 512x512 case")
    ap.add_argument("--out", type=Path, help="also write the tables (markdown) here")
    args = ap.parse_args(argv)
    lines: list[str] = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        lines += _small_case(args.repeats)
        if not args.skip_1080p:
            hd = ["a red ball bouncing", "--preset", "tiny", "--size", "1920x1088", "--seconds", "2", "--seed", "3"]
            one, two, busy = _case("1080p", hd, args.repeats, tmp)
            lines += ["### tiny, 1920x1088, 2 s (default steps)", "",
                      "| arm | encode s | denoise s | decode s | total s | process CPU s | peak RSS MiB |",
                      "|---|---|---|---|---|---|---|"]
            for arm in (one, two):
                t = arm.times
                lines.append(f"| {arm.label} | {_med([x.encode for x in t]):.2f} | {_med([x.denoise for x in t]):.2f} "
                             f"| {_med([x.decode for x in t]):.2f} | {_med([x.total for x in t]):.2f} "
                             f"| {_med(arm.cpu):.1f} | {max(arm.peak_mib):.0f} |")
            split = two.split[-1].removeprefix("two-stage: ").replace(" | ", ", ")
            lines += ["", f"two-stage split: {split}; machine busy {100 * busy:.0f}% during the case", ""]
    text = "\n".join(lines)
    print(text)
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    started = time.perf_counter()
    code = main()
    print(f"({time.perf_counter() - started:.0f} s)")
    raise SystemExit(code)
