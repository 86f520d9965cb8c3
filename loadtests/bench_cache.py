"""Step cache: what each policy saves and what it costs, against ``off`` with the same seeds.

    python -m loadtests.bench_cache                                  # small, 16 prompts x 2 seeds
    python -m loadtests.bench_cache --policies balanced:0.2,balanced:0.3,fast:0.5   # threshold sweep
    python -m loadtests.bench_cache --preset tiny --prompts 2 --seeds 1             # a smoke run

Requests run the way the DiT deployment runs them: groups of ``--batch`` requests share every
forward (step-level batching), each joining ``--stagger`` steps after the previous one, so one
forward mixes requests at different steps. Every policy denoises the same groups with the same
embeddings and seeds; the policies take turns group by group (the order rotates) so the noise of a
shared machine falls on all of them alike. Quality is measured on the decoded outputs against
``off``: PSNR and SSIM (luma) of the frames, SNR of the audio waveform and of the audio latents
(loadtests/quality.py). A last line gives the same figures between two different ``off`` requests,
to read them by. Throughput is ``off``'s denoise time over the policy's, for the same work, in
this process's CPU time (one thread: what a dedicated core would take; other processes on a
shared machine do not count) and in wall time.
"""

from __future__ import annotations

import argparse
import dataclasses
import math
import statistics
import time
from dataclasses import dataclass, field

import torch

from engines.config import ModelConfig, preset
from engines.denoiser import DenoisedLatents, Denoiser, DenoiseRequest
from engines.params import GenerationParams, GenerationRequest
from engines.stage_io import PromptEmbedding, PromptPair
from engines.staged_pipeline import StagedPipeline
from loadtests.quality import psnr, snr, ssim_luma

PROMPTS = [
    "a lighthouse at dusk, waves breaking on the rocks", "a red fox trotting through fresh snow",
    "rain on a neon-lit street at night", "a choir singing in a stone cathedral",
    "a hummingbird hovering over a purple flower", "a steam train crossing a viaduct",
    "children flying kites on a windy beach", "a blacksmith hammering glowing steel",
    "a jazz trio playing in a smoky bar", "a waterfall in a mossy forest",
    "a hot air balloon drifting over fields", "a cat knocking a glass off a table",
    "fireworks over a harbour", "a chef flipping vegetables in a wok",
    "a skateboarder in an empty pool", "thunderstorm rolling over a wheat field",
    "a violinist on a rooftop at sunrise", "a market street in the morning rush",
]


@dataclass
class Policy:
    label: str
    denoiser: Denoiser
    mode: str
    threshold: float | None
    max_skips: int
    seconds: float = 0.0  # CPU
    wall: float = 0.0
    computed: int = 0
    skipped: int = 0
    results: dict[str, DenoisedLatents] = field(default_factory=dict)


def make_policy(spec: str, config: ModelConfig, pipe: StagedPipeline) -> Policy:
    """``off``, ``balanced``, ``fast`` (the config's thresholds) or ``MODE:THRESHOLD[:MAX_SKIPS]`` (a
    Denoiser of its own over the same components, with that threshold and consecutive-skip cap)."""
    mode, *override = spec.split(":")
    sc = config.step_cache
    if override:
        t = float(override[0])
        sc = dataclasses.replace(sc, balanced_threshold=t, fast_threshold=max(t, sc.fast_threshold)) \
            if mode == "balanced" else dataclasses.replace(sc, fast_threshold=t)
        if len(override) > 1:
            sc = dataclasses.replace(sc, max_consecutive_skips=int(override[1]))
    denoiser = Denoiser(config.replace(step_cache=sc), pipe.components, pipe.denoiser.geometry,
                        backend=pipe.denoiser.backend) if override else pipe.denoiser
    used = {"off": None, "balanced": sc.balanced_threshold, "fast": sc.fast_threshold}[mode]
    return Policy(label=spec, denoiser=denoiser, mode=mode, threshold=used, max_skips=sc.max_consecutive_skips)


