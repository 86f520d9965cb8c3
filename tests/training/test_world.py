"""The synthetic world's ground truth: what a clip's caption, masks and contact frames say is what its pixels and
samples hold (training/world.py)."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

from training.world import (
    BOUNCE_PERIOD,
    COLOURS,
    FLOOR_TOP,
    GEOMETRY,
    HUM_HZ,
    WALL,
    PromptClass,
    click_waveform,
    dataset,
    prompt_classes,
    render,
    sample_scene,
    scenes,
)

G = GEOMETRY


@pytest.fixture(scope="module")
def clips():
    return dataset(96, seed=7)  # every prompt class twice


def test_a_dataset_is_a_function_of_its_seed():
    a, b, c = dataset(6, 3), dataset(6, 3), dataset(6, 4)
    assert all(np.array_equal(x.video, y.video) and np.array_equal(x.audio, y.audio) for x, y in zip(a, b, strict=True))
    assert any(not np.array_equal(x.video, y.video) for x, y in zip(a, c, strict=True))


def test_every_prompt_class_is_rendered_equally_often():
    counts = Counter(s.cls for s in scenes(2 * 48, seed=1))
    assert len(prompt_classes()) == 48 and len(counts) == 48 and set(counts.values()) == {2}


def test_captions_parse_back_to_their_class_and_free_text_reads_what_it_names():
    for cls in prompt_classes():
        assert PromptClass.parse(cls.caption) == cls
    assert PromptClass.parse("A BLUE square sliding left") == PromptClass("blue", "square", "sliding left", None)
    assert PromptClass.parse("a red or green thing").colour is None  # two colours: not one


def test_clip_shapes_and_ranges(clips):
    c = clips[0]
    assert c.video.shape == (G.frames, G.height, G.width, 3) and c.video.dtype == np.uint8
    assert c.audio.shape == (2, G.samples) and c.audio.dtype == np.float32 and np.abs(c.audio).max() <= 1.0
    assert c.masks.shape == (G.frames, G.height, G.width)


def test_the_object_has_its_colour_and_the_rest_is_grey(clips):
    for c in clips:
        inside = c.video[c.masks].astype(int)
        target = np.array(COLOURS[c.scene.cls.colour])
        assert np.abs(np.median(inside, axis=0) - target).max() <= 2, c.caption
        outside = c.video[~c.masks].astype(int)
        blended = _edge(c.masks)  # anti-aliased rim pixels are a mix
        chroma = (outside.max(-1) - outside.min(-1))[~blended[~c.masks]]
        assert chroma.max() < 15, c.caption


def _edge(masks: np.ndarray) -> np.ndarray:
    """The masks grown by one pixel in every direction (diagonals too)."""
    grown = masks.copy()
    for dy in (-1, 0, 1):
        for dx in (-1, 0, 1):
            grown |= np.roll(masks, (dy, dx), axis=(1, 2))
    return grown


def test_contacts_are_the_frames_the_object_touches_the_floor_or_the_wall(clips):
    seen = Counter()
    for c in clips:
        motion = c.scene.cls.motion
        rows = [np.nonzero(m.any(axis=1))[0] for m in c.masks]
        cols = [np.nonzero(m.any(axis=0))[0] for m in c.masks]
        assert c.contact_frames, c.caption  # every clip has a visible contact
        if motion == "bouncing":
            touching = [t for t in range(G.frames) if rows[t].max() == FLOOR_TOP - 1]
            assert touching == list(c.contact_frames), c.caption
            assert np.diff(c.contact_frames).tolist() == [BOUNCE_PERIOD] * (len(c.contact_frames) - 1)
            assert len({int(np.mean(col)) for col in cols}) <= 1  # bounces in place
        else:
            at_wall = [t for t in range(G.frames)
                       if (cols[t].min() == WALL if motion == "sliding left" else cols[t].max() == G.width - WALL - 1)]
            assert at_wall == list(range(c.contact_frames[0], G.frames)), c.caption  # arrives, then rests there
            x = [np.mean(col) for col in cols[: c.contact_frames[0] + 1]]
            steps = np.diff(x)
            assert (steps < 0).all() if motion == "sliding left" else (steps > 0).all(), c.caption
        seen[motion] += 1
    assert set(seen) == {"bouncing", "sliding left", "sliding right"}


def test_a_click_starts_at_every_contact_frame_and_nowhere_else(clips):
    click = click_waveform(G.sample_rate)
    for c in clips[:24]:
        mono = c.audio[0].astype(np.float64)
        hum_only = mono.copy()
        for frame in c.contact_frames:
            start = round(frame / G.fps * G.sample_rate)
            n = min(len(click), len(mono) - start)
            hum_only[start:start + n] -= click[:n]
        loud = np.nonzero(np.abs(mono - hum_only) > 0.05)[0]
        starts = sorted({round(f / G.fps * G.sample_rate) for f in c.contact_frames})
        assert loud.min() >= starts[0] and all(np.abs(loud - s).min() < len(click) for s in starts), c.caption
        assert np.abs(hum_only).max() < 0.1  # the rest is the quiet hum


def test_the_hum_pitch_says_the_colour():
    rng = np.random.default_rng(0)
    for colour, hz in HUM_HZ.items():
        clip = render(sample_scene(PromptClass(colour, "ball", "bouncing", "dark"), rng))
        mono = clip.audio[0].astype(np.float64)
        mono[np.abs(mono) > 0.1] = 0  # drop the clicks
        spectrum = np.abs(np.fft.rfft(mono * np.hanning(len(mono))))
        peak = np.fft.rfftfreq(len(mono), 1 / G.sample_rate)[spectrum.argmax()]
        assert abs(peak - hz) < 5, (colour, peak)
    assert len(set(HUM_HZ.values())) == len(COLOURS)
