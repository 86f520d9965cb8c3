"""The checkpoint preset: a diffusers directory written by save_pretrained loads back bit-identically."""

import numpy as np
import pytest
import torch

from engines.config import checkpoint
from engines.errors import CheckpointError
from engines.model_loader import ALL_PARTS, load_components, save_checkpoint
from engines.params import GenerationRequest
from engines.staged_pipeline import StagedPipeline


@pytest.fixture(scope="module")
def ckpt_dir(staged, tmp_path_factory):
    return save_checkpoint(staged.components, tmp_path_factory.mktemp("ckpt") / "ltx2-tiny")


def test_checkpoint_weights_load_back_bit_identical(staged, ckpt_dir):
    cfg = checkpoint(ckpt_dir, num_threads=1)
    loaded = load_components(cfg, ALL_PARTS)
    for name in ("text_encoder", "connectors", "transformer", "vae", "audio_vae", "vocoder"):
        a, b = getattr(staged.components, name).state_dict(), getattr(loaded, name).state_dict()
        assert a.keys() == b.keys(), name
        for k in a:
            assert torch.equal(a[k], b[k]), f"{name}.{k}"
    assert loaded.tokenizer("a cat").input_ids == staged.components.tokenizer("a cat").input_ids
    public = lambda c: {k: v for k, v in c.items() if not k.startswith("_")}  # noqa: E731
    assert public(loaded.scheduler.config) == public(staged.components.scheduler.config)


def test_checkpoint_generates_the_same_latents(staged, ckpt_dir, tiny_config):
    cfg = checkpoint(ckpt_dir, num_threads=1)
    from_ckpt = StagedPipeline(cfg)
    p = GenerationRequest(prompt="a lighthouse", seed=4, steps=3).validated(tiny_config)
    [a] = staged.denoise([("a", p)])
    [b] = from_ckpt.denoise([("a", p.validated(cfg))])
    assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio)


def test_checkpoint_missing_a_component_is_named(ckpt_dir, tmp_path):
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(ckpt_dir, broken)
    shutil.rmtree(broken / "vocoder")
    with pytest.raises(CheckpointError, match="no vocoder/ component directory"):
        load_components(checkpoint(broken), ["vocoder"])


def test_prompt_length_comes_from_the_checkpoint_tokenizer(ckpt_dir, tmp_path, tiny_config):
    import json
    import shutil

    assert checkpoint(ckpt_dir).tokenizer_max_length == tiny_config.tokenizer_max_length  # as saved
    real = tmp_path / "real"
    shutil.copytree(ckpt_dir, real)
    conf = real / "tokenizer" / "tokenizer_config.json"
    data = json.loads(conf.read_text())
    data["model_max_length"] = 1000000000000000019884624838656  # what Gemma's tokenizer ships with
    conf.write_text(json.dumps(data))
    assert checkpoint(real).tokenizer_max_length == 1024  # LTX2Pipeline's max_sequence_length
