"""What a client asks for, and how it becomes validated `GenerationParams`: the one parser of requests.

Protocol adapters fill `CreateVideo` / `RemixVideo` with the values as sent (strings where the
protocol sends strings: size "WIDTHxHEIGHT", fps "30000/1001"); everything is checked here, with
errors that open with the API field and say what is allowed.
"""

from __future__ import annotations

import hashlib
import io
import json
import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass
from typing import Any

import PIL.Image

from engines.config import ModelConfig
from engines.errors import InvalidParameter
from engines.params import GenerationParams, GenerationRequest, parse_fps, parse_size
from serving.config import RestDefaults
from serving.errors import InvalidArgument, Reason
from serving.jobs import JobStatus, Visibility
from serving.videos.references import ImageReference

MAX_IDEMPOTENCY_KEY = 128
DEFAULT_PAGE_SIZE = 20
MAX_PAGE_SIZE = 100
MAX_IMAGE_PIXELS = 4096 * 4096
PRIORITY_RANGE = (0, 9)
REMIX_STRENGTH_RANGE = (0.1, 1.0)
LISTABLE = tuple(s for s in JobStatus if s != JobStatus.DELETED)
# Engine parameter names -> the API field that carries them.
_API_FIELD = {"width": "size", "height": "size"}


@dataclass(frozen=True)
class CreateVideo:
    """A create request as the domain sees it (None: the model's default)."""

    prompt: str
    negative_prompt: str | None = None
    size: str | None = None  # "WIDTHxHEIGHT"
    seconds: float | None = None
    fps: str | None = None
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    audio_guidance_scale: float | None = None
    priority: int | None = None
    idempotency_key: str | None = None
    model: str | None = None
    image: bytes | None = None  # first frame (PNG/JPEG)
    image_ref: ImageReference | None = None  # a first frame by URL (serving/videos/references.py)
    cameo_id: str | None = None
    visibility: Visibility = Visibility.PRIVATE
    enhance_prompt: bool = False
    cache: str | None = None  # step caching: off, balanced, fast (None: the server's default)
    two_stage: bool | None = None  # half size, upsample, refine (None: the server's default for the size)
    loras: tuple[tuple[str, float], ...] = ()  # LoRA adapters of model.lora.dir, (name, scale) pairs
    # Came through the OpenAI-compatible API: any even size is served (generated at the nearest size the model
    # makes, then cropped or scaled to it), and an omitted size and seconds take rest.defaults (OpenAI's). gRPC
    # keeps its exact rule (sides multiples of 32) and the model's defaults.
    openai_api: bool = False


@dataclass(frozen=True)
class RemixVideo:
    video_id: str
    prompt: str
    strength: float | None = None
    seed: int | None = None
    idempotency_key: str | None = None
    visibility: Visibility = Visibility.PRIVATE
    enhance_prompt: bool = False
    loras: tuple[tuple[str, float], ...] | None = None  # None: the source video's adapters


def model_profile(name: str | None, model: ModelConfig, aliases: Mapping[str, str]) -> str:
    """The profile a model name asks for (standard or pro); model_not_found naming what is served."""
    if not name or name == model.model_id:
        return "standard"
    if name in aliases:
        return aliases[name]
    served = ", ".join(repr(n) for n in (model.model_id, *aliases))
    raise InvalidArgument(f"model={name!r} does not exist or is not served here; served: {served}",
                          field="model", reason=Reason.MODEL_NOT_FOUND)


