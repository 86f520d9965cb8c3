"""`kino engines build`: export the DiT to ONNX and build its TensorRT engines ahead of serving."""

from __future__ import annotations

import argparse
import sys
import time

from rich.console import Console

from kino.cli.options import add_model_options, model_mapping_from_args


def _profile(text: str) -> tuple[int, int, float]:
    try:
        size, seconds = text.rsplit("x", 1)
        w, h = size.split("x")
        return int(w), int(h), float(seconds)
    except ValueError:
        raise argparse.ArgumentTypeError(f"a profile looks like WIDTHxHEIGHTxSECONDS (e.g. 768x512x5), "
                                         f"got {text!r}") from None


def register(sub: argparse._SubParsersAction) -> None:
    engines = sub.add_parser("engines", help="build optimised DiT engines (TensorRT) ahead of serving")
    esub = engines.add_subparsers(dest="engines_command", required=True, metavar="ACTION")
    b = esub.add_parser(
        "build", help="export the DiT to ONNX and build its TensorRT engine into the engine cache",
        description="Export the model's DiT (video + audio streams) to ONNX with dynamic rows and token axes, then "
                    "build a TensorRT engine with one optimisation profile per shape bucket, cached under a key of "
                    "GPU model, TensorRT version, weights hash, dtype and profiles. Resumable: a finished export or "
                    "engine is reused, an interrupted one redone. Serving builds lazily on first use too; building "
                    "here keeps that wait out of the first request. Needs an NVIDIA GPU and `pip install "
                    "'kino[gpu]'`, except --onnx-only.")
    add_model_options(b)
    b.add_argument("--profile", dest="profiles", type=_profile, action="append", metavar="WxHxS",
                   help="a (width, height, seconds) bucket to build a profile for; repeat for more "
                        "(default: the model config's tensorrt.profiles)")
    b.add_argument("--max-rows", type=int, help="largest batch (transformer rows; a CFG request takes 2)")
    b.add_argument("--engine-cache-dir", help="where engines and exports are cached (default: var/kino/engines)")
    b.add_argument("--onnx-only", action="store_true", help="stop after the ONNX export (runs on a CPU)")
    b.set_defaults(func=build)


def build(args: argparse.Namespace) -> int:
    from engines.backends.onnx_export import export_onnx
    from engines.backends.tensorrt import TensorRTSettings, build_engine, onnx_directory
    from engines.config import from_mapping
    from engines.dit_backend import BackendUnavailable
    from engines.model_loader import load_components

    console = Console()
    mapping = model_mapping_from_args(args)
    trt = {k: v for k, v in (("profiles", args.profiles), ("max_rows", args.max_rows),
                             ("engine_cache_dir", args.engine_cache_dir)) if v}
    if trt:
        mapping["tensorrt"] = trt
    config = from_mapping(mapping)
    with console.status(f"loading the DiT of {config.model_id}"):
        transformer = load_components(config, ["transformer"]).transformer
    settings = TensorRTSettings.from_config(config)
    t0 = time.perf_counter()
    try:
        if args.onnx_only:
            with console.status("exporting the DiT to ONNX"):
                path = export_onnx(transformer, onnx_directory(transformer, settings), text_tokens=settings.text_tokens)
            console.print(f"ONNX graph: [bold]{path}[/bold] ({time.perf_counter() - t0:.1f} s)")
            return 0
        with console.status(f"building a TensorRT engine for {len(settings.profiles)} profile(s)"):
            path, built = build_engine(transformer, settings)
    except BackendUnavailable as e:
        print(f"kino: error: cannot build a TensorRT engine here: {e}", file=sys.stderr)
        return 2
    how = f"built in {time.perf_counter() - t0:.0f} s" if built else "already in the cache"
    console.print(f"TensorRT engine: [bold]{path}[/bold] ({how})")
    for p in settings.profiles:
        console.print(f"  profile {p.name}: rows {p.rows}, video tokens {p.video_tokens[0]}, "
                      f"audio tokens {p.audio_tokens[0]}")
    return 0
