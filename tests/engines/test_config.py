"""Model configuration: presets are valid, bad values name their key, configs are frozen."""

import dataclasses

import pytest

from engines.config import Architecture, ConnectorConfig, ModelConfig, checkpoint, from_mapping, preset
from engines.errors import ConfigError


@pytest.mark.parametrize("name", ["tiny", "small"])
def test_presets_are_valid_and_frozen(name):
    cfg = preset(name)
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
        (dict(architecture={"connectors": {"num_attention_heads": 5}}),
         "model.architecture.connectors.num_attention_heads"),
        (dict(architecture={"vocoder": {"upsample_factors": (6, 5, 7)}}),
         "model.architecture.vocoder.upsample_factors"),
        (dict(architecture=None), "model.checkpoint_dir"),
        (dict(architecture={"video_vae": {"spatial_compression": 16}}),
         "model.architecture.video_vae.spatial_compression"),
        (dict(architecture={"video_vae": {"temporal_compression": 4}}),  # 4 only with spatial 8
         "model.architecture.video_vae.temporal_compression"),
    ],
)
def test_bad_values_name_the_key(change, key):
    with pytest.raises(ConfigError) as err:
        preset("tiny", **change)
    assert err.value.key == key
    assert str(err.value).startswith(key)


def test_a_section_built_in_code_is_checked_at_once():
    with pytest.raises(ConfigError) as err:
        Architecture(connectors=ConnectorConfig(num_attention_heads=5))
    assert err.value.key == "model.architecture.connectors.num_attention_heads"


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


def test_from_mapping_reads_the_enhancer_and_tensorrt_sections():
    cfg = from_mapping({"preset": "tiny", "dit_backend": "tensorrt",
                        "enhancer": {"enabled": True, "backend": "vllm", "url": "http://vllm:8000/v1",
                                     "model": "google/gemma-3-4b-it", "max_new_tokens": 256},
                        "tensorrt": {"engine_cache_dir": "/cache/engines", "profiles": [[768, 512, 5], [1280, 704, 5]],
                                     "max_rows": 8}})
    assert cfg.dit_backend == "tensorrt"
    assert cfg.enhancer.enabled and cfg.enhancer.backend == "vllm" and cfg.enhancer.max_new_tokens == 256
    assert cfg.tensorrt.profiles == ((768, 512, 5), (1280, 704, 5))
    assert str(cfg.tensorrt.engine_cache_dir) == "/cache/engines"
    assert preset("tiny").enhancer.enabled is False  # off by default


@pytest.mark.parametrize("section, match", [
    ({"enhancer": {"enabled": True, "backend": "vllm"}}, "model.enhancer.url"),
    ({"enhancer": {"backend": "openai"}}, "model.enhancer.backend"),
    ({"enhancer": {"max_new_tokens": 0}}, "model.enhancer.max_new_tokens"),
    ({"enhancer": {"colour": 1}}, "model.enhancer.colour"),
    ({"enhancer": "on"}, "model.enhancer: must be a mapping"),
    ({"tensorrt": {"profiles": []}}, "model.tensorrt.profiles"),
    ({"tensorrt": {"max_rows": 0}}, "model.tensorrt.max_rows"),
    ({"dit_backend": "onnx"}, "model.dit_backend"),
])
def test_bad_enhancer_and_tensorrt_sections_name_the_key(section, match):
    with pytest.raises(ConfigError, match=match):
        from_mapping({"preset": "tiny", **section})
