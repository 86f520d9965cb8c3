"""A lower-precision DiT backend against the full-precision one: step time and what it costs in quality.

    python -m loadtests.bench_precision                     # small on CPU: int8 against float32 eager
    python -m loadtests.bench_precision --device cuda --dtype bfloat16 --backends fp8,compile
                                                            # a GPU: FP8 (and bf16 compile) against bf16 eager

Each backend gets a transformer of its own (the presets' weights are seeded, so they are the same
weights): the low-precision backends quantize theirs in place. Step time: one forward of the
first requests' rows (``--rows``: 2 = one CFG request), the median of rounds in which the
backends take turns; this process's CPU time on a CPU (other processes on a shared machine do
not count), CUDA-synchronised wall time on a GPU. Denoise: all ``--requests`` requests batched
step by step, start to end. Quality: the decoded frames (PSNR, SSIM of luma) and the audio
latents (SNR) of every request against the baseline's, same seeds (loadtests/quality.py).
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import time
from collections.abc import Callable

import torch

from engines.config import preset
from engines.denoiser import Denoiser, DenoiseRequest, DenoiseState
from engines.model_loader import load_components
from engines.params import GenerationRequest
from engines.stage_io import DenoisedLatents, PromptPair
from engines.staged_pipeline import StagedPipeline
from loadtests.bench_cache import PROMPTS
from loadtests.quality import psnr, snr, ssim_luma


def clock(device: str) -> Callable[[], float]:
    if device.startswith("cuda"):
        def synced() -> float:
            torch.cuda.synchronize()
            return time.perf_counter()
        return synced
    return time.process_time


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16", "float16"])
    ap.add_argument("--backends", default="int8", help="compared with eager at --dtype")
    ap.add_argument("--requests", type=int, default=4)
    ap.add_argument("--rows", default="2,8", help="rows of the timed forward (a CFG request takes 2)")
    ap.add_argument("--rounds", type=int, default=7)
    args = ap.parse_args()
    torch.set_num_threads(1)

    config = preset(args.preset, device=args.device, dtype=args.dtype, dit_backend="eager")
    pipe = StagedPipeline(config)
    now = clock(args.device)
    denoisers = {"eager": pipe.denoiser}
    for name in args.backends.split(","):
        own = dataclasses.replace(pipe.components, transformer=load_components(config, ["transformer"]).transformer)
        denoisers[name] = Denoiser(config.replace(dit_backend=name), own, pipe.denoiser.geometry)
        if denoisers[name].backend.name != name:
            raise SystemExit(f"{name} is unavailable here (it fell back to {denoisers[name].backend.name})")
    requests = [(f"r{i}", GenerationRequest(prompt=PROMPTS[i % len(PROMPTS)], seed=i).validated(config))
                for i in range(args.requests)]
    embeddings = pipe.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for _, p in requests])

    def states(d: Denoiser) -> list[DenoiseState]:
        return [d.prepare(DenoiseRequest(rid, p, e)) for (rid, p), e in zip(requests, embeddings, strict=True)]

    rows = [int(r) for r in args.rows.split(",")]
    if max(rows) > 2 * args.requests:
        raise SystemExit(f"--rows {max(rows)} needs at least {(max(rows) + 1) // 2} requests (--requests)")
    step_times: dict[tuple[str, int], list[float]] = {(n, r): [] for n in denoisers for r in rows}
    denoise_times: dict[str, list[float]] = {n: [] for n in denoisers}
    results: dict[str, list[DenoisedLatents]] = {}
    for k in range(args.rounds):
        order = list(denoisers)[k % len(denoisers):] + list(denoisers)[:k % len(denoisers)]
        for name in order:
            d = denoisers[name]
            for r in rows:
                batch = states(d)[: max(1, r // 2)]
                d.step(batch)  # warm
                started = now()
                d.step(batch)
                step_times[(name, r)].append(now() - started)
        if k < 2:  # whole denoises are long: two rounds
            for name in order:
                d, batch = denoisers[name], states(denoisers[name])
                started = now()
                while running := [s for s in batch if not s.done]:
                    d.step(running)
                denoise_times[name].append(now() - started)
                results[name] = [d.result(s) for s in batch]

    frames = [pipe.decoder.decode_video(lat) for lat in results["eager"]]
    unit = "CPU" if args.device == "cpu" else "GPU"
    p0 = requests[0][1]
    print(f"# DiT precision: {args.preset}, {args.dtype} eager as the baseline, {args.device}, {p0.width}x{p0.height}, "
          f"{p0.num_frames} frames, {p0.steps} steps, {args.requests} requests\n")
    print("| backend | " + " | ".join(f"step {unit} ms ({r} rows) | vs eager" for r in rows)
          + f" | denoise {unit} s | vs eager | PSNR dB min / mean | SSIM min / mean | audio latent SNR dB min |")
    print("| --- |" + " ---: | ---: |" * len(rows) + " ---: | ---: | ---: | ---: | ---: |")
    base_denoise = min(denoise_times["eager"])
    for name in denoisers:
        cells = []
        for r in rows:
            t = statistics.median(step_times[(name, r)])
            cells += [f"{t * 1e3:.1f}", f"{statistics.median(step_times[('eager', r)]) / t:.2f}x"]
        dt = min(denoise_times[name])
        ps = [psnr(pipe.decoder.decode_video(lat), ref) for lat, ref in zip(results[name], frames, strict=True)]
        ss = [ssim_luma(pipe.decoder.decode_video(lat), ref) for lat, ref in zip(results[name], frames, strict=True)]
        sn = [snr(lat.audio, ref.audio) for lat, ref in zip(results[name], results["eager"], strict=True)]
        quality = ("exact | exact | exact" if name == "eager" else
                   f"{min(ps):.1f} / {statistics.fmean(ps):.1f} | {min(ss):.4f} / {statistics.fmean(ss):.4f} | "
                   f"{min(sn):.1f}")
        print(f"| {name} | " + " | ".join(cells) + f" | {dt:.2f} | {base_denoise / dt:.2f}x | {quality} |")


if __name__ == "__main__":
    main()
