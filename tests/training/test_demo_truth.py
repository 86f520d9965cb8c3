"""The shipped ``demo`` model makes what it is asked for, through Kino's serving path in this process
(loadtests/bench_truth.py `ServingPath`: job store, dispatcher, local stages with step batching, the renderer that
marks, muxes and signs), measured on the finished MP4s alone (training/truth.py).

A few seeds of a spread of prompt classes, so the bounds are looser than the goals; the figures over 8 seeds of
every class are in docs/benchmarks.md (``python -m loadtests.bench_truth``). The weights shipped today steer the
colour, not yet the motion or the clicks (their video VAE blurs the object, their audio VAE smooths the clicks
away: docs/benchmarks.md), so motion, sync, remix IoU and image-to-video PSNR are measured there and not
asserted here until weights that meet them ship."""

from __future__ import annotations

import numpy as np
import pytest

from engines.config import DEMO_CHECKPOINT_DIR, preset
from engines.staged_pipeline import StagedPipeline
from loadtests.bench_truth import ServingPath, Tally, image_to_video, remix, text_to_video
from training.world import prompt_classes

# Every fifth class: each colour, shape, motion and background at least twice.
CLASSES = prompt_classes()[::5]


@pytest.fixture(scope="module")
def tally(tmp_path_factory):
    assert (DEMO_CHECKPOINT_DIR / "model_index.json").is_file(), "the demo weights ship in engines/weights/demo"
    staged = StagedPipeline(preset("demo"))
    path = ServingPath(staged, tmp_path_factory.mktemp("demo_truth"))
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


def test_the_prompt_steers_the_colour_above_chance(tally):
    """Chance is one in four. The goal is 90% (docs/benchmarks.md: 8 seeds of every class); the weights shipped
    today reach about half, so this holds them to better than chance, not to the goal."""
    assert np.mean(tally.colour) >= 0.4, tally.colour
