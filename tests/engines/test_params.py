"""GenerationParams.validated: one rule per test row, each error names field, value and range."""

from fractions import Fraction

import pytest

from engines.errors import InvalidParameter
from engines.params import GenerationRequest, model_frames_for, parse_fps


def _params(**kw):
    return GenerationRequest(**{"prompt": "a cat", **kw})


@pytest.mark.parametrize(
    "kw, field, allowed",
    [
        (dict(width=100), "width", "multiple of 32"),
        (dict(width=32), "width", "[64, 1920]"),
        (dict(width=1952), "width", "[64, 1920]"),
        (dict(height=65), "height", "multiple of 32"),
        (dict(height=0), "height", "[64, 1920]"),
        (dict(height=-64), "height", "[64, 1920]"),
        (dict(width=1920, height=1920), "size", "at most 2088960 pixels"),
        (dict(fps=Fraction(12)), "fps", "one of 24000/1001, 24, 25, 30000/1001, 30"),
        (dict(fps=60), "fps", "one of"),
        (dict(seconds=0.1), "seconds", "[0.5, 20]"),
        (dict(seconds=20.5), "seconds", "[0.5, 20]"),
        (dict(seconds=float("nan")), "seconds", "[0.5, 20]"),
        (dict(seed=-1), "seed", "[0, 9223372036854775807]"),
        (dict(seed=2**63), "seed", "[0, 9223372036854775807]"),
        (dict(seed=True), "seed", "an integer"),
        (dict(steps=0), "steps", "[1, 100]"),
        (dict(steps=101), "steps", "[1, 100]"),
        (dict(steps=2.5), "steps", "an integer"),
        (dict(guidance_scale=0.5), "guidance_scale", "[1, 20]"),
        (dict(guidance_scale=21.0), "guidance_scale", "[1, 20]"),
        (dict(audio_guidance_scale=float("inf")), "audio_guidance_scale", "[1, 20]"),
        (dict(guidance_rescale=-0.1), "guidance_rescale", "[0, 1]"),
        (dict(audio_guidance_rescale=1.5), "audio_guidance_rescale", "[0, 1]"),
        (dict(prompt=""), "prompt", "not blank"),
        (dict(prompt="   "), "prompt", "not blank"),
        (dict(prompt="x" * 32001), "prompt", "at most 32000 characters; this model reads its first 64 tokens"),
        (dict(prompt=123), "prompt", "a string"),
        (dict(negative_prompt="y" * 32001), "negative_prompt", "at most 32000 characters"),
        (dict(enhance_prompt=True), "enhance_prompt", "this model has no prompt enhancer"),
        (dict(enhance_prompt="yes"), "enhance_prompt", "true or false"),
    ],
)
def test_each_rule_names_field_value_and_range(tiny_config, kw, field, allowed):
    with pytest.raises(InvalidParameter) as err:
        _params(**kw).validated(tiny_config)
    assert err.value.field == field
    assert allowed in err.value.allowed
    message = str(err.value)
    assert message.startswith(f"{field}=")
    assert allowed in message


def test_defaults_come_from_the_model_config(tiny_config):
    p = _params().validated(tiny_config)
    d = tiny_config.defaults
    assert (p.width, p.height, p.steps, p.fps) == (d.width, d.height, d.steps, d.fps)
    assert p.guidance_scale == d.guidance_scale and p.negative_prompt == d.negative_prompt
    assert 0 <= p.seed < 2**31  # a random seed is drawn and recorded


def test_explicit_values_survive_validation(tiny_config):
    p = _params(width=128, height=96, seconds=2.0, fps=25, seed=7, steps=3).validated(tiny_config)
    assert (p.width, p.height, p.seconds, p.fps, p.seed, p.steps) == (128, 96, 2.0, Fraction(25), 7, 3)


