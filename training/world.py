"""The demo's synthetic world: one coloured object in a box that bounces or slides, with a click at every contact.

Every clip shows one object (a red, green, blue or yellow ball or square) on a dark or light floor between two
walls, and it either bounces in place or slides left or right until it hits a wall, where it stops. Its sound is a
quiet hum whose pitch says the object's colour, and a short broadband click at the very frame the object touches
the floor or a wall, so audio-visual sync is measurable to the frame. Contacts fall on whole frames (the bounce
period and the slide speed are chosen so), which makes the ground truth exact: the frame where a bouncing object
is lowest, or where a sliding one reaches the wall, is the frame its click starts.

The geometry is the demo model's: 64x64 pixels, 17 frames at 24 fps (one 8k+1 clip: three latent frames of the
LTX-2 video VAE) and 24 kHz stereo audio (the vocoder's output rate). 64x64 rather than 128x128 because the
video VAE's training cost grows with pixels and the whole model trains in under an hour on two shared CPU cores;
the object is still 14 pixels wide, so its colour, shape and direction stay unambiguous.

A clip is a pure function of its `Scene`, and scenes come from a seeded generator, so a dataset is reproducible
from its seed. `Clip` carries the ground truth the truth metrics are checked against: the object's mask per
frame and the contact frames.
"""

from __future__ import annotations

import itertools
import re
from dataclasses import dataclass
from functools import cache

import numpy as np

COLOURS: dict[str, tuple[int, int, int]] = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (40, 80, 230), "yellow": (235, 205, 30)}
# Hum pitches sit on the peaks of distinct bins of the model's 16-bin mel spectrogram (training/mel.py).
HUM_HZ: dict[str, float] = {"red": 190.0, "green": 350.0, "blue": 540.0, "yellow": 700.0}
SHAPES = ("ball", "square")
MOTIONS = ("bouncing", "sliding left", "sliding right")
BACKGROUNDS = ("dark", "light")
# (background, floor and walls) colours per background.
_SURFACES: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "dark": ((24, 26, 34), (72, 72, 82)), "light": ((228, 228, 220), (160, 160, 150))}

WALL = 2  # wall thickness, pixels (left and right edges)
FLOOR_TOP = 54  # first floor row; objects rest with their bottom edge on it
HALF = 7.0  # ball radius / half the square's side, pixels
BOUNCE_PERIOD = 8  # frames between bounces (the video VAE's temporal compression: one bounce per latent frame)
BOUNCE_HEIGHT = 22.0  # pixels the object's bottom rises at the top of a bounce
SLIDE_SPEED = 3.0  # pixels per frame
HUM_LEVEL = 0.08
CLICK_LEVEL = 0.7
CLICK_SECONDS = 0.003


@dataclass(frozen=True)
class Geometry:
    """Size and rates of a clip."""

    width: int = 64
    height: int = 64
    frames: int = 17
    fps: int = 24
    sample_rate: int = 24000

    @property
    def seconds(self) -> float:
        return self.frames / self.fps

    @property
    def samples(self) -> int:
        return round(self.seconds * self.sample_rate)


GEOMETRY = Geometry()


@dataclass(frozen=True)
class PromptClass:
    """What a caption asks for: colour, shape, motion and background (None: the caption does not say)."""

    colour: str | None
    shape: str | None
    motion: str | None
    background: str | None

    @property
    def caption(self) -> str:
        """The world's caption: what the clip shows and sounds like."""
        sound = "a click at every bounce" if self.motion == "bouncing" else "a click when it hits the wall"
        return f"a {self.colour} {self.shape} {self.motion} on a {self.background} floor, {sound}"

    @classmethod
    def parse(cls, text: str) -> PromptClass:
        """The attributes a free-form prompt names, in the world's words."""
        words = text.lower()

        def find(options) -> str | None:
            hits = [o for o in options if re.search(rf"\b{o}\b", words)]
            return hits[0] if len(hits) == 1 else None

        return cls(find(COLOURS), find(SHAPES), find(MOTIONS), find(BACKGROUNDS))


