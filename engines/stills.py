"""Stills of a finished MP4: a thumbnail (one frame) and a spritesheet (a grid of frames), as OpenAI's
`variant=thumbnail | spritesheet` downloads are. Made from the MP4 itself, so they carry its visible mark."""

from __future__ import annotations

import io
import math
from pathlib import Path

import av
import PIL.Image

SPRITES = 16  # frames in a spritesheet, evenly spaced (fewer for a shorter clip)
SPRITE_WIDTH = 256  # each frame's width in the sheet, pixels (the height keeps the aspect)


def _frames(path: Path) -> list[PIL.Image.Image]:
    with av.open(str(path)) as container:
        return [f.to_image() for f in container.decode(video=0)]


def thumbnail(path: str | Path) -> bytes:
    """The clip's middle frame as WebP."""
    frames = _frames(Path(path))
    if not frames:
        raise ValueError(f"{path}: no video frames")
    out = io.BytesIO()
    frames[len(frames) // 2].save(out, format="WEBP", quality=85)
    return out.getvalue()


def spritesheet(path: str | Path, count: int = SPRITES, width: int = SPRITE_WIDTH) -> bytes:
    """Up to `count` evenly spaced frames, each scaled to `width`, in a near-square grid, as JPEG."""
    frames = _frames(Path(path))
    if not frames:
        raise ValueError(f"{path}: no video frames")
    n = min(count, len(frames))
    picks = [frames[round(i * (len(frames) - 1) / max(1, n - 1))] for i in range(n)]
    w = min(width, picks[0].width)
    h = max(1, round(picks[0].height * w / picks[0].width))
    cols = math.ceil(math.sqrt(n))
    rows = math.ceil(n / cols)
    sheet = PIL.Image.new("RGB", (cols * w, rows * h))
    for i, frame in enumerate(picks):
        sheet.paste(frame.resize((w, h), PIL.Image.Resampling.BILINEAR), ((i % cols) * w, (i // cols) * h))
    out = io.BytesIO()
    sheet.save(out, format="JPEG", quality=85)
    return out.getvalue()
