"""What a video with audio shows and sounds like, measured from its pixels and samples alone.

Used on the demo model's output (loadtests/bench_truth.py) and checked on the world's own clips, whose ground
truth is known (tests/training/test_truth.py):

- colour adherence: the hue of the object's pixels, nearest of the world's four colours;
- motion adherence: the object centroid's path: a net sideways drift is a slide (its sign the direction), a
  vertical swing without one is a bounce;
- audio-visual sync: contacts seen in the VIDEO (the frames where a bouncing object's bottom edge is lowest,
  or where a sliding object reaches the wall and stops) against click onsets heard in the AUDIO (a rise of
  the energy above the hum's band); a contact is in sync if the nearest onset is within one frame;
- remix and image-to-video fidelity: IoU of the object's masks, PSNR of a frame against an image (outside the
  watermark's badge, `unmarked`).

The object is found by saturation: the world's floors and walls are grey, its objects strongly coloured, so a
pixel belongs to the object when its chroma (max - min of R, G, B) is above half the least saturated object's.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import av
import numpy as np
from matplotlib.colors import rgb_to_hsv

from engines.watermark import badge_region
from training.world import COLOURS

CHROMA_THRESHOLD = 70  # of 255: half the least saturated object colour's chroma (green, 140); surfaces are < 15
MIN_PIXELS = 8  # an object smaller than this in a frame is not seen there
SLIDE_PIXELS = 6.0  # net sideways travel that makes a slide (the world's slides travel >= 9 px)
BOUNCE_PIXELS = 6.0  # vertical swing that makes a bounce (the world's bounce is 22 px)
CLICK_BAND_HZ = 2500.0  # clicks are broadband, the hum and its harmonic stay below 1.5 kHz
REFRACTORY_SECONDS = 0.08  # two onsets closer than this are one click

_HUES = {name: float(rgb_to_hsv(np.array(rgb, np.float64) / 255)[0]) for name, rgb in COLOURS.items()}


def object_masks(frames: np.ndarray) -> np.ndarray:
    """uint8 ``[F, H, W, 3]`` -> bool ``[F, H, W]``: the strongly coloured pixels."""
    f = frames.astype(np.int16)
    return (f.max(-1) - f.min(-1)) >= CHROMA_THRESHOLD


def dominant_colour(frames: np.ndarray, masks: np.ndarray | None = None) -> str | None:
    """The world colour nearest the chroma-weighted mean hue of the object's pixels (None: no object)."""
    masks = object_masks(frames) if masks is None else masks
    if masks.sum() < MIN_PIXELS:
        return None
    hsv = rgb_to_hsv(frames[masks].astype(np.float64) / 255)
    weight = hsv[:, 1] * hsv[:, 2]
    angle = np.angle(np.sum(weight * np.exp(2j * np.pi * hsv[:, 0]))) / (2 * np.pi) % 1.0

    def gap(h: float) -> float:
        return min(abs(angle - h), 1 - abs(angle - h))

    return min(_HUES, key=lambda name: gap(_HUES[name]))


@dataclass(frozen=True)
class Track:
    """Where the object is in each frame (NaN where it is not seen)."""

    centroid: np.ndarray  # [F, 2] (x, y), pixels
    bottom: np.ndarray  # [F] lowest object row + 1
    left: np.ndarray  # [F] leftmost object column
    right: np.ndarray  # [F] rightmost object column + 1
    width: int

    @property
    def seen(self) -> np.ndarray:
        return ~np.isnan(self.centroid[:, 0])


def track(masks: np.ndarray) -> Track:
    f, h, w = masks.shape
    centroid = np.full((f, 2), np.nan)
    bottom, left, right = (np.full(f, np.nan) for _ in range(3))
    for t in range(f):
        ys, xs = np.nonzero(masks[t])
        if len(xs) >= MIN_PIXELS:
            centroid[t] = xs.mean() + 0.5, ys.mean() + 0.5
            bottom[t], left[t], right[t] = ys.max() + 1, xs.min(), xs.max() + 1
    return Track(centroid, bottom, left, right, w)


def motion(tr: Track) -> str | None:
    """bouncing, sliding left or sliding right (None: the object is not seen, or it neither slides nor bounces)."""
    x, y = tr.centroid[tr.seen, 0], tr.centroid[tr.seen, 1]
    if len(x) < 4:
        return None
    drift = x[-2:].mean() - x[:2].mean()
    if abs(drift) >= SLIDE_PIXELS:
        return "sliding right" if drift > 0 else "sliding left"
    return "bouncing" if y.max() - y.min() >= BOUNCE_PIXELS else None


