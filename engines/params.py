"""What one generation asks for, and the one place that checks it against the model's limits."""

from __future__ import annotations

import dataclasses
import math
import secrets
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

from engines.adapter_files import adapter_file, available_adapters
from engines.config import STEP_CACHE_MODES, LoraConfig, ModelConfig, StepCacheMode
from engines.errors import InvalidParameter

# LTX-2's video VAE compresses time 8x around a causal first frame: a clip has 8k+1 frames. Jobs stored before
# `num_frames` was recorded were generated this way.
LTX2_TEMPORAL_COMPRESSION = 8


# A delivered size is centre-cropped from the generated one when that loses at most this share of each side;
# beyond it the frames are scaled to cover it first.
MAX_CROP_SHARE = 0.125


def crops(generated: tuple[int, int], delivered: tuple[int, int]) -> bool:
    """Whether `delivered` is a centre crop of `generated` (else: scaled to cover, then cropped)."""
    return all(0 <= g - d <= g * MAX_CROP_SHARE for g, d in zip(generated, delivered, strict=True))


def frames_for(seconds: float, fps: Fraction) -> int:
    """Frames delivered to the user for a duration (at least one)."""
    return max(1, round(seconds * fps))


def model_frames_for(output_frames: int, temporal_compression: int = LTX2_TEMPORAL_COMPRESSION) -> int:
    """Smallest tk+1 frame count that covers `output_frames` (the model generates these; t: the video VAE's
    temporal compression)."""
    k = math.ceil((output_frames - 1) / temporal_compression)
    return temporal_compression * k + 1


def parse_size(text: str) -> tuple[int, int]:
    """'1280x720' -> (1280, 720); ValueError if it is not WIDTHxHEIGHT."""
    w, h = text.lower().split("x")
    return int(w), int(h)


def parse_fps(value: float | str | Fraction) -> Fraction:
    """24, 29.97, '30000/1001' -> an exact Fraction (29.97 means NTSC 30000/1001)."""
    if isinstance(value, Fraction):
        return value
    frac = Fraction(str(value)) if isinstance(value, str) else Fraction(value).limit_denominator(1001)
    for ntsc in (24, 30, 60):
        exact = Fraction(ntsc * 1000, 1001)
        if abs(frac - exact) < Fraction(1, 100):
            return exact
    return frac