def fitted_size(width: int, height: int, model: ModelConfig, *, multiple: int | None = None) -> tuple[int, int]:
    """The size to generate for a delivered `width` x `height`: each side rounded up to the model's multiple
    (or `multiple`), at least its smallest side; scaled down, keeping the aspect, where that exceeds the
    largest side or pixels. Delivered from it by a centre crop or a scale (`GenerationParams.fit`)."""
    lim = model.limits
    m = multiple or lim.side_multiple
    lo = -(-lim.min_side // m) * m

    def up(v: float) -> int:
        return max(lo, -(-int(math.ceil(v)) // m) * m)

    w, h = up(width), up(height)
    shrink = min(1.0, lim.max_side / max(width, height), math.sqrt(lim.max_pixels / (width * height)))
    while shrink < 1.0 or w > lim.max_side or h > lim.max_side or w * h > lim.max_pixels:
        w, h = max(lo, int(width * shrink) // m * m), max(lo, int(height * shrink) // m * m)
        if w <= lim.max_side and h <= lim.max_side and w * h <= lim.max_pixels:
            break
        shrink *= 0.97
    return w, h


def generation_params(req: CreateVideo, model: ModelConfig, *, aliases: Mapping[str, str] | None = None,
                      defaults: RestDefaults | None = None) -> GenerationParams:
    """Validated generation parameters of a create request; InvalidArgument names the API field.

    `aliases`: other names of the model and their profiles (rest.model_aliases); `defaults`: what an
    OpenAI-API request that omits size or seconds gets (rest.defaults)."""
    profile = model_profile(req.model, model, (aliases or {}) if req.openai_api else {})
    size, seconds = req.size, req.seconds
    if req.openai_api and defaults is not None:
        size = size or defaults.size or None
        seconds = seconds if seconds is not None else (defaults.seconds or None)
    width = height = out_w = out_h = None
    if size:
        m = model.limits.side_multiple
        try:
            width, height = parse_size(size)
            if req.openai_api and (width < 2 or height < 2 or width % 2 or height % 2):
                raise ValueError(size)
        except ValueError:
            raise InvalidArgument(
                f"size={size!r} is not allowed: WIDTHxHEIGHT with even sides of at least 2, e.g. 1280x720 "
                f"(generated at the nearest multiple of {m}, then cropped or scaled to it)" if req.openai_api else
                f"size={size!r} is not allowed: WIDTHxHEIGHT, e.g. 256x256, sides multiples of {m}",
                field="size") from None
    two_stage = req.two_stage
    if req.image or req.image_ref or req.cameo_id:  # the refine would not see the first frame: one stage
        if two_stage:
            raise InvalidArgument("two_stage=true is not allowed with an image or a cameo: false or unset "
                                  "(image-to-video runs in one stage)", field="two_stage")
        two_stage = False
    steps = req.steps
    if profile == "pro":
        wants_two = two_stage is not False and model.has_latent_upsampler
        if wants_two:  # generated at a size whose halves are valid sides
            m = model.limits.side_multiple
            gen = ((model.defaults.width, model.defaults.height) if width is None or height is None else
                   fitted_size(width, height, model, multiple=2 * m) if req.openai_api else (width, height))
            wants_two = all(v % (2 * m) == 0 and v // 2 >= model.limits.min_side for v in gen)
        if wants_two:
            two_stage = True
        elif steps is None and model.schedule.sigmas is None:
            steps = min(model.limits.max_steps, 2 * model.defaults.steps)
    if width is not None and height is not None and req.openai_api:
        gen = fitted_size(width, height, model, multiple=2 * model.limits.side_multiple if two_stage else None)
        if gen != (width, height):
            (width, height), out_w, out_h = gen, width, height
    fps = None
    if req.fps:
        try:
            fps = parse_fps(req.fps)
        except (ValueError, ZeroDivisionError):
            raise InvalidArgument(f"fps={req.fps!r} is not allowed: a number or a fraction like 30000/1001",
                                  field="fps") from None
    check_priority(req.priority)
    check_idempotency_key(req.idempotency_key)
    for name in ("prompt", "negative_prompt"):
        check_printable(name, getattr(req, name))
    return validated(GenerationRequest(
        prompt=req.prompt, negative_prompt=req.negative_prompt, width=width, height=height,
        seconds=seconds, fps=fps, seed=req.seed, steps=steps, guidance_scale=req.guidance_scale,
        audio_guidance_scale=req.audio_guidance_scale, enhance_prompt=req.enhance_prompt, cache=req.cache,
        two_stage=two_stage, output_width=out_w, output_height=out_h, loras=req.loras), model)


def validated(params: GenerationRequest | GenerationParams, model: ModelConfig) -> GenerationParams:
    """`params.validated(model)`, its errors named by the API field (width and height are `size`)."""
    try:
        return params.validated(model)
    except InvalidParameter as e:
        api_field = _API_FIELD.get(e.field, e.field)
        message = str(e) if api_field == e.field else f"{api_field}: {e}"
        raise InvalidArgument(message, field=api_field) from None


def remix_strength(asked: float | None, default: float) -> float:
    strength = default if asked is None else asked
    lo, hi = REMIX_STRENGTH_RANGE
    if not lo <= strength <= hi:
        raise InvalidArgument(f"strength={strength} is not allowed: a number in [{lo:g}, {hi:g}]", field="strength")
    return strength


def page_size(asked: int | None, field: str = "page_size") -> int:
    """The page size a list call asked for (0 or None: the default), within [1, MAX_PAGE_SIZE]."""
    if not asked:
        return DEFAULT_PAGE_SIZE
    if not 1 <= asked <= MAX_PAGE_SIZE:
        raise InvalidArgument(f"{field}={asked} is not allowed: an integer in [1, {MAX_PAGE_SIZE}]", field=field)
    return asked


def status_filter(name: str | None) -> JobStatus | None:
    """A list filter by status name (None or "": every status)."""
    if not name:
        return None
    try:
        status = JobStatus(name)
    except ValueError:
        status = None
    if status not in LISTABLE:
        raise InvalidArgument(f"status={name!r} is not allowed: one of {', '.join(s.value for s in LISTABLE)}",
                              field="status")
    return status


def check_priority(priority: int | None) -> None:
    lo, hi = PRIORITY_RANGE
    if priority is not None and not lo <= priority <= hi:
        raise InvalidArgument(f"priority={priority} is not allowed: an integer in [{lo}, {hi}]", field="priority")


def check_idempotency_key(key: str | None) -> None:
    if key is not None and len(key) > MAX_IDEMPOTENCY_KEY:
        raise InvalidArgument(f"idempotency_key is not allowed: at most {MAX_IDEMPOTENCY_KEY} characters, "
                              f"got {len(key)}", field="idempotency_key")


def check_printable(field: str, text: str | None) -> None:
    """Malformed text (control characters other than newline and tab) is INVALID_ARGUMENT."""
    if text and any(ord(c) < 32 and c not in "\n\t\r" for c in text):
        raise InvalidArgument(f"{field} is not allowed: it contains control characters", field=field)


def decode_image(data: bytes) -> PIL.Image.Image:
    """A first frame as RGB; PNG or JPEG, at most MAX_IMAGE_PIXELS."""
    try:
        image = PIL.Image.open(io.BytesIO(data))
        if image.width * image.height > MAX_IMAGE_PIXELS:
            raise InvalidArgument(f"image is not allowed: at most {MAX_IMAGE_PIXELS} pixels", field="image")
        image.load()
    except InvalidArgument:
        raise
    except Exception:  # noqa: BLE001 - anything PIL cannot read is a bad image
        raise InvalidArgument("image is not allowed: it must be a PNG or JPEG image", field="image") from None
    if image.format not in ("PNG", "JPEG"):
        raise InvalidArgument(f"image is not allowed: PNG or JPEG, got {image.format}", field="image")
    return image.convert("RGB")


def request_hash(req: CreateVideo | RemixVideo) -> str:
    """Of the request as sent, to spot an idempotency key reused for another request."""
    data: dict[str, Any] = asdict(req)
    if isinstance(req, CreateVideo):
        data["image"] = hashlib.sha256(req.image or b"").hexdigest()
    return hashlib.sha256(json.dumps(data, sort_keys=True, default=str).encode()).hexdigest()
