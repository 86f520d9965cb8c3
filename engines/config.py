"""Typed, frozen, validated model configuration and the built-in presets.

A `ModelConfig` says which weights to run (random weights of a given architecture, or a
local diffusers checkpoint), where (device, dtype, DiT backend, CPU threads), what the model
allows (`ModelLimits`) and what a request gets when it says nothing (`SamplingDefaults`).

Presets:
- ``tiny``: the embedded default. The real LTX-2 classes at toy sizes with seeded random
  weights; a short video takes well under a second on a laptop CPU. Its output is noise.
- ``small``: the same classes, larger, sized so one 256x256, 33-frame video with audio takes a
  few seconds on a 2-core CPU; the benchmark preset.
- ``checkpoint``: a local directory holding a diffusers LTX-2 checkpoint (``model_index.json``
  plus one subfolder per component), loaded with ``local_files_only``.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path
from typing import Any, Literal

from engines.errors import ConfigError

Dtype = Literal["float32", "bfloat16", "float16"]
DiTBackendName = Literal["auto", "eager", "compile", "tensorrt"]
DTYPES: tuple[str, ...] = ("float32", "bfloat16", "float16")
DIT_BACKENDS: tuple[str, ...] = ("auto", "eager", "compile", "tensorrt")

# Frame rates a request may ask for. NTSC rates are exact fractions, never truncated floats.
STANDARD_FPS: tuple[Fraction, ...] = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
)


def _require(cond: bool, key: str, message: str) -> None:
    if not cond:
        raise ConfigError(key, message)


@dataclass(frozen=True)
class TextEncoderConfig:
    """Gemma-3 text tower (transformers) whose stacked hidden states condition the DiT."""

    vocab_size: int = 0  # 0: taken from the tokenizer
    hidden_size: int = 32
    intermediate_size: int = 64
    num_layers: int = 2
    num_attention_heads: int = 2
    num_key_value_heads: int = 1
    head_dim: int = 16

    def validate(self, key: str) -> None:
        for name in ("hidden_size", "intermediate_size", "num_layers", "num_attention_heads",
                     "num_key_value_heads", "head_dim"):
            _require(getattr(self, name) > 0, f"{key}.{name}", "must be > 0")
        _require(self.num_attention_heads % self.num_key_value_heads == 0,
                 f"{key}.num_key_value_heads", "must divide num_attention_heads")


@dataclass(frozen=True)
class ConnectorConfig:
    """LTX-2 text connectors: map stacked text hidden states to video and audio contexts."""

    num_attention_heads: int = 4
    num_layers: int = 1
    num_learnable_registers: int | None = None

    def validate(self, key: str, text_hidden: int) -> None:
        _require(self.num_attention_heads > 0, f"{key}.num_attention_heads", "must be > 0")
        _require(text_hidden % self.num_attention_heads == 0, f"{key}.num_attention_heads",
                 f"must divide the text hidden size {text_hidden} (heads x head_dim = hidden)")
        _require(self.num_layers > 0, f"{key}.num_layers", "must be > 0")


@dataclass(frozen=True)
class TransformerConfig:
    """The joint audio+video DiT (`LTX2VideoTransformer3DModel`)."""

    num_layers: int = 2
    video_num_heads: int = 2
    video_head_dim: int = 8
    audio_num_heads: int = 2
    audio_head_dim: int = 4

    def validate(self, key: str) -> None:
        for f in dataclasses.fields(self):
            _require(getattr(self, f.name) > 0, f"{key}.{f.name}", "must be > 0")
        _require(self.video_head_dim % 2 == 0, f"{key}.video_head_dim", "must be even (RoPE)")
        _require(self.audio_head_dim % 2 == 0, f"{key}.audio_head_dim", "must be even (RoPE)")


@dataclass(frozen=True)
class VideoVAEConfig:
    """Video VAE (`AutoencoderKLLTX2Video`): 32x spatial, 8x temporal compression like LTX-2."""

    latent_channels: int = 8
    encoder_block_out_channels: tuple[int, ...] = (8, 8, 8, 8)
    decoder_block_out_channels: tuple[int, ...] = (8, 16, 32)

    def validate(self, key: str) -> None:
        _require(self.latent_channels > 0, f"{key}.latent_channels", "must be > 0")
        _require(len(self.encoder_block_out_channels) == 4, f"{key}.encoder_block_out_channels",
                 "must have 4 entries (spatial, temporal, 2x spatiotemporal downsampling)")
        _require(len(self.decoder_block_out_channels) == 3, f"{key}.decoder_block_out_channels",
                 "must have 3 entries (3 spatiotemporal upsampling blocks)")
        dec = self.decoder_block_out_channels
        _require(all(dec[i + 1] == 2 * dec[i] for i in range(len(dec) - 1)),
                 f"{key}.decoder_block_out_channels", "channels must double per block")


@dataclass(frozen=True)
class AudioVAEConfig:
    """Audio VAE (`AutoencoderKLLTX2Audio`) over mel spectrograms."""

    latent_channels: int = 2
    mel_bins: int = 16
    sample_rate: int = 16000
    mel_hop_length: int = 160

    def validate(self, key: str) -> None:
        _require(self.latent_channels > 0, f"{key}.latent_channels", "must be > 0")
        _require(self.mel_bins > 0 and self.mel_bins % 4 == 0, f"{key}.mel_bins",
                 "must be a positive multiple of 4 (the VAE compresses mel bins 4x)")
        _require(self.sample_rate > 0 and self.mel_hop_length > 0, f"{key}.sample_rate",
                 "sample_rate and mel_hop_length must be > 0")


@dataclass(frozen=True)
class VocoderConfig:
    """Mel -> waveform vocoder (`LTX2Vocoder`)."""

    hidden_channels: int = 32
    upsample_factors: tuple[int, ...] = (6, 5, 8)
    upsample_kernel_sizes: tuple[int, ...] = (12, 10, 8)
    output_sample_rate: int = 24000

    def validate(self, key: str, audio: AudioVAEConfig) -> None:
        _require(self.hidden_channels > 0, f"{key}.hidden_channels", "must be > 0")
        _require(len(self.upsample_factors) == len(self.upsample_kernel_sizes),
                 f"{key}.upsample_kernel_sizes", "needs one kernel size per upsample factor")
        prod = 1
        for f in self.upsample_factors:
            prod *= f
        mel_rate = audio.sample_rate / audio.mel_hop_length
        _require(prod * mel_rate == self.output_sample_rate, f"{key}.upsample_factors",
                 f"product {prod} x mel frame rate {mel_rate:g}/s must equal "
                 f"output_sample_rate {self.output_sample_rate}")


@dataclass(frozen=True)
class Architecture:
    """Component sizes for weights built in code (the random-weight presets)."""

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    connectors: ConnectorConfig = field(default_factory=ConnectorConfig)
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    video_vae: VideoVAEConfig = field(default_factory=VideoVAEConfig)
    audio_vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)

    def validate(self, key: str) -> None:
        self.text_encoder.validate(f"{key}.text_encoder")
        self.connectors.validate(f"{key}.connectors", self.text_encoder.hidden_size)
        self.transformer.validate(f"{key}.transformer")
        self.video_vae.validate(f"{key}.video_vae")
        self.audio_vae.validate(f"{key}.audio_vae")
        self.vocoder.validate(f"{key}.vocoder", self.audio_vae)


@dataclass(frozen=True)
class ModelLimits:
    """What a request may ask of this model. Sides are multiples of 32 (the VAE's compression)."""

    min_side: int = 64
    max_side: int = 1920
    max_pixels: int = 1920 * 1088  # 1080p, rounded up to a multiple of 32
    side_multiple: int = 32
    min_seconds: float = 0.5
    max_seconds: float = 20.0
    allowed_fps: tuple[Fraction, ...] = STANDARD_FPS
    max_steps: int = 100
    max_prompt_chars: int = 2000
    guidance_range: tuple[float, float] = (1.0, 20.0)
    rescale_range: tuple[float, float] = (0.0, 1.0)
    max_seed: int = 2**63 - 1

    def validate(self, key: str) -> None:
        _require(0 < self.min_side <= self.max_side, f"{key}.min_side", "must be in (0, max_side]")
        _require(self.min_side % self.side_multiple == 0 and self.max_side % self.side_multiple == 0,
                 f"{key}.side_multiple", "min_side and max_side must be multiples of it")
        _require(self.max_pixels >= self.min_side**2, f"{key}.max_pixels", "must allow min_side^2")
        _require(0 < self.min_seconds <= self.max_seconds, f"{key}.min_seconds",
                 "must be in (0, max_seconds]")
        _require(len(self.allowed_fps) > 0, f"{key}.allowed_fps", "must not be empty")
        _require(1 <= self.max_steps <= 1000, f"{key}.max_steps", "must be in [1, 1000]")
        _require(self.max_prompt_chars > 0, f"{key}.max_prompt_chars", "must be > 0")


@dataclass(frozen=True)
class SamplingDefaults:
    """What a request gets for each knob it leaves unset."""

    steps: int = 4
    guidance_scale: float = 3.0
    audio_guidance_scale: float = 7.0
    guidance_rescale: float = 0.7
    audio_guidance_rescale: float = 0.7
    width: int = 64
    height: int = 64
    seconds: float = 1.0
    fps: Fraction = Fraction(24)
    negative_prompt: str = ""


@dataclass(frozen=True)
class DecodeConfig:
    """How the decoder bounds memory: it decodes latents in tiles and streams frames out.

    The LTX-2 video decoder is causal in time, so a temporal chunk needs only *past* context;
    spatial tiles need a halo on every side. Context and halo are decoded and then cut away.
    When they cover the decoder's receptive field (tiny: 14 latent frames, 8 latent pixels) a
    chunked decode equals a whole decode; the defaults are shorter, trading that exactness at
    chunk seams for ~3x less decoding work. Peak memory grows with
    (chunk + context) x (tile + 2 halo)^2.
    """

    chunk_latent_frames: int = 2
    context_latent_frames: int = 2
    tile_latent_size: int = 24
    tile_halo_latents: int = 2
    # Latent volumes up to this (frames x height x width, e.g. 8 x 16 x 16 = 57 frames of 512x512)
    # decode whole: exact and with no context/halo to recompute. Larger ones are chunked.
    whole_max_latents: int = 2048

    def validate(self, key: str) -> None:
        _require(self.chunk_latent_frames >= 1, f"{key}.chunk_latent_frames", "must be >= 1")
        _require(self.context_latent_frames >= 0, f"{key}.context_latent_frames", "must be >= 0")
        _require(self.tile_latent_size >= 1, f"{key}.tile_latent_size", "must be >= 1")
        _require(self.tile_halo_latents >= 0, f"{key}.tile_halo_latents", "must be >= 0")
        _require(self.whole_max_latents >= 0, f"{key}.whole_max_latents", "must be >= 0")


@dataclass(frozen=True)
class EnhancerConfig:
    """The optional prompt enhancer: an LLM rewrites a short request into a detailed prompt before
    text encoding (LTX-2's enhancement slot). Off by default; a request opts in per job.

    backend ``transformers`` runs a causal LM in process (``model``: a local directory; empty: the
    model's own Gemma text encoder, as ``LTX2Pipeline.enhance_prompt`` does for LTX-2). Backend
    ``vllm`` calls a vLLM server's OpenAI-compatible API at ``url`` serving ``model`` (the GPU
    deployment). ``system_prompt`` empty: LTX-2's own text-to-video enhancement prompt.
    """

    enabled: bool = False
    backend: str = "transformers"
    model: str = ""
    url: str = ""
    max_new_tokens: int = 512  # LTX-2's default for Gemma 3
    temperature: float = 0.7
    system_prompt: str = ""
    timeout_seconds: float = 60.0

    def validate(self, key: str) -> None:
        _require(self.backend in ("transformers", "vllm"), f"{key}.backend", "must be transformers or vllm")
        _require(not (self.backend == "vllm" and self.enabled and not (self.url and self.model)),
                 f"{key}.url", "and model are required for the vllm backend (its OpenAI-compatible base URL "
                 "and the served model name)")
        _require(1 <= self.max_new_tokens <= 4096, f"{key}.max_new_tokens", "must be in [1, 4096]")
        _require(0.0 <= self.temperature <= 2.0, f"{key}.temperature", "must be in [0, 2]")
        _require(self.timeout_seconds > 0, f"{key}.timeout_seconds", "must be > 0")


@dataclass(frozen=True)
class TensorRTConfig:
    """TensorRT engines: where they are cached and which shape buckets get a profile.

    Precision follows the model's ``dtype`` (the exported graph is strongly typed)."""

    engine_cache_dir: Path = Path("var/kino/engines")
    profiles: tuple[tuple[int, int, float], ...] = ((768, 512, 5.0),)  # (width, height, seconds) buckets
    max_rows: int = 16  # transformer rows per forward (a CFG request takes 2)

    def validate(self, key: str) -> None:
        _require(self.max_rows >= 1, f"{key}.max_rows", "must be >= 1")
        _require(len(self.profiles) >= 1, f"{key}.profiles", "needs at least one (width, height, seconds)")


@dataclass(frozen=True)
class ModelConfig:
    """Which model to run and how. Build one with `preset()` or `checkpoint()`."""

    name: str
    architecture: Architecture | None = None  # None: read from checkpoint_dir
    checkpoint_dir: Path | None = None
    seed: int = 0  # seeds the random weights of in-code presets
    tokenizer_max_length: int = 64  # prompt tokens (padded/truncated to this)
    dtype: Dtype = "float32"
    device: str = "cpu"
    dit_backend: DiTBackendName = "auto"  # auto: TensorRT, then torch.compile on GPUs; eager on CPUs
    num_threads: int | None = 1  # CPU intra-op threads per engine; None: torch's default
    limits: ModelLimits = field(default_factory=ModelLimits)
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    enhancer: EnhancerConfig = field(default_factory=lambda: EnhancerConfig())

    def __post_init__(self) -> None:
        if isinstance(self.checkpoint_dir, str):
            object.__setattr__(self, "checkpoint_dir", Path(self.checkpoint_dir))
        self.validate()

    @property
    def model_id(self) -> str:
        """Stable identifier recorded on every job and in content credentials."""
        if self.checkpoint_dir is not None:
            return f"ltx2-checkpoint:{self.checkpoint_dir.name}"
        return f"ltx2-{self.name}"

    def validate(self) -> None:
        _require(bool(self.name), "model.name", "must not be empty")
        _require((self.architecture is None) != (self.checkpoint_dir is None), "model.checkpoint_dir",
                 "exactly one of architecture (random weights) or checkpoint_dir must be set")
        if self.architecture is not None:
            self.architecture.validate("model.architecture")
        _require(self.dtype in DTYPES, "model.dtype", f"{self.dtype!r} is not one of {DTYPES}")
        _require(self.device == "cpu" or self.device.startswith("cuda"), "model.device",
                 f"{self.device!r} is not 'cpu' or 'cuda[:N]'")
        _require(self.dit_backend in DIT_BACKENDS, "model.dit_backend",
                 f"{self.dit_backend!r} is not one of {DIT_BACKENDS}")
        _require(self.num_threads is None or self.num_threads >= 1, "model.num_threads",
                 "must be >= 1 or null")
        _require(8 <= self.tokenizer_max_length <= 4096, "model.tokenizer_max_length",
                 "must be in [8, 4096]")
        self.limits.validate("model.limits")
        self.decode.validate("model.decode")
        self.tensorrt.validate("model.tensorrt")
        self.enhancer.validate("model.enhancer")
        d, lim = self.defaults, self.limits
        _require(1 <= d.steps <= lim.max_steps, "model.defaults.steps", f"must be in [1, {lim.max_steps}]")
        _require(d.fps in lim.allowed_fps, "model.defaults.fps", "must be one of limits.allowed_fps")

    def replace(self, **changes: Any) -> ModelConfig:
        """A copy with some fields changed (validated again)."""
        return dataclasses.replace(self, **changes)


_TINY = Architecture()  # the defaults above are the tiny sizes

# Sized so a 256x256, 33-frame video with audio takes ~1-3 s on 2 CPU cores (docs/benchmarks.md).
_SMALL = Architecture(
    text_encoder=TextEncoderConfig(hidden_size=64, intermediate_size=128, num_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, head_dim=16),
    connectors=ConnectorConfig(num_attention_heads=4, num_layers=1),
    transformer=TransformerConfig(num_layers=6, video_num_heads=8, video_head_dim=32,
                                  audio_num_heads=4, audio_head_dim=16),
    video_vae=VideoVAEConfig(latent_channels=16, encoder_block_out_channels=(8, 16, 16, 16),
                             decoder_block_out_channels=(16, 32, 64)),
    audio_vae=AudioVAEConfig(latent_channels=4, mel_bins=32),
    vocoder=VocoderConfig(hidden_channels=64),
)

PRESETS: Mapping[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny", architecture=_TINY),
    "small": ModelConfig(name="small", architecture=_SMALL,
                         defaults=SamplingDefaults(steps=8, width=256, height=256, seconds=33 / 24)),
}

# A real LTX-2 checkpoint: the pipeline's own defaults, sizes the model was trained for.
CHECKPOINT_DEFAULTS = SamplingDefaults(steps=30, width=768, height=512, seconds=5.0)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A built-in preset by name (``tiny``, ``small``), optionally with fields overridden."""
    if name not in PRESETS:
        raise ConfigError("model.preset", f"{name!r} is not one of {sorted(PRESETS)} or 'checkpoint'")
    base = PRESETS[name]
    return base.replace(**overrides) if overrides else base


def checkpoint(path: str | Path, **overrides: Any) -> ModelConfig:
    """A local diffusers LTX-2 checkpoint directory (never downloaded)."""
    path = Path(path).expanduser()
    if not (path / "model_index.json").is_file():
        raise ConfigError("model.checkpoint_dir", f"{str(path)!r} holds no model_index.json "
                          "(expected a diffusers LTX-2 checkpoint directory)")
    kwargs: dict[str, Any] = dict(name="checkpoint", checkpoint_dir=path, defaults=CHECKPOINT_DEFAULTS,
                                  num_threads=None, tokenizer_max_length=_prompt_tokens(path))
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _prompt_tokens(path: Path) -> int:
    """The checkpoint's prompt length: its tokenizer's, unless that is the "unbounded" sentinel
    Gemma tokenizers ship with; then LTX2Pipeline's default of 1024."""
    try:
        n = int(json.loads((path / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 0))
    except (OSError, ValueError):
        n = 0
    return n if 8 <= n <= 4096 else 1024


def from_mapping(data: Mapping[str, Any]) -> ModelConfig:
    """Build a config from a plain mapping (a YAML ``model:`` section).

    ``preset`` picks ``tiny``, ``small`` or ``checkpoint`` (with ``checkpoint_dir``); the
    runtime keys ``dtype``, ``device``, ``dit_backend``, ``num_threads`` override it, and the
    ``enhancer`` and ``tensorrt`` sections set those features (see their dataclasses).
    """
    data = dict(data)
    name = data.pop("preset", "tiny")
    allowed = {"dtype", "device", "dit_backend", "num_threads", "checkpoint_dir", "seed", "enhancer", "tensorrt"}
    unknown = sorted(set(data) - allowed)
    if unknown:
        raise ConfigError(f"model.{unknown[0]}", f"unknown key (allowed: preset, {', '.join(sorted(allowed))})")
    for key, cls in (("enhancer", EnhancerConfig), ("tensorrt", TensorRTConfig)):
        if key in data:
            data[key] = _section(f"model.{key}", cls, data[key])
    if name == "checkpoint":
        if "checkpoint_dir" not in data:
            raise ConfigError("model.checkpoint_dir", "is required when preset is 'checkpoint'")
        return checkpoint(data.pop("checkpoint_dir"), **data)
    if "checkpoint_dir" in data:
        raise ConfigError("model.checkpoint_dir", "is only valid with preset 'checkpoint'")
    return preset(name, **data)


def _section(key: str, cls: type, value: Any) -> Any:
    if not isinstance(value, Mapping):
        raise ConfigError(key, f"must be a mapping, got {type(value).__name__}")
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(value) - names)
    if unknown:
        raise ConfigError(f"{key}.{unknown[0]}", f"unknown key (allowed: {', '.join(sorted(names))})")
    fields = dict(value)
    if "profiles" in fields:  # YAML lists -> the tuple of (width, height, seconds) tuples
        fields["profiles"] = tuple(tuple(p) for p in fields["profiles"])
    if "engine_cache_dir" in fields:
        fields["engine_cache_dir"] = Path(fields["engine_cache_dir"])
    return cls(**fields)