EXAMPLE_PROMPT = PromptClass("green", "ball", "bouncing", "light").caption
"""The prompt `kino demo` and the README's strip use: a ball that bounces and clicks when it lands (over 8 seeds
through the serving path, the bouncing balls' classes read 72 of 82 contacts with a click within a frame; the
previous example, a ball sliding into the wall, 3 of 8: docs/benchmarks.md)."""


def prompt_classes() -> list[PromptClass]:
    """Every combination the world renders (4 colours x 2 shapes x 3 motions x 2 backgrounds = 48)."""
    return [PromptClass(*c) for c in itertools.product(COLOURS, SHAPES, MOTIONS, BACKGROUNDS)]


@dataclass(frozen=True)
class Scene:
    """One clip's content: its prompt class, where the object is and when it first touches something."""

    cls: PromptClass
    x: float  # bouncing: the object's centre column; sliding: its centre column at frame 0
    first_contact: int  # frame of the first contact (bouncing: again every BOUNCE_PERIOD frames)

    @property
    def caption(self) -> str:
        return self.cls.caption

    def contact_frames(self, frames: int) -> tuple[int, ...]:
        if self.cls.motion == "bouncing":
            return tuple(range(self.first_contact, frames, BOUNCE_PERIOD))
        return (self.first_contact,) if self.first_contact < frames else ()

    def centres(self, frames: int, width: int) -> np.ndarray:
        """The object's centre (x, y) per frame, pixels [frames, 2]."""
        t = np.arange(frames, dtype=np.float64)
        rest_y = FLOOR_TOP - HALF
        if self.cls.motion == "bouncing":
            s = (t - self.first_contact) % BOUNCE_PERIOD  # frames since the last contact
            lift = 4 * BOUNCE_HEIGHT * s * (BOUNCE_PERIOD - s) / BOUNCE_PERIOD**2  # a parabola between contacts
            return np.stack([np.full(frames, self.x), rest_y - lift], axis=1)
        to_go = SLIDE_SPEED * np.maximum(self.first_contact - t, 0.0)  # distance to the wall; it stops there
        x = WALL + HALF + to_go if self.cls.motion == "sliding left" else width - WALL - HALF - to_go
        return np.stack([x, np.full(frames, rest_y)], axis=1)


def sample_scene(cls: PromptClass, rng: np.random.Generator, geometry: Geometry = GEOMETRY) -> Scene:
    """A random scene of a class: bounces start at a random column and phase, slides hit the wall at a random
    frame (never the first or last few, so every contact is visible)."""
    if cls.motion == "bouncing":
        x = float(rng.uniform(WALL + HALF + 1, geometry.width - WALL - HALF - 1))
        return Scene(cls, x, int(rng.integers(1, BOUNCE_PERIOD)))
    contact = int(rng.integers(3, geometry.frames - 3))
    x = WALL + HALF + SLIDE_SPEED * contact
    return Scene(cls, x if cls.motion == "sliding left" else geometry.width - x, contact)


def scenes(n: int, seed: int, geometry: Geometry = GEOMETRY) -> list[Scene]:
    """`n` scenes, every prompt class equally often (in a seeded order), each with seeded randomness."""
    rng = np.random.default_rng(seed)
    classes = prompt_classes()
    out: list[Scene] = []
    while len(out) < n:
        for i in rng.permutation(len(classes)):
            out.append(sample_scene(classes[i], rng, geometry))
    return out[:n]


@dataclass(frozen=True)
class Clip:
    """A rendered scene and its ground truth."""

    scene: Scene
    video: np.ndarray  # uint8 [frames, H, W, 3]
    audio: np.ndarray  # float32 [2, samples] in [-1, 1], at geometry.sample_rate
    masks: np.ndarray  # bool [frames, H, W]: the object's pixels
    contact_frames: tuple[int, ...]
    geometry: Geometry = GEOMETRY

    @property
    def caption(self) -> str:
        return self.scene.caption


