"""Command-line options shared by the commands that describe a generation or a model."""

from __future__ import annotations

import argparse
from fractions import Fraction
from typing import TYPE_CHECKING

from engines.config import DIT_BACKENDS, DTYPES, PRESETS, STEP_CACHE_MODES
from engines.params import parse_fps, parse_size

if TYPE_CHECKING:
    from serving.videos import CreateVideo


def size_option(text: str) -> str:
    """A --size value, checked to be WIDTHxHEIGHT (the server checks the range)."""
    try:
        parse_size(text)
        return text.lower()
    except ValueError:
        raise argparse.ArgumentTypeError(f"size must look like WIDTHxHEIGHT (e.g. 256x256), got {text!r}") from None


def _fps(text: str) -> Fraction:
    try:
        return parse_fps(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"fps must be a number or a fraction like 30000/1001, got {text!r}") from None


def lora_option(text: str) -> tuple[str, float]:
    """A --lora value: NAME or NAME:SCALE (scale 1.0 when omitted; the server checks the name and the range)."""
    name, sep, scale = text.rpartition(":") if ":" in text else (text, "", "")
    if not name:
        raise argparse.ArgumentTypeError(f"lora must look like NAME or NAME:SCALE (e.g. watercolor:0.8), got {text!r}")
    try:
        return name, float(scale) if sep else 1.0
    except ValueError:
        raise argparse.ArgumentTypeError(f"lora scale must be a number, e.g. {name}:0.8, got {text!r}") from None


def add_lora_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("--lora", type=lora_option, action="append", default=[], metavar="NAME[:SCALE]",
                   help="apply the LoRA adapter NAME of the model's adapter directory at SCALE (default 1.0; "
                        "model.lora.scale_range bounds it); repeat to combine adapters (model.lora.max_per_request)")


def add_generation_options(p: argparse.ArgumentParser) -> None:
    p.add_argument("prompt", help="what the video shows and sounds like")
    g = p.add_argument_group("generation (unset options take the model's defaults)")
    g.add_argument("--seconds", type=float, help="duration in seconds (the model allows 0.5 to 20)")
    g.add_argument("--size", type=size_option, metavar="WxH",
                   help="frame size, sides multiples of 32, e.g. 256x256 (at most 1080p)")
    g.add_argument("--fps", type=_fps, help="frame rate: 24000/1001, 24, 25, 30000/1001 or 30")
    g.add_argument("--seed", type=int, help="random seed; the same seed and options give the same video (up to "
                   "float rounding, e.g. when batched with other requests)")
    g.add_argument("--steps", type=int, help="denoising steps (1-100)")
    g.add_argument("--negative-prompt", help="what to steer away from")
    g.add_argument("--guidance-scale", type=float, help="video classifier-free guidance (1 = off, up to 20)")
    g.add_argument("--audio-guidance-scale", type=float, help="audio classifier-free guidance (1 = off, up to 20)")
    g.add_argument("--cache", choices=STEP_CACHE_MODES,
                   help="step caching: off (every step computes every block: the exact path), balanced (reuses a "
                        "request's DiT work where it barely changes, ~1.6x faster denoising at >= 40 dB PSNR "
                        "measured), fast (more); default: the server's (model.step_cache.default)")
    g.add_argument("--two-stage", action=argparse.BooleanOptionalAction, default=None,
                   help="LTX-2's recipe for high resolution: generate at half width and height, upsample the "
                        "latents 2x, refine at full size in a few steps (sides multiples of 64; not with an "
                        "image); default: the server's rule for the size (model.two_stage.min_pixels)")


def request_from_args(args: argparse.Namespace) -> CreateVideo:
    """The create request these options describe, as the front door receives it from any protocol."""
    from serving.videos import CreateVideo

    return CreateVideo(
        prompt=args.prompt, negative_prompt=args.negative_prompt, size=args.size, seconds=args.seconds,
        fps=str(args.fps) if args.fps is not None else None, seed=args.seed, steps=args.steps,
        guidance_scale=args.guidance_scale, audio_guidance_scale=args.audio_guidance_scale, cache=args.cache,
        two_stage=args.two_stage, loras=tuple(getattr(args, "lora", None) or ()))


def add_model_options(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--preset", default="tiny", choices=[*PRESETS, "checkpoint"],
                   help="tiny: embedded random weights (output is noise, runs anywhere); small: larger random "
                        "weights for benchmarks; demo: weights trained here on a synthetic world of coloured "
                        "balls and squares (64x64, 17 frames); checkpoint: a local LTX-2 diffusers directory "
                        "(default: tiny; demo for kino demo)")
    g.add_argument("--checkpoint-dir", metavar="DIR", help="the checkpoint directory, with --preset checkpoint")
    g.add_argument("--lora-dir", metavar="DIR",
                   help="where the LoRA adapters requests may name live: DIR/NAME.safetensors or "
                        "DIR/NAME/pytorch_lora_weights.safetensors (model.lora.dir; default: the config's, none; "
                        "the demo preset's: engines/weights/demo_loras)")
    g.add_argument("--device", help="cpu or cuda[:N] (default: the preset's)")
    g.add_argument("--dtype", choices=DTYPES, help="weights dtype (default: the preset's)")
    g.add_argument("--dit-backend", choices=DIT_BACKENDS,
                   help="how the DiT runs: auto (GPUs: TensorRT, then torch.compile; CPUs: eager), or one of them "
                        "(falling back down that chain with a log line saying why)")
    g.add_argument("--cfg-parallel", type=int, choices=(1, 2), metavar="{1,2}",
                   help="2: the unconditional and conditional rows of every DiT step on two groups of ranks "
                        "(model.parallel.cfg; default: the config's, 1)")
    g.add_argument("--ulysses", type=int, metavar="N",
                   help="split each video's tokens over N ranks, 1 to 8, dividing the attention head counts "
                        "(model.parallel.ulysses; default: the config's, 1); the engine spans cfg x ulysses ranks")


def model_mapping_from_args(args: argparse.Namespace) -> dict:
    """The ``model:`` mapping these options describe (see engines.config.from_mapping)."""
    m: dict = {"preset": args.preset}
    for key in ("checkpoint_dir", "device", "dtype", "dit_backend"):
        if getattr(args, key, None) is not None:
            m[key] = getattr(args, key)
    if getattr(args, "lora_dir", None) is not None:
        m["lora"] = {"dir": args.lora_dir}
    parallel = {k: v for k, v in (("cfg", getattr(args, "cfg_parallel", None)),
                                  ("ulysses", getattr(args, "ulysses", None))) if v is not None}
    if parallel:
        m["parallel"] = parallel
    return m
