"""Engine benchmark: per-stage time and peak memory, the largest output, step batching.

    python -m loadtests.bench_engines                 # everything (the 1080p/20 s run takes minutes)
    python -m loadtests.bench_engines --skip-largest  # tiny + small + step batching only

Timings are medians over repeats after a warm-up; throughput is reported as a ratio to
batch 1 measured in the same run (these machines are noisy). Results: docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from engines.config import preset
from engines.decoder import frames_to_uint8
from engines.denoiser import DenoiseRequest
from engines.mp4 import write_mp4
from engines.params import GenerationParams, GenerationRequest
from engines.stage_io import PromptPair
from engines.staged_pipeline import StagedPipeline

_PAGE = os.sysconf("SC_PAGE_SIZE")


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * _PAGE


class PeakRSS:
    """Samples this process's resident memory every 5 ms; `peak_mib` is the rise over the start."""

    def __init__(self) -> None:
        self.start = self.peak = _rss()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.wait(0.005):
            self.peak = max(self.peak, _rss())

    def __enter__(self) -> PeakRSS:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()
        self.peak = max(self.peak, _rss())

    @property
    def peak_mib(self) -> float:
        return (self.peak - self.start) / 2**20

    @property
    def total_mib(self) -> float:
        return self.peak / 2**20


@dataclass
class Measured:
    seconds: float
    peak_mib: float
    total_mib: float


def measure(fn: Callable[[], object], repeats: int) -> Measured:
    fn()  # warm-up
    times, peaks, totals = [], [], []
    for _ in range(repeats):
        with PeakRSS() as mem:
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
        peaks.append(mem.peak_mib)
        totals.append(mem.total_mib)
    return Measured(statistics.median(times), max(peaks), max(totals))


def bench_stages(pipe: StagedPipeline, params: GenerationParams, repeats: int) -> dict[str, Measured]:
    p = params.validated(pipe.config)
    out = Path(tempfile.mkdtemp(prefix="kino-bench-")) / "out.mp4"
    pair = PromptPair(p.prompt, p.negative_prompt or "")
    [emb] = pipe.text_encoder.encode([pair])
    [lat] = pipe.denoise([("b", p)])
    frames: list[np.ndarray] = []
    audio = pipe.decoder.decode_audio(lat)

    def denoise() -> None:
        s = pipe.denoiser.prepare(DenoiseRequest("b", p, emb))
        while not s.done:
            pipe.denoiser.step([s])

    def decode_video() -> None:
        frames[:] = [frames_to_uint8(c) for c in pipe.decoder.iter_video(lat)]

    results = {
        "text encode": measure(lambda: pipe.text_encoder.encode([pair]), repeats),
        f"denoise ({p.steps} steps)": measure(denoise, repeats),
        "decode video (VAE)": measure(decode_video, repeats),
        "decode audio (VAE+vocoder)": measure(lambda: pipe.decoder.decode_audio(lat), repeats),
        "mux MP4 (H.264+AAC)": measure(lambda: write_mp4(out, frames, width=p.width, height=p.height, fps=p.fps,
                                                         num_frames=p.output_frames, audio=audio), repeats),
        "end to end": measure(lambda: pipe.generate(p, out), repeats),
    }
    return results


def bench_step_batching(pipe: StagedPipeline, sizes: list[int], steps: int) -> dict[int, float]:
    """Requests per second through `Denoiser.step` at each batch size (same shape, own seeds)."""
    prompts = [f"request {i}: a scene with sound" for i in range(max(sizes))]
    embs = pipe.text_encoder.encode([PromptPair(t) for t in prompts])
    rates = {}
    for b in sizes:
        states = [pipe.denoiser.prepare(DenoiseRequest(f"r{i}", GenerationRequest(
            prompt=prompts[i], seed=i, steps=steps + 1, width=256, height=256, seconds=33 / 24,
        ).validated(pipe.config), embs[i])) for i in range(b)]
        pipe.denoiser.step(states)  # warm-up at this batch size
        t = time.perf_counter()
        for _ in range(steps):
            pipe.denoiser.step(states)
        rates[b] = b * steps / (time.perf_counter() - t)
    return rates


def _print_stages(title: str, results: dict[str, Measured]) -> None:
    print(f"\n### {title}\n")
    print("| stage | median time | peak memory rise | process peak RSS |")
    print("| --- | ---: | ---: | ---: |")
    for name, m in results.items():
        print(f"| {name} | {m.seconds * 1000:.0f} ms | {m.peak_mib:.0f} MiB | {m.total_mib:.0f} MiB |")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--repeats", type=int, default=3, help="timed repeats per measurement (default 3)")
    ap.add_argument("--skip-largest", action="store_true", help="skip the 1080p/20 s run on tiny")
    ap.add_argument("--batch-sizes", default="1,2,4,8", help="Denoiser batch sizes (default 1,2,4,8)")
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    prompt = "a robot dancing on the beach, waves and a steel drum"
    pipes = {name: StagedPipeline(preset(name)) for name in ("tiny", "small")}

    print("## Engine benchmark (`python -m loadtests.bench_engines`)")
    print(f"\nCPU threads per engine: {pipes['tiny'].config.num_threads}; cores: {os.cpu_count()}")
    for name, pipe in pipes.items():
        params = GenerationRequest(prompt=prompt, seed=1, width=256, height=256, seconds=33 / 24)
        d = pipe.config.defaults
        _print_stages(f"{name}: 256x256, 33 frames + audio, {d.steps} steps, CFG",
                      bench_stages(pipe, params, args.repeats))

    for name, pipe in pipes.items():
        rates = bench_step_batching(pipe, sizes, steps=4)
        print(f"\n### Denoiser step throughput, {name}, 256x256x33 (CFG: 2 rows per request)\n")
        print("| batch | requests x steps / s | ratio to batch 1 |")
        print("| ---: | ---: | ---: |")
        for b in sizes:
            print(f"| {b} | {rates[b]:.2f} | {rates[b] / rates[sizes[0]]:.2f}x |")

    if not args.skip_largest:
        pipe = pipes["tiny"]
        p = GenerationRequest(prompt=prompt, seed=1, width=1920, height=1088, seconds=20.0, steps=1,
                             guidance_scale=1.0, audio_guidance_scale=1.0)
        out = Path(tempfile.mkdtemp(prefix="kino-bench-")) / "largest.mp4"
        t = time.perf_counter()
        with PeakRSS() as mem:  # one run: it takes minutes
            result = pipe.generate(p, out)
        timings = result.seconds_by_stage
        print("\n### Largest output on tiny: 1920x1088, 20 s at 24 fps (480 frames) + 20 s audio, 1 step, no CFG\n")
        print(f"- {result.media.summary()}")
        print(f"- encode+denoise {timings['encode+denoise']:.1f} s, decode+mux (streamed) "
              f"{timings['decode+mux']:.1f} s, total {time.perf_counter() - t:.1f} s")
        print(f"- peak memory rise {mem.peak_mib:.0f} MiB (process peak RSS {mem.total_mib:.0f} MiB)")

if __name__ == "__main__":
    main()