def video_contacts(tr: Track, how: str | None) -> list[int]:
    """Frames at which the object visibly touches the floor (bouncing) or a wall (sliding).

    A bounce's contact is a frame where the bottom edge is lowest among its neighbours and within 2 px of the
    lowest it gets; a slide's is the first frame at which the centroid is within 1 px of where it comes to
    rest, when it rests against a wall and got there moving (not already there at the first frame)."""
    seen = tr.seen
    if how == "bouncing":
        b = tr.bottom
        floor = np.nanmax(b) if seen.any() else np.nan
        return [t for t in range(1, len(b) - 1) if seen[t - 1:t + 2].all()
                and b[t] >= b[t - 1] and b[t] > b[t + 1] and b[t] >= floor - 2]
    if how in ("sliding left", "sliding right") and seen.sum() >= 4:
        x = tr.centroid[:, 0]
        rest = np.nanmedian(x[seen][-2:])
        edge = tr.left if how == "sliding left" else tr.width - tr.right
        at_wall = np.nanmedian(edge[seen][-2:]) <= 4
        arrived = [t for t in range(len(x)) if seen[t] and abs(x[t] - rest) <= 1.0]
        if at_wall and arrived and arrived[0] > 0:
            return [arrived[0]]
    return []


def click_onsets(audio: np.ndarray, sample_rate: int) -> list[float]:
    """Seconds at which a click starts: the energy above `CLICK_BAND_HZ` (1 ms envelope) rising through a
    threshold well above its median and a quarter of its peak."""
    mono = audio.mean(axis=0) if audio.ndim == 2 else audio
    spectrum = np.fft.rfft(mono)
    spectrum[np.fft.rfftfreq(len(mono), 1 / sample_rate) < CLICK_BAND_HZ] = 0
    high = np.fft.irfft(spectrum, len(mono))
    hop = max(1, sample_rate // 1000)
    n = len(high) // hop
    envelope = np.abs(high[: n * hop]).reshape(n, hop).max(axis=1)
    if n == 0 or envelope.max() <= 0:
        return []
    threshold = max(0.25 * envelope.max(), 8 * np.median(envelope), 0.02)
    above = envelope >= threshold
    onsets: list[float] = []
    for i in np.nonzero(above & ~np.r_[False, above[:-1]])[0]:
        t = i * hop / sample_rate
        if not onsets or t - onsets[-1] >= REFRACTORY_SECONDS:
            onsets.append(t)
    return onsets


@dataclass(frozen=True)
class Sync:
    """Each visible contact's offset to the nearest click onset (seconds; None: no click at all)."""

    offsets: list[float | None]
    frame_seconds: float
    onsets: int

    @property
    def contacts(self) -> int:
        return len(self.offsets)

    @property
    def in_sync(self) -> int:
        """Contacts whose nearest click starts within one frame of them."""
        return sum(1 for o in self.offsets if o is not None and abs(o) <= self.frame_seconds + 1e-9)


def sync(contact_frames: list[int], onsets: list[float], fps: float) -> Sync:
    offsets: list[float | None] = []
    for frame in contact_frames:
        t = frame / fps
        offsets.append(min((o - t for o in onsets), key=abs) if onsets else None)
    return Sync(offsets, 1 / fps, len(onsets))


def mask_iou(a: np.ndarray, b: np.ndarray) -> float:
    union = np.logical_or(a, b).sum()
    return float(np.logical_and(a, b).sum() / union) if union else 0.0


def psnr(a: np.ndarray, b: np.ndarray, keep: np.ndarray | None = None) -> float:
    """PSNR in dB of two uint8 images ``[H, W, 3]``, over the pixels where `keep` ``[H, W]`` is True (all: None)."""
    err = (a.astype(np.float64) - b.astype(np.float64)) ** 2
    mse = np.mean(err if keep is None else err[keep])
    return float("inf") if mse == 0 else float(10 * np.log10(255.0**2 / mse))


@dataclass(frozen=True)
class Reading:
    """What one clip shows and sounds like."""

    colour: str | None
    motion: str | None
    contacts: list[int]
    onsets: list[float]
    masks: np.ndarray
    sync: Sync


def read(frames: np.ndarray, audio: np.ndarray, sample_rate: int, fps: float) -> Reading:
    """Measure a clip: uint8 frames ``[F, H, W, 3]``, audio ``[channels, samples]`` (or ``[samples]``)."""
    masks = object_masks(frames)
    tr = track(masks)
    how = motion(tr)
    contacts = video_contacts(tr, how)
    onsets = click_onsets(audio, sample_rate)
    return Reading(dominant_colour(frames, masks), how, contacts, onsets, masks, sync(contacts, onsets, fps))


def unmarked(height: int, width: int) -> np.ndarray:
    """bool ``[H, W]``: the pixels Kino's visible watermark leaves alone (a comparison with an unmarked image
    skips the badge, which every Kino frame carries on purpose)."""
    keep = np.ones((height, width), bool)
    keep[badge_region(height, width)] = False
    return keep


def read_mp4(path: str | Path) -> tuple[np.ndarray, np.ndarray, int, float]:
    """(uint8 frames [F, H, W, 3], float audio [channels, samples], sample rate, fps) of an MP4."""
    with av.open(str(path)) as c:
        fps = float(c.streams.video[0].average_rate)
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    with av.open(str(path)) as c:
        rate = c.streams.audio[0].rate
        audio = np.concatenate([f.to_ndarray() for f in c.decode(audio=0)], axis=1)
    return frames, audio, rate, fps
