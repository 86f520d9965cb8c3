"""Where a batched denoising step spends its time, against the ideal.

    python -m loadtests.profile_step            # tiny and small, batch 1/2/4/8, 1 and 2 threads

For each batch size it splits one `Denoiser.step` into batch assembly (concatenating latents,
contexts, RoPE coordinates), the transformer forward, and the per-request guidance and Euler
update, and reports request-steps per second against batch 1 (the ideal is linear in the batch
on hardware the forward does not saturate). Run it on an otherwise idle machine.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from engines.config import preset
from engines.denoiser import DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import PromptPair
from engines.staged_pipeline import StagedPipeline


def profile(name: str, sizes: list[int], threads: int, repeats: int) -> list[dict]:
    torch.set_num_threads(threads)
    pipe = StagedPipeline(preset(name, num_threads=threads))
    d = pipe.denoiser
    rows = []
    base = None
    for b in sizes:
        params = [GenerationRequest(prompt=f"request {i}", seed=i, steps=repeats + 2, width=256, height=256,
                                   seconds=33 / 24).validated(pipe.config) for i in range(b)]
        embs = pipe.text_encoder.encode([PromptPair(p.prompt) for p in params])
        states = [d.prepare(DenoiseRequest(f"r{i}", p, e)) for i, (p, e) in enumerate(zip(params, embs, strict=True))]
        d.step(states)  # warm-up
        parts = {"assemble": [], "forward": [], "update": []}
        for _ in range(repeats):
            t0 = time.perf_counter()
            inputs = d._batch(states)
            t1 = time.perf_counter()
            video_v, audio_v = d.backend.forward(inputs)
            t2 = time.perf_counter()
            row = 0
            for s in states:
                d._update(s, video_v[row:row + s.rows], audio_v[row:row + s.rows])
                row += s.rows
            t3 = time.perf_counter()
            parts["assemble"].append(t1 - t0)
            parts["forward"].append(t2 - t1)
            parts["update"].append(t3 - t2)
        med = {k: statistics.median(v) for k, v in parts.items()}
        total = sum(med.values())
        rate = b / total
        base = base or rate
        rows.append({"preset": name, "threads": threads, "batch": b, **{k: v * 1000 for k, v in med.items()},
                     "rate": rate, "ratio": rate / base})
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--presets", default="tiny,small")
    ap.add_argument("--batch-sizes", default="1,2,4,8")
    ap.add_argument("--threads", default="1,2")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sizes = [int(x) for x in args.batch_sizes.split(",")]
    print("| preset | threads | batch | assemble ms | forward ms | guidance+update ms | request-steps/s | "
          "vs batch 1 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in args.presets.split(","):
        for threads in (int(x) for x in args.threads.split(",")):
            for r in profile(name, sizes, threads, args.repeats):
                print(f"| {r['preset']} | {r['threads']} | {r['batch']} | {r['assemble']:.2f} | {r['forward']:.1f} | "
                      f"{r['update']:.2f} | {r['rate']:.2f} | {r['ratio']:.2f}x |", flush=True)


if __name__ == "__main__":
    main()
