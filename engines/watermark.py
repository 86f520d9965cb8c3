"""Visible watermark: an opaque "AI" badge with a 16-cell code burned into every frame, and its detector.

The badge scales with the frame (its height is `size` of the frame height, width 4x that) and
sits in a corner. The detector compares the frame's luma at the badge's place with the badge
template (normalised cross-correlation), which survives H.264 encoding.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated, Literal

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from pydantic import Field

from engines.schema import section

Corner = Literal["bottom-right", "bottom-left", "top-right", "top-left"]
CODE = 0b1011_0011_1000_1011  # 16 bits drawn as two rows of eight cells


@section("provenance.watermark")
class WatermarkConfig:
    """The visible mark every frame of every Kino video carries."""

    enabled: bool = True
    """Burn the badge into every frame."""
    position: Corner = "bottom-right"
    """The corner it sits in."""
    size: Annotated[float, Field(ge=0.02, le=0.5)] = 0.1
    """Badge height as a fraction of the frame height."""
    opacity: Annotated[float, Field(ge=0.3, le=1.0)] = 0.9
    """1 = opaque; fainter badges are not reliably detected."""
    label: str = "AI"
    """Text on the badge."""
    threshold: Annotated[float, Field(gt=0.0, le=1.0)] = 0.6
    """Detector: the correlation needed to call a frame marked."""


def _badge_height(frame_h: int, frame_w: int, size: float) -> int:
    return int(max(8, min(round(frame_h * size), frame_w // 4)))


@lru_cache(maxsize=32)
def badge(height: int, label: str = "AI") -> np.ndarray:
    """The badge as luma [h, 4h] uint8: black box, white code cells, the label where it fits."""
    w = 4 * height
    im = Image.new("L", (w, height), 0)
    d = ImageDraw.Draw(im)
    pad = max(1, height // 8)
    code_w = w // 2  # the right half carries the code: 2 rows x 8 cells
    cell_w, cell_h = (code_w - pad) / 8, (height - 2 * pad) / 2
    for k in range(16):
        if (CODE >> (15 - k)) & 1:
            row, col = divmod(k, 8)
            x0 = w - code_w + col * cell_w
            y0 = pad + row * cell_h
            d.rectangle([round(x0), round(y0), round(x0 + cell_w) - 1, round(y0 + cell_h) - 1], fill=255)
    if height >= 14:
        font = ImageFont.load_default(size=max(8, int(height * 0.6)))
        d.text((pad * 2, height // 2), label, fill=255, font=font, anchor="lm")
    else:  # too small for text: a solid bar stands in for it
        d.rectangle([pad, height // 3, w // 2 - 2 * pad, 2 * height // 3], fill=255)
    return np.asarray(im, dtype=np.uint8)


def badge_region(frame_h: int, frame_w: int, config: WatermarkConfig = WatermarkConfig()) -> tuple[slice, slice]:
    """The rows and columns of a frame that the badge covers."""
    h = _badge_height(frame_h, frame_w, config.size)
    margin = max(2, frame_h // 50)
    y0 = frame_h - h - margin if config.position.startswith("bottom") else margin
    x0 = frame_w - 4 * h - margin if config.position.endswith("right") else margin
    return slice(y0, y0 + h), slice(x0, x0 + 4 * h)


def stamp(frames: np.ndarray, config: WatermarkConfig = WatermarkConfig()) -> np.ndarray:
    """Burn the badge into uint8 RGB frames [f, H, W, 3] (or one [H, W, 3]); returns new frames."""
    if not config.enabled:
        return frames
    out = frames.copy()
    rows, cols = badge_region(frames.shape[-3], frames.shape[-2], config)
    mark = badge(rows.stop - rows.start, config.label).astype(np.float32)[..., None]
    region = out[..., rows, cols, :].astype(np.float32)
    blended = (1 - config.opacity) * region + config.opacity * mark
    out[..., rows, cols, :] = np.clip(blended.round(), 0, 255).astype(np.uint8)
    return out


def detect(frame: np.ndarray, config: WatermarkConfig = WatermarkConfig()) -> tuple[bool, float]:
    """(marked, correlation) for one uint8 RGB frame [H, W, 3]."""
    rows, cols = badge_region(frame.shape[0], frame.shape[1], config)
    region = frame[rows, cols].astype(np.float32)
    luma = 0.299 * region[..., 0] + 0.587 * region[..., 1] + 0.114 * region[..., 2]
    template = badge(rows.stop - rows.start, config.label).astype(np.float32)
    a, b = luma - luma.mean(), template - template.mean()
    score = float((a * b).sum() / (np.sqrt((a * a).sum() * (b * b).sum()) + 1e-6))
    return score >= config.threshold, score
