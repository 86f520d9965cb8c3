"""Per-request LoRA in one forward: the two delta paths (engines/lora/layers.py) against no adapters.

    python -m loadtests.bench_lora                       # tiny, 8 rows of 8 different rank-8 adapters
    python -m loadtests.bench_lora --rows 16 --rank 16 --preset small

One DiT forward of ``--rows`` rows, timed for: no adapters (the baseline), no adapters through
`BatchedLora.rows` (must cost nothing), then each path with every row on its own adapter, with one adapter
shared by every row, and with one row on an adapter and the others on none; and the same rows split by adapter
(one forward of one row per adapter, what a step batch of one adapter each comes to: vllm-omni's rule). The cases
take turns repeat by repeat, so the noise of a shared machine falls on all alike; each figure is the median over
the repeats, in this process's CPU time (one thread: what a dedicated core would take) and in wall time, with its
ratio to the baseline of the same run. The adapters are random, written in diffusers' layout
(``save_lora_weights``) on the attention and feed-forward Linears of every block, and loaded through `AdapterBank`;
their load time is reported too.
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engines.backends.onnx_export import example_inputs
from engines.config import LoraConfig, preset
from engines.dit_backend import DiTInputs, EagerBackend
from engines.lora import AdapterBank, BatchedLora, RowAdapters
from engines.model_loader import load_components

TARGETS = ("attn1.to_q", "attn1.to_k", "attn1.to_v", "attn1.to_out.0", "attn2.to_q", "attn2.to_k", "attn2.to_v",
           "attn2.to_out.0", "audio_attn1.to_q", "audio_attn1.to_k", "audio_attn1.to_v", "audio_attn1.to_out.0",
           "ff.net.0.proj", "ff.net.2", "audio_ff.net.0.proj", "audio_ff.net.2")


def write_adapters(transformer: torch.nn.Module, directory: Path, count: int, rank: int) -> list[str]:
    """`count` random adapters of `rank` in diffusers' LTX-2 LoRA layout (alpha = 2 x rank)."""
    from diffusers import LTX2Pipeline

    blocks = len(transformer.transformer_blocks)
    targets = [f"transformer_blocks.{b}.{t}" for b in range(blocks) for t in TARGETS]
    names = []
    for i in range(count):
        g = torch.Generator().manual_seed(i)
        layers = {}
        for name in targets:
            linear = transformer.get_submodule(name)
            r = min(rank, linear.in_features, linear.out_features)
            layers[f"{name}.lora_A.weight"] = torch.randn(r, linear.in_features, generator=g) / linear.in_features
            layers[f"{name}.lora_B.weight"] = torch.randn(linear.out_features, r, generator=g) / r
        LTX2Pipeline.save_lora_weights(directory / f"adapter{i}", transformer_lora_layers=layers,
                                       transformer_lora_adapter_metadata={"r": rank, "lora_alpha": 2 * rank,
                                                                          "target_modules": targets,
                                                                          "rank_pattern": _smaller(transformer,
                                                                                                   targets, rank)})
        names.append(f"adapter{i}")
    return names


def _smaller(transformer: torch.nn.Module, targets: list[str], rank: int) -> dict[str, int]:
    """peft's rank_pattern for the Linears narrower than `rank` (the tiny preset's audio stream)."""
    out = {}
    for name in targets:
        linear = transformer.get_submodule(name)
        if min(linear.in_features, linear.out_features) < rank:
            out[f"^{name}"] = min(linear.in_features, linear.out_features)
    return out