@pytest.mark.parametrize(
    "seconds, fps, output_frames, model_frames",
    [
        (1.0, Fraction(24), 24, 25),
        (17 / 24, Fraction(24), 17, 17),
        (4.0, Fraction(30000, 1001), 120, 121),
        (20.0, Fraction(24), 480, 481),
        (0.5, Fraction(25), 12, 17),
    ],
)
def test_duration_and_fps_give_8k_plus_1_model_frames(tiny_config, seconds, fps, output_frames, model_frames):
    p = _params(seconds=seconds, fps=fps).validated(tiny_config)
    assert p.output_frames == output_frames
    assert p.num_frames == model_frames
    assert (p.num_frames - 1) % 8 == 0 and p.num_frames >= p.output_frames


def test_model_frames_is_the_smallest_cover():
    for n in range(1, 200):
        m = model_frames_for(n)
        assert (m - 1) % 8 == 0 and m >= n and m - 8 < n


def test_ntsc_rates_parse_exactly():
    assert parse_fps(29.97) == Fraction(30000, 1001)
    assert parse_fps("24000/1001") == Fraction(24000, 1001)
    assert parse_fps(23.976) == Fraction(24000, 1001)
    assert parse_fps(25) == Fraction(25)


def test_params_round_trip_through_json(tiny_config):
    import json

    from engines.params import params_from_dict, params_to_dict

    p = _params(fps=Fraction(30000, 1001), seed=3).validated(tiny_config)
    assert params_from_dict(json.loads(json.dumps(params_to_dict(p)))) == p


def test_enhance_prompt_is_allowed_when_the_model_has_an_enhancer(tiny_config):
    from engines.config import EnhancerConfig

    cfg = tiny_config.replace(enhancer=EnhancerConfig(enabled=True))
    assert _params(enhance_prompt=True).validated(cfg).enhance_prompt is True
    assert _params().validated(cfg).enhance_prompt is False  # opt-in per request


def test_the_frames_generated_follow_the_video_vaes_temporal_compression(tiny_config):
    """tk+1 frames, t the VAE's own compression: LTX-2's 8 (tiny), 4 (demo); an old record keeps 8k+1."""
    from fractions import Fraction

    from engines.config import preset
    from engines.params import params_from_dict, params_to_dict

    asked = GenerationRequest(prompt="a ball", seconds=0.5, fps=Fraction(24))
    eight, four = asked.validated(tiny_config), asked.validated(preset("demo"))
    assert (eight.output_frames, eight.num_frames, four.num_frames) == (12, 17, 13)
    assert params_from_dict(params_to_dict(four)) == four
    stored = params_to_dict(four)
    del stored["num_frames"]  # a job recorded before the field existed was generated with LTX-2's layout
    assert params_from_dict(stored).num_frames == 17


def test_a_delivered_size_is_a_centre_crop_or_a_scale_of_the_generated_one(tiny_config):
    import numpy as np

    from engines.decoder import fit_frames

    crop = GenerationRequest(prompt="x", width=736, height=1280, output_width=720, output_height=1280)
    p = crop.validated(tiny_config)
    assert (p.size, p.delivered_size, p.fit) == ("736x1280", "720x1280", "crop")
    scaled = GenerationRequest(prompt="x", width=64, height=64, output_width=32, output_height=48)
    scaled = scaled.validated(tiny_config)
    assert scaled.fit == "scale"
    assert GenerationRequest(prompt="x", width=64, height=64).validated(tiny_config).fit is None
    frames = np.zeros((2, 1280, 736, 3), np.uint8)
    frames[:, :, 8:728] = 200  # the centre 720 columns
    out = fit_frames(frames, 720, 1280)
    assert out.shape == (2, 1280, 720, 3) and (out == 200).all()  # cropped evenly from both sides
    assert fit_frames(np.zeros((1, 64, 64, 3), np.uint8), 32, 48).shape == (1, 48, 32, 3)
    with pytest.raises(InvalidParameter, match="even sides"):
        GenerationRequest(prompt="x", width=64, height=64, output_width=33, output_height=48).validated(tiny_config)


