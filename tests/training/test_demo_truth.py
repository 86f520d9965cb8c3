"""The shipped ``demo`` model makes what it is asked for, through Kino's serving path in this process
(loadtests/bench_truth.py `ServingPath`: job store, dispatcher, local stages with step batching, the renderer that
marks, muxes and signs), measured on the finished MP4s alone (training/truth.py).

A few seeds of a spread of prompt classes, so the bounds are looser than the goals; the figures over 8 seeds of
every class are in docs/benchmarks.md (``python -m loadtests.bench_truth``). The weights shipped today steer the
colour and the motion, keep a remix's object and an image's first frame, and click near what they show; sync
misses its goal (docs/benchmarks.md), so its bound here is the floor of what ships, not the goal."""

from __future__ import annotations

import numpy as np
import pytest

from engines.config import DEMO_CHECKPOINT_DIR, preset
from loadtests.bench_truth import TRUTH_PATHS, ServingPath, Tally, image_to_video, remix, text_to_video, truth_config
from training.world import prompt_classes

# Every fifth class: each colour, shape, motion and background at least twice.
CLASSES = prompt_classes()[::5]


@pytest.fixture(scope="module")
def tally(tmp_path_factory):
    assert (DEMO_CHECKPOINT_DIR / "model_index.json").is_file(), "the demo weights ship in engines/weights/demo"
    path = ServingPath(truth_config(preset("demo"), "batched"), tmp_path_factory.mktemp("demo_truth"))
    t = Tally()
    try:
        text_to_video(path, CLASSES, range(2), t)
        remix(path, 4, 0.6, t)
        image_to_video(path, 4, t)
    finally:
        path.close()
    return t


def test_the_spread_covers_the_world():
    for attribute in ("colour", "shape", "motion", "background"):
        assert len({getattr(c, attribute) for c in CLASSES}) == len({getattr(c, attribute) for c in prompt_classes()})


def test_every_job_made_a_measurable_video(tally):
    assert len(tally.colour) == 2 * len(CLASSES) and len(tally.remix_iou) == 4 and len(tally.i2v_psnr) == 4


def test_the_prompt_steers_the_colour(tally):
    """Chance is one in four; the goal is 90%, and 8 seeds of every class read 99.2% (docs/benchmarks.md)."""
    assert np.mean(tally.colour) >= 0.75, tally.colour


def test_the_prompt_steers_the_motion(tally):
    """Bouncing, sliding left or right: chance is one in three (and a still object reads as none); the goal is
    90%, and 8 seeds of every class read 95.8%; the DiT trained half as long read 85.9%, a quarter as long 31.8%."""
    assert np.mean(tally.motion) >= 0.7, tally.motion


def test_clicks_come_with_what_the_video_shows(tally):
    """Contacts seen with a click onset within a frame: the goal is 90%, 8 seeds of every class read 61.2% of 441
    contacts (the DiT trained half as long: 47.6% of 378, a quarter as long 15.5% of 168). What this asserts is
    that contacts are seen and clicks land on a good share of them, where random weights show neither."""
    assert tally.clips_with_contacts >= len(tally.colour) // 2 and tally.sync_share >= 0.25, (
        tally.clips_with_contacts, tally.contacts, tally.in_sync)


def test_a_remix_keeps_the_objects_colour_and_place(tally):
    """Goal: mask IoU >= 0.5 with the source; 16 remixes read 0.73 on average, every one kept its colour."""
    assert np.mean(tally.remix_iou) >= 0.5 and np.mean(tally.remix_colour) >= 0.75, (tally.remix_iou,
                                                                                     tally.remix_colour)


def test_image_to_video_keeps_the_first_frame(tally):
    """Goal: PSNR >= 25 dB against the given image (outside the watermark's badge); 16 images read 26.3 dB on
    average. Another world frame on the same floor reads 15-20 dB (on the other floor 3 dB), so 22 dB on 4 images
    still says the frame was kept."""
    assert np.mean(tally.i2v_psnr) >= 22.0, tally.i2v_psnr


# -- the serving paths keep what the exact path makes (issue 29) -----------------------------------------------
PATH_CLASSES = prompt_classes()[::8]  # 6 classes: each motion twice, every colour


def _path_tally(path_name: str, work) -> Tally:
    path = ServingPath(truth_config(preset("demo"), path_name), work)
    t = Tally()
    try:
        text_to_video(path, PATH_CLASSES, range(1), t)
    finally:
        path.close()
    return t


@pytest.fixture(scope="module")
def exact(tmp_path_factory):
    return _path_tally("exact", tmp_path_factory.mktemp("exact"))


@pytest.mark.parametrize("path_name", [p for p in TRUTH_PATHS if p != "exact"])
def test_each_serving_path_makes_what_the_exact_path_makes(path_name, exact, tmp_path):
    """The same prompts and seeds through a batched, cached, int8 or parallel path: the object's colour and path
    read as on the exact path for most videos (the full bench's table, docs/benchmarks.md, has every path within
    a few points of exact over 48 classes x 8 seeds); loose here, over 6 videos, so that it cannot flake."""
    t = _path_tally(path_name, tmp_path)
    assert len(t.colour) == len(PATH_CLASSES)
    assert np.mean(t.colour) >= np.mean(exact.colour) - 0.34, (t.colour, exact.colour)
    assert np.mean(t.motion) >= np.mean(exact.motion) - 0.34, (t.motion, exact.motion)
    assert sum(a == b for a, b in zip(t.colour, exact.colour, strict=True)) >= len(PATH_CLASSES) - 2
    assert t.in_sync >= exact.in_sync - 3, (t.in_sync, t.contacts, exact.in_sync, exact.contacts)  # clicks kept