@dataclass(frozen=True)
class GenerationRequest:
    """One text(+audio)-to-video request as asked, from any door. `None` means "the model's default".

    `validated(config)` fills the defaults and checks every field in one pass, returning `GenerationParams`:
    the only type the engines, the job store and the stages take.
    """

    prompt: str
    negative_prompt: str | None = None
    width: int | None = None
    height: int | None = None
    seconds: float | None = None
    fps: Fraction | None = None
    seed: int | None = None  # None: a random seed, recorded so the result can be reproduced
    steps: int | None = None
    guidance_scale: float | None = None
    audio_guidance_scale: float | None = None
    guidance_rescale: float | None = None
    audio_guidance_rescale: float | None = None
    enhance_prompt: bool = False  # rewrite the prompt with the model's prompt enhancer first
    cache: StepCacheMode | None = None  # reuse the DiT's work between steps: off, balanced, fast (model.step_cache)
    # Generate at half width and height, upsample the latents 2x, refine at full size (engines/two_stage.py);
    # None: as model.two_stage says for the size.
    two_stage: bool | None = None
    # The size delivered, when it is not the size generated (width x height): the frames are centre-cropped
    # to it, or scaled to cover it and then cropped (`GenerationParams.fit`). None: as generated.
    output_width: int | None = None
    output_height: int | None = None
    # LoRA adapters of model.lora.dir as (name, scale) pairs, applied in the DiT's forward (engines/lora/);
    # empty: the base model. They work with any `cache` mode.
    loras: tuple[tuple[str, float], ...] = ()

    def validated(self, config: ModelConfig) -> GenerationParams:
        """Fill defaults from `config`, then check every field; raises `InvalidParameter` naming it."""
        loras = _check_loras(self.loras, config.lora)
        d, lim = config.defaults, config.limits
        p = dataclasses.replace(
            self,
            negative_prompt=d.negative_prompt if self.negative_prompt is None else self.negative_prompt,
            width=d.width if self.width is None else self.width,
            height=d.height if self.height is None else self.height,
            seconds=d.seconds if self.seconds is None else self.seconds,
            fps=d.fps if self.fps is None else parse_fps(self.fps),
            seed=secrets.randbelow(2**31) if self.seed is None else self.seed,
            steps=d.steps if self.steps is None else self.steps,
            guidance_scale=d.guidance_scale if self.guidance_scale is None else self.guidance_scale,
            audio_guidance_scale=(d.audio_guidance_scale if self.audio_guidance_scale is None
                                  else self.audio_guidance_scale),
            guidance_rescale=d.guidance_rescale if self.guidance_rescale is None else self.guidance_rescale,
            audio_guidance_rescale=(d.audio_guidance_rescale if self.audio_guidance_rescale is None
                                    else self.audio_guidance_rescale),
            cache=config.step_cache.default if self.cache is None else self.cache,
        )
        reads = f"; this model reads its first {config.tokenizer_max_length} tokens"
        _check_text("prompt", p.prompt, lim.max_prompt_chars, required=True, note=reads)
        _check_text("negative_prompt", p.negative_prompt, lim.max_prompt_chars, required=False, note=reads)
        for side in ("width", "height"):
            v = getattr(p, side)
            if (not isinstance(v, int) or v % lim.side_multiple != 0
                    or not lim.min_side <= v <= lim.max_side):
                raise InvalidParameter(side, v, f"a multiple of {lim.side_multiple} in "
                                                f"[{lim.min_side}, {lim.max_side}]")
        if p.width * p.height > lim.max_pixels:
            raise InvalidParameter("size", f"{p.width}x{p.height}",
                                   f"at most {lim.max_pixels} pixels (1080p); "
                                   f"got {p.width * p.height}")
        if p.fps not in lim.allowed_fps:
            raise InvalidParameter("fps", _fmt_fps(p.fps),
                                   "one of " + ", ".join(_fmt_fps(f) for f in lim.allowed_fps))
        if not (isinstance(p.seconds, (int, float)) and math.isfinite(p.seconds)
                and lim.min_seconds <= p.seconds <= lim.max_seconds):
            raise InvalidParameter("seconds", p.seconds, f"[{lim.min_seconds:g}, {lim.max_seconds:g}]")
        _check_int("seed", p.seed, 0, lim.max_seed)
        _check_int("steps", p.steps, 1, lim.max_steps)
        fixed = config.schedule.sigmas
        if fixed is not None and p.steps != len(fixed):
            raise InvalidParameter("steps", p.steps, f"{len(fixed)}: this model runs a fixed schedule "
                                                     "(model.schedule.sigmas)")
        for name in ("guidance_scale", "audio_guidance_scale"):
            _check_float(name, getattr(p, name), *lim.guidance_range)
        for name in ("guidance_rescale", "audio_guidance_rescale"):
            _check_float(name, getattr(p, name), *lim.rescale_range)
        if p.cache not in STEP_CACHE_MODES:
            raise InvalidParameter("cache", p.cache, "one of " + ", ".join(STEP_CACHE_MODES))
        two_stage = _two_stage(p, config)
        if (p.output_width is None) != (p.output_height is None):
            raise InvalidParameter("size", f"{p.output_width}x{p.output_height}", "both sides of the output or none")
        for side in ("output_width", "output_height"):
            v = getattr(p, side)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int) or v % 2 or
                                  not 2 <= v <= lim.max_side):
                raise InvalidParameter("size", f"{p.output_width}x{p.output_height}",
                                       f"even sides (H.264) in [2, {lim.max_side}]")
        if p.output_width is not None and p.output_width * p.output_height > lim.max_pixels:
            raise InvalidParameter("size", f"{p.output_width}x{p.output_height}",
                                   f"at most {lim.max_pixels} pixels (1080p)")
        if p.enhance_prompt is not False and not (p.enhance_prompt is True and config.enhancer.enabled):
            raise InvalidParameter("enhance_prompt", p.enhance_prompt,
                                   "false: this model has no prompt enhancer (model.enhancer.enabled is false)"
                                   if p.enhance_prompt is True else "true or false")
        assert p.negative_prompt is not None and p.width is not None and p.height is not None  # for the type checker
        assert p.seconds is not None and p.fps is not None and p.seed is not None and p.steps is not None
        return GenerationParams(
            prompt=p.prompt, negative_prompt=p.negative_prompt, width=p.width, height=p.height,
            seconds=float(p.seconds), fps=p.fps, seed=p.seed, steps=p.steps, guidance_scale=float(p.guidance_scale),
            audio_guidance_scale=float(p.audio_guidance_scale), guidance_rescale=float(p.guidance_rescale),
            audio_guidance_rescale=float(p.audio_guidance_rescale), enhance_prompt=p.enhance_prompt,
            cache=p.cache, two_stage=two_stage,
            num_frames=model_frames_for(frames_for(p.seconds, p.fps), _temporal_compression(config)),
            output_width=p.output_width, output_height=p.output_height, loras=loras)