def inputs(transformer: torch.nn.Module, rows: int, frames: int, height: int, width: int) -> DiTInputs:
    video, audio, vctx, actx, mask, t, _, vcoords, acoords = example_inputs(
        transformer, rows=rows, frames=frames, height=height, width=width, audio_tokens=9, text_tokens=8)
    return DiTInputs(video=video, audio=audio, video_context=vctx, audio_context=actx, context_mask=mask,
                     timestep=t, video_coords=vcoords, audio_coords=acoords)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--preset", default="tiny", choices=["tiny", "small"], help="whose DiT (random weights)")
    parser.add_argument("--rows", type=int, default=8, help="batch rows, each on its own adapter")
    parser.add_argument("--rank", type=int, default=8, help="adapter rank (capped at a Linear's narrower side)")
    parser.add_argument("--frames", type=int, default=3, help="latent frames of each row")
    parser.add_argument("--height", type=int, default=8, help="latent height")
    parser.add_argument("--width", type=int, default=8, help="latent width")
    parser.add_argument("--repeats", type=int, default=30, help="timed forwards per case (after a warm-up)")
    parser.add_argument("--threads", type=int, default=1, help="torch intra-op threads")
    args = parser.parse_args(argv)

    torch.set_num_threads(args.threads)
    transformer = load_components(preset(args.preset), ["transformer"]).transformer
    batch = inputs(transformer, args.rows, args.frames, args.height, args.width)
    backend = EagerBackend(transformer)
    with tempfile.TemporaryDirectory() as tmp:
        names = write_adapters(transformer, Path(tmp), args.rows, args.rank)
        bank = AdapterBank(transformer, LoraConfig(dir=Path(tmp), max_loaded=args.rows,
                                                   max_per_request=1))
        own: list[RowAdapters] = [bank.uses([(name, 1.0)]) for name in names]
    stats = bank.stats()
    shared: list[RowAdapters] = [own[0]] * args.rows
    lonely: list[RowAdapters] = [own[0]] + [()] * (args.rows - 1)
    layers = len(own[0][0].adapter.layers)
    print(f"{args.preset} DiT, {args.rows} rows of {batch.video.shape[1]} video tokens, adapters of rank "
          f"{args.rank} on {layers} Linears, {args.threads} thread(s)")
    print(f"adapter load: {stats.loads} adapters in {stats.load_seconds * 1000:.1f} ms "
          f"({stats.load_seconds / stats.loads * 1000:.2f} ms each, {own[0][0].adapter.nbytes / 1024:.0f} KiB each)")

    lora = {path: BatchedLora(transformer, path) for path in ("grouped", "gathered")}
    single = inputs(transformer, 1, args.frames, args.height, args.width)

    def forward(context) -> Callable[[], None]:
        def run() -> None:
            with context():
                backend.forward(batch)
        return run

    def split_by_adapter() -> None:
        """What a server whose step batch holds one adapter does with these rows: one forward per adapter."""
        for adapters in own:
            with lora["gathered"].rows([adapters]):
                backend.forward(single)

    cases = {
        "no adapters (plain forward)": forward(contextlib.nullcontext),
        "no adapters through BatchedLora": forward(lambda: lora["grouped"].rows([()] * args.rows)),
        "grouped, own adapter per row": forward(lambda: lora["grouped"].rows(own)),
        "gathered, own adapter per row": forward(lambda: lora["gathered"].rows(own)),
        "grouped, one shared adapter": forward(lambda: lora["grouped"].rows(shared)),
        "gathered, one shared adapter": forward(lambda: lora["gathered"].rows(shared)),
        "grouped, one row with an adapter": forward(lambda: lora["grouped"].rows(lonely)),
        "gathered, one row with an adapter": forward(lambda: lora["gathered"].rows(lonely)),
        f"split by adapter: {args.rows} forwards of 1 row": split_by_adapter,
    }
    cpu: dict[str, list[float]] = {k: [] for k in cases}
    wall: dict[str, list[float]] = {k: [] for k in cases}
    for repeat in range(args.repeats + 1):
        for name, run in cases.items():
            c0, w0 = time.process_time(), time.perf_counter()
            run()
            if repeat:  # the first round warms up (and prepares each path's factors, kept from then on)
                cpu[name].append(time.process_time() - c0)
                wall[name].append(time.perf_counter() - w0)
    base_cpu = statistics.median(cpu["no adapters (plain forward)"])
    base_wall = statistics.median(wall["no adapters (plain forward)"])
    print(f"{'case':36s} {'cpu ms':>8s} {'x base':>7s} {'wall ms':>8s} {'x base':>7s}")
    for name in cases:
        c, w = statistics.median(cpu[name]), statistics.median(wall[name])
        print(f"{name:36s} {c * 1000:8.2f} {c / base_cpu:7.2f} {w * 1000:8.2f} {w / base_wall:7.2f}")
    mixed = statistics.median(cpu["gathered, own adapter per row"])
    split = statistics.median(cpu[f"split by adapter: {args.rows} forwards of 1 row"])
    print(f"step throughput, {args.rows} rows on {args.rows} different adapters: one mixed forward "
          f"{args.rows / mixed:.1f} rows/s against split by adapter {args.rows / split:.1f} rows/s "
          f"({split / mixed:.2f}x)")


if __name__ == "__main__":
    main()
