"""The truth measurements (training/truth.py) on clips whose truth is known: the world's own, as rendered and
through a real MP4 (H.264 + AAC), and the same clips altered so that each measure must say no."""

from __future__ import annotations

from fractions import Fraction

import numpy as np
import pytest

from engines.mp4 import Waveform, write_mp4
from engines.watermark import stamp
from training import truth
from training.world import COLOURS, GEOMETRY, PromptClass, dataset, render, sample_scene

G = GEOMETRY


@pytest.fixture(scope="module")
def clips():
    return dataset(96, seed=11)  # every prompt class twice


def _read(clip, audio=None, video=None):
    return truth.read(clip.video if video is None else video, clip.audio if audio is None else audio,
                      G.sample_rate, G.fps)


def test_the_worlds_clips_read_as_their_captions_say(clips):
    for c in clips:
        seen = _read(c)
        assert seen.colour == c.scene.cls.colour, c.caption
        assert seen.motion == c.scene.cls.motion, c.caption
        assert seen.contacts == list(c.contact_frames), c.caption
        assert seen.sync.in_sync == seen.sync.contacts > 0, (c.caption, seen.sync)
        assert len(seen.onsets) == len(c.contact_frames), c.caption
        assert max(abs(o) for o in seen.sync.offsets) <= 0.002  # a click is heard where it starts
        assert truth.mask_iou(seen.masks[0], c.masks[0]) >= 0.8  # chroma vs half coverage: the rim differs


def test_through_an_mp4_the_readings_hold(tmp_path, clips):
    for i, c in enumerate(clips[:12]):
        path = tmp_path / f"{i}.mp4"
        write_mp4(path, [c.video], width=G.width, height=G.height, fps=Fraction(G.fps), num_frames=G.frames,
                  audio=Waveform(c.audio, G.sample_rate))
        frames, audio, rate, fps = truth.read_mp4(path)
        assert frames.shape == c.video.shape and (rate, fps) == (G.sample_rate, G.fps)
        seen = truth.read(frames, audio, rate, fps)
        assert (seen.colour, seen.motion) == (c.scene.cls.colour, c.scene.cls.motion), c.caption
        assert seen.sync.contacts == len(c.contact_frames) and seen.sync.in_sync == seen.sync.contacts, c.caption
        assert truth.psnr(frames[0], c.video[0]) >= 30


def test_clicks_moved_two_frames_late_are_out_of_sync(clips):
    late = round(2 / G.fps * G.sample_rate)
    for c in clips[:12]:
        audio = np.concatenate([np.zeros((2, late), np.float32), c.audio[:, :-late]], axis=1)
        seen = _read(c, audio=audio)
        kept = [f for f in c.contact_frames if f + 2 < G.frames]
        assert seen.sync.contacts and seen.sync.in_sync < seen.sync.contacts, c.caption
        assert seen.sync.in_sync == 0 or len(kept) < len(c.contact_frames), c.caption


def test_silence_and_hum_alone_have_no_clicks(clips):
    c = next(c for c in clips if c.scene.cls.motion == "bouncing")
    assert truth.click_onsets(np.zeros((2, G.samples), np.float32), G.sample_rate) == []
    t = np.arange(G.samples) / G.sample_rate
    hum = (0.08 * np.sin(2 * np.pi * 350 * t)).astype(np.float32)
    assert truth.click_onsets(hum, G.sample_rate) == []
    seen = _read(c, audio=np.stack([hum, hum]))
    assert seen.sync.contacts and seen.sync.in_sync == 0 and all(o is None for o in seen.sync.offsets)


def test_another_colour_reads_as_that_colour():
    rng = np.random.default_rng(2)
    scene = sample_scene(PromptClass("red", "square", "sliding left", "light"), rng)
    clip = render(scene)
    for name, rgb in COLOURS.items():
        video = clip.video.copy()
        video[clip.masks] = rgb
        assert _read(clip, video=video).colour == name


def test_time_reversed_and_still_clips_read_another_motion(clips):
    for c in clips[:24]:
        reversed_motion = _read(c, video=c.video[::-1].copy()).motion
        if c.scene.cls.motion == "bouncing":
            assert reversed_motion == "bouncing"
        else:
            assert reversed_motion not in (None, c.scene.cls.motion), c.caption
        still = np.repeat(c.video[:1], G.frames, axis=0)
        seen = _read(c, video=still)
        assert seen.motion is None and seen.contacts == [], c.caption


def test_an_empty_frame_has_no_object_colour_or_motion(clips):
    c = clips[0]
    background = np.repeat(np.median(c.video[0], axis=(0, 1), keepdims=True).astype(np.uint8), G.height, 0)
    empty = np.broadcast_to(background.repeat(G.width, 1)[None], c.video.shape).copy()
    seen = _read(c, video=empty)
    assert (seen.colour, seen.motion, seen.contacts) == (None, None, [])


def test_iou_and_psnr():
    a = np.zeros((8, 8), bool)
    a[2:6, 2:6] = True
    b = np.roll(a, 2, axis=1)
    assert truth.mask_iou(a, a) == 1.0 and truth.mask_iou(a, b) == pytest.approx(8 / 24)
    assert truth.mask_iou(a, np.zeros_like(a)) == 0.0
    img = np.full((4, 4, 3), 100, np.uint8)
    assert truth.psnr(img, img) == float("inf")
    assert truth.psnr(img, img + 1) == pytest.approx(10 * np.log10(255**2))


def test_psnr_outside_the_watermark_badge(clips):
    """Every Kino frame carries the badge on purpose: an image compared with a marked frame of itself is equal
    outside the badge, while the badge alone holds the whole frame's PSNR under 20 dB at 64x64."""
    image = clips[0].video[0]
    marked = stamp(image)
    keep = truth.unmarked(*image.shape[:2])
    assert 0.9 < keep.mean() < 1.0
    assert truth.psnr(marked, image, keep) == float("inf") and truth.psnr(marked, image) < 20