@dataclass(frozen=True)
class GenerationParams:
    """A validated request: every field set and within the model's limits (`GenerationRequest.validated`).

    `num_frames` is what the model generates for `seconds` at `fps`: the smallest count of the video VAE's
    causal layout (tk+1 frames, t its temporal compression) that covers the delivered frames.
    """

    prompt: str
    negative_prompt: str
    width: int
    height: int
    seconds: float
    fps: Fraction
    seed: int
    steps: int
    guidance_scale: float
    audio_guidance_scale: float
    guidance_rescale: float
    audio_guidance_rescale: float
    enhance_prompt: bool
    cache: StepCacheMode
    two_stage: bool
    num_frames: int
    output_width: int | None = None  # the size delivered when it is not the size generated (see `fit`)
    output_height: int | None = None
    loras: tuple[tuple[str, float], ...] = ()  # (adapter name, scale), each name once, in the order asked

    @property
    def size(self) -> str:
        """"WIDTHxHEIGHT" generated."""
        return f"{self.width}x{self.height}"

    @property
    def delivered(self) -> tuple[int, int]:
        """(width, height) of the delivered MP4."""
        return (self.output_width or self.width, self.output_height or self.height)

    @property
    def delivered_size(self) -> str:
        """"WIDTHxHEIGHT" of the delivered MP4, as the APIs write it."""
        return "x".join(map(str, self.delivered))

    @property
    def fit(self) -> str | None:
        """How the generated frames become the delivered size: None (they are it), "crop" (a centre crop,
        `crops`) or "scale" (scaled to cover it, then centre-cropped)."""
        if self.delivered == (self.width, self.height):
            return None
        return "crop" if crops((self.width, self.height), self.delivered) else "scale"

    @property
    def output_frames(self) -> int:
        """Frames in the delivered MP4."""
        return frames_for(self.seconds, self.fps)

    @property
    def use_cfg(self) -> bool:
        """Classifier-free guidance needs an unconditional pass (like LTX2Pipeline's rule)."""
        return self.guidance_scale > 1.0 or self.audio_guidance_scale > 1.0

    def as_request(self, **changes: Any) -> GenerationRequest:
        """These values as a request again, with `changes` (e.g. a remix's new prompt and seed), to validate anew."""
        values = {f.name: getattr(self, f.name) for f in dataclasses.fields(GenerationRequest)}
        return GenerationRequest(**{**values, **changes})

    def validated(self, config: ModelConfig) -> GenerationParams:
        """Checked again against `config` (another model, or after a change of duration or size)."""
        return self.as_request().validated(config)


def _temporal_compression(config: ModelConfig) -> int:
    from engines.geometry import latent_geometry  # (it reads a checkpoint's config files: cached per model)

    return latent_geometry(config).temporal_compression