def run_group(policy: Policy, group: list[tuple[str, GenerationParams, PromptEmbedding]], stagger: int) -> None:
    """Denoise one group, request i joining after i * stagger steps; adds its time and counts."""
    d = policy.denoiser
    states = [d.prepare(DenoiseRequest(rid, dataclasses.replace(p, cache=policy.mode), emb))
              for rid, p, emb in group]
    cpu, wall, step = time.process_time(), time.perf_counter(), 0
    while running := [s for i, s in enumerate(states) if i * stagger <= step and not s.done]:
        d.step(running)
        step += 1
    policy.seconds += time.process_time() - cpu
    policy.wall += time.perf_counter() - wall
    for s in states:
        policy.computed += s.steps_computed
        policy.skipped += s.steps_skipped
        policy.results[s.request_id] = d.result(s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="small")
    ap.add_argument("--prompts", type=int, default=16, help=f"at most {len(PROMPTS)}")
    ap.add_argument("--seeds", type=int, default=2)
    ap.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    ap.add_argument("--batch", type=int, default=4, help="requests sharing each forward")
    ap.add_argument("--stagger", type=int, default=1, help="steps between the arrivals within a group")
    ap.add_argument("--policies", default="balanced,fast", help="off is always measured: it is the baseline")
    ap.add_argument("--dit-backend", default="eager", help="the DiT backend every policy runs on (eager, int8)")
    args = ap.parse_args()
    torch.set_num_threads(1)

    config = preset(args.preset, dit_backend=args.dit_backend)
    pipe = StagedPipeline(config)
    policies = [make_policy(s, config, pipe) for s in ["off", *args.policies.split(",")]]
    requests = [(f"p{i}-s{seed}", GenerationRequest(prompt=PROMPTS[i], seed=seed, steps=args.steps).validated(config))
                for i in range(args.prompts) for seed in range(args.seeds)]
    embeddings = pipe.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt) for _, p in requests])
    work = [(rid, p, emb) for (rid, p), emb in zip(requests, embeddings, strict=True)]
    groups = [work[i:i + args.batch] for i in range(0, len(work), args.batch)]

    for policy in policies:  # warm-up (allocator, first-call overheads), not timed
        run_group(policy, groups[0][:1], args.stagger)
        policy.seconds = policy.wall = policy.computed = policy.skipped = 0
    for g, group in enumerate(groups):
        for k in range(len(policies)):
            run_group(policies[(g + k) % len(policies)], group, args.stagger)

    off = policies[0]
    frames = {rid: pipe.decoder.decode_video(lat) for rid, lat in off.results.items()}
    audio = {rid: pipe.decoder.decode_audio(lat).samples for rid, lat in off.results.items()}
    p0 = requests[0][1]
    print(f"# Step cache: {args.preset} on DiT backend {pipe.denoiser.backend.name}, {len(requests)} requests "
          f"({args.prompts} prompts x {args.seeds} seeds), "
          f"{p0.width}x{p0.height}, {p0.num_frames} frames, {p0.steps} steps, CFG, groups of {args.batch} "
          f"(stagger {args.stagger}); always compute first {config.step_cache.first_steps} / last "
          f"{config.step_cache.last_steps}\n")
    print("| policy | threshold | max skips in a row | request-steps skipped | denoise CPU s | throughput vs off "
          "(CPU / wall) | PSNR dB min / mean | SSIM min / mean | audio SNR dB min / mean | audio latent SNR dB "
          "min / mean |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for policy in policies:
        ps, ss, sn, sl = [], [], [], []
        for rid, lat in policy.results.items() if policy is not off else ():
            video = pipe.decoder.decode_video(lat)
            ps.append(psnr(video, frames[rid]))
            ss.append(ssim_luma(video, frames[rid]))
            sn.append(snr(pipe.decoder.decode_audio(lat).samples, audio[rid]))
            sl.append(snr(lat.audio, off.results[rid].audio))
        total = policy.computed + policy.skipped
        print(f"| {policy.label} | {'-' if policy.threshold is None else f'{policy.threshold:g}'} | "
              f"{'-' if policy is off else policy.max_skips} | "
              f"{policy.skipped}/{total} ({policy.skipped / total:.0%}) | {policy.seconds:.2f} | "
              f"{off.seconds / policy.seconds:.2f}x / {off.wall / policy.wall:.2f}x | {_pair(ps, '.1f')} | "
              f"{_pair(ss, '.4f')} | {_pair(sn, '.1f')} | {_pair(sl, '.1f')} |")
    if len(requests) > 1:  # how far apart two different videos are, in the same measures
        (a, la), (b, lb) = list(off.results.items())[:2]
        print(f"| (two different off requests: {a} vs {b}) | | | | | | {psnr(frames[a], frames[b]):.1f} | "
              f"{ssim_luma(frames[a], frames[b]):.4f} | {snr(audio[a], audio[b]):.1f} | "
              f"{snr(la.audio, lb.audio):.1f} |")


def _pair(values: list[float], fmt: str) -> str:
    if not values:
        return "exact"
    finite = [v for v in values if math.isfinite(v)]
    mean = statistics.fmean(finite) if len(finite) == len(values) else math.inf
    return f"{min(values):{fmt}} / {mean:{fmt}}"


if __name__ == "__main__":
    main()
