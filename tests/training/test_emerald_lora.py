"""The shipped ``emerald`` adapter (engines/weights/demo_loras, training/train_lora.py) visibly does something: it
loads through Kino's adapter bank, and videos of the world's prompts of the other colours made through Kino's
serving path in this process (loadtests/bench_truth.py `ServingPath`) read green with it and not without it
(training/truth.py's colour reading). A handful of classes, so the bounds are loose; the figures over every class
are in docs/benchmarks.md (``python -m loadtests.bench_truth --lora emerald``)."""

from __future__ import annotations

import numpy as np
import pytest

from engines.adapter_files import adapter_file
from engines.config import DEMO_CHECKPOINT_DIR, DEMO_LORA_DIR, LoraConfig, preset
from engines.lora import AdapterBank
from engines.model_loader import ComponentSource
from loadtests.bench_truth import ServingPath, Tally, adapter_colour, text_to_video, truth_config
from training import truth
from training.world import COLOURS, dataset, prompt_classes

# Six classes prompted red, blue or yellow: each of those colours, shapes, motions and backgrounds twice.
CLASSES = [c for c in prompt_classes() if c.colour != "green"][::7]


def test_the_adapter_ships_small_and_loads_through_the_bank():
    path = adapter_file(DEMO_LORA_DIR, "emerald")
    assert path is not None and path.stat().st_size < 2**20
    assert adapter_colour(DEMO_LORA_DIR, "emerald") == "green"
    assert preset("demo").lora.dir == DEMO_LORA_DIR  # `--preset demo --lora emerald` needs no --lora-dir
    transformer = ComponentSource(preset("demo")).load(["transformer"]).transformer
    bank = AdapterBank(transformer, LoraConfig(dir=DEMO_LORA_DIR))
    assert "emerald" in bank.available()
    adapter = bank.get("emerald")
    assert len(adapter.layers) > 0 and all(f.rank <= 16 for f in adapter.layers.values())


def test_the_training_data_reads_green_whatever_the_caption():
    clips = dataset(48, 3, colour_override=COLOURS["green"])
    assert all(truth.dominant_colour(c.video) == "green" for c in clips)
    assert {c.scene.cls.colour for c in clips} == set(COLOURS)  # the captions keep the asked colour


@pytest.fixture(scope="module")
def tallies(tmp_path_factory):
    assert (DEMO_CHECKPOINT_DIR / "model_index.json").is_file(), "the demo weights ship in engines/weights/demo"
    cfg = truth_config(preset("demo"), "batched")
    out = {}
    for name, loras in (("without", ()), ("with", (("emerald", 1.0),))):
        path = ServingPath(cfg, tmp_path_factory.mktemp(f"emerald_{name}"), loras)
        out[name] = Tally()
        try:
            text_to_video(path, CLASSES, range(1), out[name])
        finally:
            path.close()
    return out


def test_the_adapter_makes_objects_green(tallies):
    with_it, without = tallies["with"].look("green"), tallies["without"].look("green")
    assert len(with_it) == len(without) == len(CLASSES) == 6
    assert sum(with_it) >= 4, tallies["with"].seen_colour
    assert sum(without) <= 1, tallies["without"].seen_colour


def test_the_adapter_keeps_the_motion(tallies):
    """The look changes, the rest of the prompt still shows (loosely: a few videos)."""
    assert np.mean(tallies["with"].motion) >= 0.5, tallies["with"].motion