def _two_stage(p: GenerationRequest, config: ModelConfig) -> bool:
    """Whether `p` runs in two stages: as asked, else by model.two_stage.min_pixels; an explicit ask is
    checked (the model has an upsampler; half of each side is still a valid side)."""
    lim, asked = config.limits, p.two_stage
    half_fits = all(v % (2 * lim.side_multiple) == 0 and v // 2 >= lim.min_side for v in (p.width, p.height))
    if asked is None:
        threshold = config.two_stage.min_pixels
        return (threshold is not None and p.width * p.height >= threshold and half_fits
                and config.has_latent_upsampler)
    if not isinstance(asked, bool):
        raise InvalidParameter("two_stage", asked, "true or false")
    if asked and not config.has_latent_upsampler:
        raise InvalidParameter("two_stage", asked, "false: this model has no latent upsampler (a "
                                                   "latent_upsampler/ folder in its checkpoint)")
    if asked and not half_fits:
        raise InvalidParameter("size", f"{p.width}x{p.height}", f"with two_stage, width and height multiples of "
                                               f"{2 * lim.side_multiple} and at least {2 * lim.min_side} "
                                               "(stage 1 runs at half of each)")
    return asked


def _check_loras(loras: object, config: LoraConfig) -> tuple[tuple[str, float], ...]:
    """The request's adapters as (name, scale) pairs, checked against `model.lora`: how many, each scale, each
    name once and present in the adapter directory. Whether a file fits the DiT is checked when the
    Denoiser loads it (`engines.lora.AdapterBank`); this runs where the request arrives, without torch."""
    try:
        pairs = [(name, scale) for name, scale in loras]  # type: ignore[union-attr]
    except (TypeError, ValueError):
        raise InvalidParameter("loras", loras, "a list of (name, scale) pairs") from None
    if len(pairs) > config.max_per_request:
        raise InvalidParameter("loras", [n for n, _ in pairs], f"at most {config.max_per_request} adapters "
                                                               "(model.lora.max_per_request)")
    lo, hi = config.scale_range
    seen: set[str] = set()
    for i, (name, scale) in enumerate(pairs):
        if not isinstance(name, str) or not name:
            raise InvalidParameter(f"loras[{i}].name", name, "an adapter name")
        if name in seen:
            raise InvalidParameter(f"loras[{i}].name", name, "each adapter at most once")
        seen.add(name)
        _check_float(f"loras[{i}].scale", scale, lo, hi)
        if config.dir is None:
            raise InvalidParameter(f"loras[{i}].name", name, "none: this model has no LoRA adapters "
                                                             "(model.lora.dir is not set)")
        if adapter_file(config.dir, name) is None:
            names = available_adapters(config.dir)
            raise InvalidParameter(f"loras[{i}].name", name, f"one of {', '.join(names)} (the adapters in "
                                   f"{config.dir})" if names else
                                   f"none: {config.dir} holds no LoRA adapters")
    return tuple((name, float(scale)) for name, scale in pairs)


def _fmt_fps(fps: Fraction) -> str:
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


def _check_text(field: str, value: object, max_chars: int, *, required: bool, note: str = "") -> None:
    if not isinstance(value, str):
        raise InvalidParameter(field, value, "a string")
    if required and not value.strip():
        raise InvalidParameter(field, value, f"1 to {max_chars} characters, not blank")
    if len(value) > max_chars:
        raise InvalidParameter(field, f"<{len(value)} characters>", f"at most {max_chars} characters{note}")


def _check_int(field: str, value: object, lo: int, hi: int) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or not lo <= value <= hi:
        raise InvalidParameter(field, value, f"an integer in [{lo}, {hi}]")


def _check_float(field: str, value: object, lo: float, hi: float) -> None:
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value)
            or not lo <= value <= hi):
        raise InvalidParameter(field, value, f"a number in [{lo:g}, {hi:g}]")


def params_to_dict(params: GenerationParams) -> dict:
    """JSON-able form (fps as "num/den"), for job stores and logs."""
    d = dataclasses.asdict(params)
    d["fps"] = f"{params.fps.numerator}/{params.fps.denominator}"
    return d


def params_from_dict(data: dict) -> GenerationParams:
    """The validated params `params_to_dict` wrote (a job's record)."""
    d = dict(data)
    d["fps"] = Fraction(d["fps"])
    d["loras"] = tuple((str(n), float(s)) for n, s in d.get("loras", ()))  # JSON gives lists; older rows none
    if "num_frames" not in d:  # recorded before it was a field: LTX-2's layout
        d["num_frames"] = model_frames_for(frames_for(d["seconds"], d["fps"]))
    return GenerationParams(**d)