@pytest.fixture
def lora_config(tiny_config, tmp_path):
    """The tiny model with an adapter directory holding `a` (a file) and `b` (a diffusers-style folder).
    Names are checked against the directory only: the files' contents are read by the Denoiser."""
    from engines.config import LoraConfig

    (tmp_path / "a.safetensors").write_bytes(b"")
    (tmp_path / "b").mkdir()
    (tmp_path / "b" / "pytorch_lora_weights.safetensors").write_bytes(b"")
    return tiny_config.replace(lora=LoraConfig(dir=tmp_path, max_loaded=4, max_per_request=2,
                                               scale_range=(-1.0, 1.5)))


def test_adapters_are_validated_and_kept_as_name_scale_pairs(lora_config):
    p = _params(loras=[["a", 1], ("b", -0.5)]).validated(lora_config)
    assert p.loras == (("a", 1.0), ("b", -0.5))
    assert p.cache == lora_config.step_cache.default  # the configured default, as without adapters
    assert _params().validated(lora_config).loras == ()


@pytest.mark.parametrize("loras, field, allowed", [
    ([("a", 1.0), ("b", 1.0), ("a", 0.5)], "loras", "at most 2 adapters"),
    ([("a", 1.0), ("a", 0.5)], "loras[1].name", "each adapter at most once"),
    ([("b", 1.6)], "loras[0].scale", "a number in [-1, 1.5]"),
    ([("b", float("nan"))], "loras[0].scale", "a number in [-1, 1.5]"),
    ([("a", 1.0), ("zz", 1.0)], "loras[1].name", "one of a, b (the adapters in"),
    ([("../a", 1.0)], "loras[0].name", "one of a, b"),
    ([("a",)], "loras", "a list of (name, scale) pairs"),
])
def test_each_adapter_rule_names_the_field_and_what_is_allowed(lora_config, loras, field, allowed):
    with pytest.raises(InvalidParameter) as err:
        _params(loras=loras).validated(lora_config)
    assert err.value.field == field
    assert allowed in err.value.allowed


def test_an_adapter_on_a_model_without_an_adapter_directory_says_so(tiny_config):
    with pytest.raises(InvalidParameter, match=r"loras\[0\].name='a' is not allowed: none: .*model.lora.dir"):
        _params(loras=[("a", 1.0)]).validated(tiny_config)


def test_adapters_take_the_step_cache_like_any_request(lora_config):
    """The step cache's sub-batches add their rows' adapters (engines/lora/layers.py `LoraRows.select`): a request
    with adapters may name any cache mode, and gets the configured default like any other."""
    from engines.config import StepCacheConfig

    for mode in ("off", "balanced", "fast"):
        assert _params(loras=[("a", 1.0)], cache=mode).validated(lora_config).cache == mode
    fast_default = lora_config.replace(step_cache=StepCacheConfig(default="fast"))
    assert _params(loras=[("a", 1.0)]).validated(fast_default).cache == "fast"


def test_adapters_round_trip_through_json_and_change_the_checkpoint_digest(lora_config):
    import json

    from engines.denoise_checkpoint import request_digest
    from engines.params import params_from_dict, params_to_dict

    p = _params(seed=3, loras=[("a", 0.8), ("b", 1.0)]).validated(lora_config)
    back = params_from_dict(json.loads(json.dumps(params_to_dict(p))))
    assert back == p and back.loras == (("a", 0.8), ("b", 1.0))
    assert back.validated(lora_config) == p  # a remix re-validates its recorded adapters
    plain = _params(seed=3).validated(lora_config)
    other_scale = _params(seed=3, loras=[("a", 0.7), ("b", 1.0)]).validated(lora_config)
    assert len({request_digest(plain), request_digest(p), request_digest(other_scale)}) == 3
    old_row = {k: v for k, v in params_to_dict(plain).items() if k != "loras"}  # a job recorded before adapters
    assert params_from_dict(old_row) == plain