def render(scene: Scene, geometry: Geometry = GEOMETRY,
           colour_override: tuple[int, int, int] | None = None) -> Clip:
    """Draw the scene (anti-aliased) and synthesise its sound. `colour_override`: draw the object in this RGB
    colour instead of its class's (the caption, the hum and everything else stay the class's)."""
    g = geometry
    centres = scene.centres(g.frames, g.width)
    cover = _coverage(scene.cls.shape, centres, g)  # [F, H, W] in [0, 1]
    back, floor = (np.array(c, np.float64) for c in _SURFACES[scene.cls.background])
    ys, xs = np.mgrid[0:g.height, 0:g.width]
    solid = (ys >= FLOOR_TOP) | (xs < WALL) | (xs >= g.width - WALL)
    stage = np.where(solid[..., None], floor, back)  # [H, W, 3]
    colour = np.array(colour_override or COLOURS[scene.cls.colour], np.float64)
    video = stage[None] * (1 - cover[..., None]) + colour * cover[..., None]
    contacts = scene.contact_frames(g.frames)
    return Clip(scene=scene, video=np.round(video).astype(np.uint8), audio=_sound(scene.cls.colour, contacts, g),
                masks=cover >= 0.5, contact_frames=contacts, geometry=g)


def _coverage(shape: str, centres: np.ndarray, g: Geometry) -> np.ndarray:
    """Fraction of each pixel the object covers (pixel (i, j) spans [j, j+1] x [i, i+1])."""
    cx, cy = centres[:, 0, None, None], centres[:, 1, None, None]
    ys, xs = np.mgrid[0:g.height, 0:g.width].astype(np.float64)
    if shape == "ball":
        dist = np.hypot(xs + 0.5 - cx, ys + 0.5 - cy)
        return np.clip(HALF + 0.5 - dist, 0.0, 1.0)
    over_x = np.clip(np.minimum(xs + 1, cx + HALF) - np.maximum(xs, cx - HALF), 0.0, 1.0)
    over_y = np.clip(np.minimum(ys + 1, cy + HALF) - np.maximum(ys, cy - HALF), 0.0, 1.0)
    return over_x * over_y


@cache
def click_waveform(sample_rate: int) -> np.ndarray:
    """The click: a few milliseconds of seeded white noise with a fast exponential decay (broadband)."""
    n = round(CLICK_SECONDS * sample_rate)
    noise = np.random.default_rng(0).standard_normal(n)
    wave = noise * np.exp(-np.arange(n) / (n / 4))
    return (CLICK_LEVEL * wave / np.abs(wave).max()).astype(np.float32)


def _sound(colour: str, contacts: tuple[int, ...], g: Geometry) -> np.ndarray:
    t = np.arange(g.samples) / g.sample_rate
    f = HUM_HZ[colour]
    wave = HUM_LEVEL * (np.sin(2 * np.pi * f * t) + 0.3 * np.sin(4 * np.pi * f * t)) / 1.3
    click = click_waveform(g.sample_rate)
    for frame in contacts:
        start = round(frame / g.fps * g.sample_rate)
        end = min(g.samples, start + len(click))
        wave[start:end] += click[: end - start]
    mono = np.clip(wave, -1.0, 1.0).astype(np.float32)
    return np.stack([mono, mono])


def dataset(n: int, seed: int, geometry: Geometry = GEOMETRY,
            colour_override: tuple[int, int, int] | None = None) -> list[Clip]:
    """`n` rendered clips (balanced over the prompt classes) from `seed`; with `colour_override` every object is
    drawn in that colour (the captions unchanged: e.g. `COLOURS["green"]`, the emerald adapter's data)."""
    return [render(s, geometry, colour_override) for s in scenes(n, seed, geometry)]
