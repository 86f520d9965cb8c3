"""DiT step time on a GPU: eager vs torch.compile vs TensorRT vs FP8 at real LTX-2 shapes, with MFU.

    python -m loadtests.bench_gpu                  # the real LTX-2 DiT (48 layers, random bf16 weights),
                                                   # 480p and 720p, 5 s, batch 1/2/4/8, all four backends
    python -m loadtests.bench_gpu --layers 16      # fewer layers when the full model and its engine do not fit
    python -m loadtests.bench_gpu --model tiny --device cpu --dtype float32 --backends eager \\
        --sizes 64x64 --seconds 1 --batches 1,2    # a smoke run of this script anywhere

One step is one DiT forward over B requests with classifier-free guidance (2B rows), as the
Denoiser runs it. FLOPs per step are counted by torch's FlopCounterMode on the eager forward
(matmuls and attention: what the tensor cores do); MFU = FLOPs / step time / the GPU's dense
bf16 peak (table below; --peak-tflops overrides; FP8's MFU is still against the bf16 peak, so it
can pass 100% of what bf16 could do). Times are medians of CUDA-event-timed repeats after warm-up.
Ratios are against eager (and compile) measured in the same run. Weights are random: the same
shapes and arithmetic as the checkpoint, so the same speed. Backends are built and measured one
after the other, fp8 last: it quantizes the transformer's block linears in place.
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import torch

from engines.dit_backend import DiTBackend, DiTInputs, EagerBackend

# Dense bf16 tensor-core peaks (FLOP/s), by a substring of torch.cuda.get_device_name().
PEAK_BF16 = {"H200": 989e12, "H100": 989e12, "A100": 312e12, "L40S": 362e12, "L4": 121e12, "A10": 125e12}
FPS, AUDIO_LATENTS_PER_SECOND = 24, 25  # LTX-2: 16 kHz mel, hop 160, 4x audio compression


def build_transformer(model: str, layers: int | None, device: str, dtype: torch.dtype) -> torch.nn.Module:
    from diffusers import LTX2VideoTransformer3DModel

    if model == "tiny":
        from engines.config import preset
        from engines.model_loader import load_components

        return load_components(preset("tiny"), ["transformer"]).transformer.to(device, dtype).eval()
    config = {"num_layers": layers} if layers else {}  # the class defaults are LTX-2's DiT
    default = torch.get_default_dtype()
    torch.set_default_dtype(dtype)  # build in the target dtype directly: 19B fp32 weights would not fit
    try:
        with torch.device(device):
            module = LTX2VideoTransformer3DModel(**config)
    finally:
        torch.set_default_dtype(default)
    return module.eval().requires_grad_(False)


def step_inputs(transformer: torch.nn.Module, rows: int, width: int, height: int, seconds: float,
                text_tokens: int) -> DiTInputs:
    from engines.backends.onnx_export import example_inputs

    frames = (round(seconds * FPS) - 1) // 8 + 1  # latent frames of an 8k+1-frame clip
    compression = transformer.config.vae_scale_factors[1] * transformer.config.patch_size
    video, audio, vctx, actx, mask, t, _, vcoords, acoords = example_inputs(
        transformer, rows=rows, frames=frames, height=height // compression, width=width // compression,
        audio_tokens=max(1, round(seconds * AUDIO_LATENTS_PER_SECOND)), text_tokens=text_tokens)
    return DiTInputs(video=video, audio=audio, video_context=vctx, audio_context=actx, context_mask=mask,
                     timestep=t, video_coords=vcoords, audio_coords=acoords)


def make_backend(name: str, transformer: torch.nn.Module, sizes: list[tuple[int, int]], seconds: float,
                 max_rows: int, text_tokens: int, cache_dir: Path) -> DiTBackend:
    if name == "eager":
        return EagerBackend(transformer)
    if name == "compile":
        from engines.backends.compiled import CompiledBackend

        return CompiledBackend(transformer)
    if name == "fp8":
        from engines.backends.fp8 import FP8Backend

        return FP8Backend(transformer)
    from engines.backends.engine_cache import Profile
    from engines.backends.tensorrt import TensorRTBackend, TensorRTSettings

    profiles = []
    for w, h in sizes:
        probe = step_inputs(transformer, 1, w, h, seconds, text_tokens)
        vt, at = probe.video.shape[1], probe.audio.shape[1]
        profiles.append(Profile(name=f"{w}x{h}x{seconds:g}s", rows=(1, max_rows // 2, max_rows),
                                video_tokens=(vt,) * 3, audio_tokens=(at,) * 3))
    return TensorRTBackend(transformer, TensorRTSettings(cache_dir=cache_dir, profiles=tuple(profiles),
                                                         text_tokens=text_tokens))


def time_step(backend: DiTBackend, inputs: DiTInputs, warmup: int, repeats: int) -> float:
    """Median seconds per forward."""
    cuda = inputs.video.is_cuda
    for _ in range(warmup):
        backend.forward(inputs)
    times = []
    for _ in range(repeats):
        if cuda:
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            backend.forward(inputs)
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        else:
            t0 = time.perf_counter()
            backend.forward(inputs)
            times.append(time.perf_counter() - t0)
    return statistics.median(times)


def step_flops(transformer: torch.nn.Module, inputs: DiTInputs) -> float:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        EagerBackend(transformer).forward(inputs)
    return float(counter.get_total_flops())


def peak_flops(device: str, override: float | None) -> float | None:
    if override:
        return override * 1e12
    if not device.startswith("cuda"):
        return None
    name = torch.cuda.get_device_name(torch.device(device))
    return next((v for k, v in PEAK_BF16.items() if k in name), None)


def _guard(fn: Callable[[], float]) -> float | str:
    try:
        return fn()
    except torch.OutOfMemoryError:
        torch.cuda.empty_cache()
        return "OOM"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", choices=["ltx2", "tiny"], default="ltx2",
                    help="ltx2: the real DiT's size with random weights; tiny: the embedded preset's")
    ap.add_argument("--layers", type=int, help="transformer blocks (default: the model's, 48 for LTX-2)")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--dtype", default="bfloat16", choices=["bfloat16", "float16", "float32"])
    ap.add_argument("--backends", default="eager,compile,tensorrt,fp8")
    ap.add_argument("--sizes", default="832x480,1280x704", help="WIDTHxHEIGHT list (480p and 720p by default)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--batches", default="1,2,4,8", help="requests per step (2 rows each: CFG)")
    ap.add_argument("--text-tokens", type=int, default=1024, help="prompt tokens (LTX2Pipeline pads to 1024)")
    ap.add_argument("--warmup", type=int, default=3)
    ap.add_argument("--repeats", type=int, default=10)
    ap.add_argument("--peak-tflops", type=float, help="the device's dense peak, when not in the built-in table")
    ap.add_argument("--engine-cache-dir", type=Path, default=Path(tempfile.gettempdir()) / "kino-bench-engines")
    args = ap.parse_args()

    dtype = getattr(torch, args.dtype)
    sizes = [tuple(int(x) for x in s.split("x")) for s in args.sizes.split(",")]
    batches = [int(b) for b in args.batches.split(",")]
    backends = sorted(args.backends.split(","), key=lambda name: name == "fp8")  # fp8 quantizes in place: last
    transformer = build_transformer(args.model, args.layers, args.device, dtype)
    params = sum(p.numel() for p in transformer.parameters())
    peak = peak_flops(args.device, args.peak_tflops)
    device_name = torch.cuda.get_device_name() if args.device.startswith("cuda") else "CPU"
    print(f"# DiT step benchmark: {args.model} ({params / 1e9:.2f} B parameters, "
          f"{transformer.config.num_layers} layers), {args.dtype}, {device_name}, {args.seconds:g} s clips\n")
    shapes = [(w, h, b) for w, h in sizes for b in batches]

    def inputs_of(shape: tuple[int, int, int]) -> DiTInputs:
        w, h, b = shape
        return step_inputs(transformer, 2 * b, w, h, args.seconds, args.text_tokens)

    flops = {shape: step_flops(transformer, inputs_of(shape)) for shape in shapes}  # before fp8 changes it
    times: dict[tuple[int, int, int], dict[str, float | str]] = {shape: {} for shape in shapes}
    for name in backends:
        backend = make_backend(name, transformer, sizes, args.seconds, 2 * max(batches), args.text_tokens,
                               args.engine_cache_dir)
        for shape in shapes:
            times[shape][name] = _guard(lambda be=backend, x=inputs_of(shape): time_step(be, x, args.warmup,
                                                                                        args.repeats))
        del backend
    print("| size | batch | backend | step ms | vs eager | vs compile | TFLOP/step | TFLOP/s | MFU |")
    print("| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for (w, h, b) in shapes:
        for name, t in times[(w, h, b)].items():
            print(_row(f"{w}x{h}", b, name, t, times[(w, h, b)], flops[(w, h, b)], peak))


def _row(size: str, batch: int, name: str, t: float | str, times: dict[str, float | str], flops: float,
         peak: float | None) -> str:
    if isinstance(t, str):
        return f"| {size} | {batch} | {name} | {t} | | | | | |"

    def ratio(base: str) -> str:
        return f"{times[base] / t:.2f}x" if isinstance(times.get(base), float) else "-"

    mfu = f"{flops / t / peak:.0%}" if peak else "-"
    return (f"| {size} | {batch} | {name} | {t * 1e3:.1f} | {ratio('eager')} | {ratio('compile')} | "
            f"{flops / 1e12:.2f} | {flops / t / 1e12:.1f} | {mfu} |")

if __name__ == "__main__":
    main()
