"""Model configuration: presets are valid, bad values name their key, configs are frozen."""

import dataclasses

import pytest

from engines.config import Architecture, ConnectorConfig, ModelConfig, VocoderConfig, checkpoint, from_mapping, preset
from engines.errors import ConfigError


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_presets_are_valid_and_frozen(name):
    cfg = preset(name)
    cfg.validate()
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.dtype = "bfloat16"  # type: ignore[misc]
    assert cfg.model_id == f"ltx2-{name}"


@pytest.mark.parametrize(
    "change, key",
    [
        (dict(dtype="float64"), "model.dtype"),
        (dict(device="tpu"), "model.device"),
        (dict(dit_backend="warp"), "model.dit_backend"),
        (dict(num_threads=0), "model.num_threads"),
        (dict(tokenizer_max_length=4), "model.tokenizer_max_length"),
        (dict(architecture=Architecture(connectors=ConnectorConfig(num_attention_heads=5))),
         "model.architecture.connectors.num_attention_heads"),
        (dict(architecture=Architecture(vocoder=VocoderConfig(upsample_factors=(6, 5, 7)))),
         "model.architecture.vocoder.upsample_factors"),
        (dict(architecture=None), "model.checkpoint_dir"),
    ],
)
def test_bad_values_name_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        preset("tiny", **change)
    assert err.value.key == key
    assert str(err.value).startswith(key)


def test_unknown_preset_and_keys(tmp_path):
    with pytest.raises(ConfigError, match="model.preset"):
        preset("huge")
    with pytest.raises(ConfigError, match="model.colour"):
        from_mapping({"preset": "tiny", "colour": "red"})
    with pytest.raises(ConfigError, match="model.checkpoint_dir"):
        from_mapping({"preset": "checkpoint"})
    with pytest.raises(ConfigError, match="no model_index.json"):
        checkpoint(tmp_path)


def test_from_mapping_overrides_runtime_keys():
    cfg = from_mapping({"preset": "small", "dtype": "bfloat16", "num_threads": 2})
    assert cfg.name == "small" and cfg.dtype == "bfloat16" and cfg.num_threads == 2
    assert isinstance(cfg, ModelConfig)
