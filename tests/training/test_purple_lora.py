"""The shipped ``purple`` adapter (engines/weights/demo_loras, training/train_lora.py) visibly does something: it
loads through Kino's adapter bank, and videos of the world's prompts made through Kino's serving path in this
process (loadtests/bench_truth.py `ServingPath`) read purple with it and not without it (training/truth.py
`is_purple`). A handful of classes, so the bounds are loose; the figures over every class are in
docs/benchmarks.md (``python -m loadtests.bench_truth --lora purple``)."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from engines.adapter_files import adapter_file
from engines.config import DEMO_CHECKPOINT_DIR, DEMO_LORA_DIR, LoraConfig, preset
from engines.lora import AdapterBank
from engines.model_loader import ComponentSource
from loadtests.bench_truth import ServingPath, Tally, text_to_video, truth_config
from training import truth
from training.world import PURPLE, dataset, prompt_classes

# No adapter ships yet (the demo's video VAE decodes no purple the DiT learns to reach; see training/train_lora.py):
# the tests that need it skip until `python -m training.train_lora` writes one that passes them.
needs_adapter = pytest.mark.skipif(adapter_file(DEMO_LORA_DIR, "purple") is None,
                                reason="no purple adapter in engines/weights/demo_loras yet")

# Every eighth class: each colour, shape, motion and background at least once.
CLASSES = prompt_classes()[::8]


def demo_with_loras():
    assert (DEMO_CHECKPOINT_DIR / "model_index.json").is_file(), "the demo weights ship in engines/weights/demo"
    config = preset("demo")
    return config.replace(lora=dataclasses.replace(config.lora, dir=DEMO_LORA_DIR))


@needs_adapter
def test_the_adapter_ships_small_and_loads_through_the_bank():
    path = adapter_file(DEMO_LORA_DIR, "purple")
    assert path is not None and path.stat().st_size < 2**20
    transformer = ComponentSource(preset("demo")).load(["transformer"]).transformer
    bank = AdapterBank(transformer, LoraConfig(dir=DEMO_LORA_DIR))
    assert "purple" in bank.available()
    adapter = bank.get("purple")
    assert len(adapter.layers) > 0 and all(f.rank <= 16 for f in adapter.layers.values())


def test_the_truth_reads_purple_objects_and_only_them():
    assert not any(truth.is_purple(c.video) for c in dataset(48, 3))
    assert all(truth.is_purple(c.video) for c in dataset(48, 3, colour_override=PURPLE))


@pytest.fixture(scope="module")
def tallies(tmp_path_factory):
    cfg = truth_config(demo_with_loras(), "batched")
    out = {}
    for name, loras in (("without", ()), ("with", (("purple", 1.0),))):
        path = ServingPath(cfg, tmp_path_factory.mktemp(f"purple_{name}"), loras)
        out[name] = Tally()
        try:
            text_to_video(path, CLASSES, range(1), out[name])
        finally:
            path.close()
    return out


@needs_adapter
def test_the_adapter_makes_objects_purple(tallies):
    with_it, without = tallies["with"], tallies["without"]
    assert len(with_it.purple) == len(without.purple) == len(CLASSES)
    assert sum(with_it.purple) >= 4, with_it.purple
    assert sum(without.purple) <= 1, without.purple


@needs_adapter
def test_the_adapter_keeps_the_motion(tallies):
    """The look changes, the rest of the prompt still shows (loosely: a few videos)."""
    assert np.mean(tallies["with"].motion) >= 0.5, tallies["with"].motion
