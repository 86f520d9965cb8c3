"""The model's configuration (typed, frozen, validated; see engines/schema.py) and the built-in presets.

A `ModelConfig` says which weights to run (random weights of a given architecture, or a
local diffusers checkpoint), where (device, dtype, DiT backend, CPU threads), what the model
allows (`ModelLimits`) and what a request gets when it says nothing (`SamplingDefaults`).

Presets:
- ``tiny``: the embedded default. The real LTX-2 classes at toy sizes with seeded random
  weights; a short video takes well under a second on a laptop CPU. Its output is noise.
- ``small``: the same classes, larger, sized so one 256x256, 33-frame video with audio takes a
  few seconds on a 2-core CPU; the benchmark preset.
- ``demo``: the same classes at toy sizes, *trained* (on a CPU, by ``python -m training.train_demo``) on a
  synthetic world: a red, green, blue or yellow ball or square bouncing or sliding left or right on a dark or
  light floor, with a click at every contact, to make what a prompt in those words asks for at 64x64,
  17 frames (how well: docs/benchmarks.md, "Output truth"); the weights ship in the repository
  (engines/weights/demo/) and load as a checkpoint.
- ``checkpoint``: a local directory holding a diffusers LTX-2 checkpoint (``model_index.json``
  plus one subfolder per component), loaded with ``local_files_only``.

A ``model:`` mapping (YAML, `from_mapping`) names a ``preset`` and overrides any field of it;
nested sections merge key by key (``{preset: small, decode: {chunk_latent_frames: 4}}``).
"""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from dataclasses import field
from fractions import Fraction
from pathlib import Path
from typing import Annotated, Any, Literal, get_args

from pydantic import Field

from engines.errors import ConfigError
from engines.schema import load, merge, require, section

Dtype = Literal["float32", "bfloat16", "float16"]
DiTBackendName = Literal["auto", "eager", "compile", "tensorrt", "fp8", "int8"]
EnhancerBackend = Literal["transformers", "vllm"]
StepCacheMode = Literal["off", "balanced", "fast"]
LoraDeltaPath = Literal["grouped", "gathered"]
SpatialCompression = Literal[8, 32]
TemporalCompression = Literal[4, 8]
# (spatial, temporal) compressions the video VAE can be built with (engines.model_loader holds each layout).
VIDEO_VAE_LAYOUTS: tuple[tuple[int, int], ...] = ((32, 8), (8, 8), (8, 4))
STEP_CACHE_MODES: tuple[str, ...] = get_args(StepCacheMode)
DTYPES: tuple[str, ...] = get_args(Dtype)
DIT_BACKENDS: tuple[str, ...] = get_args(DiTBackendName)

Positive = Annotated[int, Field(gt=0)]
NonNegative = Annotated[int, Field(ge=0)]

# Frame rates a request may ask for. NTSC rates are exact fractions, never truncated floats.
STANDARD_FPS: tuple[Fraction, ...] = (
    Fraction(24000, 1001),
    Fraction(24),
    Fraction(25),
    Fraction(30000, 1001),
    Fraction(30),
)


@section("model.architecture.text_encoder")
class TextEncoderConfig:
    """Gemma-3 text tower (transformers) whose stacked hidden states condition the DiT."""

    vocab_size: NonNegative = 0
    """0: taken from the tokenizer."""
    hidden_size: Positive = 32
    """Width of the text tower."""
    intermediate_size: Positive = 64
    """Width of its MLPs."""
    num_layers: Positive = 2
    """Layers; the DiT sees all their hidden states stacked (layers + 1)."""
    num_attention_heads: Positive = 2
    """Query heads."""
    num_key_value_heads: Positive = 1
    """Key/value heads (grouped-query attention); must divide the query heads."""
    head_dim: Positive = 16
    """Width of one attention head."""

    def __post_init__(self) -> None:
        require(self.num_attention_heads % self.num_key_value_heads == 0, "num_key_value_heads",
                "must divide num_attention_heads")


@section("model.architecture.connectors")
class ConnectorConfig:
    """LTX-2 text connectors: map stacked text hidden states to video and audio contexts."""

    num_attention_heads: Positive = 4
    """Heads; heads x head_dim equals the text hidden size."""
    num_layers: Positive = 1
    """Transformer layers of each connector."""
    num_learnable_registers: int | None = None
    """Learnable register tokens (None: the diffusers default)."""


@section("model.architecture.transformer")
class TransformerConfig:
    """The joint audio+video DiT (`LTX2VideoTransformer3DModel`)."""

    num_layers: Positive = 2
    """Joint audio+video transformer blocks."""
    video_num_heads: Positive = 2
    """Attention heads of the video stream."""
    video_head_dim: Positive = 8
    """Width of a video head (even: RoPE)."""
    audio_num_heads: Positive = 2
    """Attention heads of the audio stream."""
    audio_head_dim: Positive = 4
    """Width of an audio head (even: RoPE)."""

    def __post_init__(self) -> None:
        require(self.video_head_dim % 2 == 0, "video_head_dim", "must be even (RoPE)")
        require(self.audio_head_dim % 2 == 0, "audio_head_dim", "must be even (RoPE)")


@section("model.architecture.video_vae")
class VideoVAEConfig:
    """Video VAE (`AutoencoderKLLTX2Video`): 8x temporal compression like LTX-2, and 32x spatial like LTX-2 or
    8x for small frames."""

    latent_channels: Positive = 8
    """Channels of the video latents (the DiT's in_channels)."""
    encoder_block_out_channels: Annotated[tuple[int, ...], Field(min_length=4, max_length=4)] = (8, 8, 8, 8)
    """4 entries, one per encoder block (see `spatial_compression` for what each block downsamples)."""
    decoder_block_out_channels: Annotated[tuple[int, ...], Field(min_length=3, max_length=3)] = (8, 16, 32)
    """3 entries (3 upsampling blocks), doubling per block."""
    spatial_compression: SpatialCompression = 32
    """Pixels per latent side: 32 as LTX-2 (4x4 patches, then spatial, temporal and two spatiotemporal
    downsamplings), or 8 (2x2 patches and two more spatial halvings), so that a 64x64 frame is an 8x8 latent
    instead of 2x2: what a model trained at toy frame sizes needs to say where an object is."""
    temporal_compression: TemporalCompression = 8
    """Frames per latent frame after the causal first one: 8 as LTX-2, or 4 (with `spatial_compression` 8),
    so that a latent frame holds half as much motion. Requests still ask for 8k+1 frames, which are 4k+1 too."""

    def __post_init__(self) -> None:
        dec = self.decoder_block_out_channels
        require(all(dec[i + 1] == 2 * dec[i] for i in range(len(dec) - 1)), "decoder_block_out_channels",
                "channels must double per block")
        require((self.spatial_compression, self.temporal_compression) in VIDEO_VAE_LAYOUTS, "temporal_compression",
                f"with spatial_compression {self.spatial_compression}, one of "
                f"{sorted(t for s, t in VIDEO_VAE_LAYOUTS if s == self.spatial_compression)}")


@section("model.architecture.audio_vae")
class AudioVAEConfig:
    """Audio VAE (`AutoencoderKLLTX2Audio`) over mel spectrograms."""

    latent_channels: Positive = 2
    """Channels of the audio latents."""
    mel_bins: Annotated[int, Field(gt=0, multiple_of=4)] = 16
    """Mel bins (a multiple of 4: the VAE compresses them 4x)."""
    sample_rate: Positive = 16000
    """Sample rate of the mel spectrogram, Hz."""
    mel_hop_length: Positive = 160
    """Samples between mel frames."""


@section("model.architecture.vocoder")
class VocoderConfig:
    """Mel -> waveform vocoder (`LTX2Vocoder`)."""

    hidden_channels: Positive = 32
    """Width of the vocoder."""
    upsample_factors: tuple[int, ...] = (6, 5, 8)
    """Upsampling per stage; their product x the mel frame rate is the output sample rate."""
    upsample_kernel_sizes: tuple[int, ...] = (12, 10, 8)
    """One kernel size per upsample factor."""
    output_sample_rate: Positive = 24000
    """Sample rate of the waveform, Hz."""

    def __post_init__(self) -> None:
        require(len(self.upsample_factors) == len(self.upsample_kernel_sizes), "upsample_kernel_sizes",
                "needs one kernel size per upsample factor")


@section("model.architecture.latent_upsampler")
class LatentUpsamplerConfig:
    """LTX-2's x2 spatial latent upsampler (`LTX2LatentUpsamplerModel`) for two-stage generation."""

    mid_channels: Annotated[int, Field(gt=0, multiple_of=32)] = 32
    """Width of its blocks (a multiple of 32: every norm is GroupNorm(32, ...); the real one is 1024)."""
    num_blocks_per_stage: Positive = 1
    """Residual blocks before and after the upsampling (the real one has 4)."""


@section("model.architecture")
class Architecture:
    """Component sizes for weights built in code (the random-weight presets)."""

    text_encoder: TextEncoderConfig = field(default_factory=TextEncoderConfig)
    """The text tower."""
    connectors: ConnectorConfig = field(default_factory=ConnectorConfig)
    """The text connectors."""
    transformer: TransformerConfig = field(default_factory=TransformerConfig)
    """The DiT."""
    video_vae: VideoVAEConfig = field(default_factory=VideoVAEConfig)
    """The video VAE."""
    audio_vae: AudioVAEConfig = field(default_factory=AudioVAEConfig)
    """The audio VAE."""
    vocoder: VocoderConfig = field(default_factory=VocoderConfig)
    """The vocoder."""
    latent_upsampler: LatentUpsamplerConfig = field(default_factory=LatentUpsamplerConfig)
    """The latent upsampler of two-stage generation."""

    def __post_init__(self) -> None:
        hidden = self.text_encoder.hidden_size
        require(hidden % self.connectors.num_attention_heads == 0, "connectors.num_attention_heads",
                f"must divide the text hidden size {hidden} (heads x head_dim = hidden)")
        audio, voc = self.audio_vae, self.vocoder
        mel_rate = audio.sample_rate / audio.mel_hop_length
        prod = math.prod(voc.upsample_factors)
        require(prod * mel_rate == voc.output_sample_rate, "vocoder.upsample_factors",
                f"product {prod} x mel frame rate {mel_rate:g}/s must equal output_sample_rate "
                f"{voc.output_sample_rate}")


@section("model.limits")
class ModelLimits:
    """What a request may ask of this model. Sides are multiples of 32 (the VAE's compression)."""

    min_side: Positive = 64
    """Smallest width or height, pixels."""
    max_side: Positive = 1920
    """Largest width or height, pixels."""
    max_pixels: Positive = 1920 * 1088
    """Largest width x height (1080p, rounded up to a multiple of 32)."""
    side_multiple: Positive = 32
    """Width and height are multiples of this."""
    min_seconds: Annotated[float, Field(gt=0)] = 0.5
    """Shortest video, seconds."""
    max_seconds: Annotated[float, Field(gt=0)] = 20.0
    """Longest video, seconds."""
    allowed_fps: Annotated[tuple[Fraction, ...], Field(min_length=1)] = STANDARD_FPS
    """Frame rates a request may ask for (exact fractions: 30000/1001, not 29.97)."""
    max_steps: Annotated[int, Field(ge=1, le=1000)] = 100
    """Most denoising steps a request may ask for."""
    max_prompt_chars: Positive = 32000
    """Longest prompt, characters (OpenAI's Videos API limit). The text encoder reads the first
    tokenizer_max_length tokens of it."""
    guidance_range: tuple[float, float] = (1.0, 20.0)
    """Allowed classifier-free guidance scales (1 = off)."""
    rescale_range: tuple[float, float] = (0.0, 1.0)
    """Allowed guidance rescale factors."""
    max_seed: Positive = 2**63 - 1
    """Largest seed."""

    def __post_init__(self) -> None:
        require(self.min_side <= self.max_side, "min_side", "must be in (0, max_side]")
        require(self.min_side % self.side_multiple == 0 and self.max_side % self.side_multiple == 0,
                "side_multiple", "min_side and max_side must be multiples of it")
        require(self.max_pixels >= self.min_side**2, "max_pixels", "must allow min_side^2")
        require(self.min_seconds <= self.max_seconds, "min_seconds", "must be in (0, max_seconds]")


@section("model.defaults")
class SamplingDefaults:
    """What a request gets for each knob it leaves unset."""

    steps: Positive = 4
    """Denoising steps."""
    guidance_scale: float = 3.0
    """Video classifier-free guidance."""
    audio_guidance_scale: float = 7.0
    """Audio classifier-free guidance."""
    guidance_rescale: float = 0.7
    """Video guidance rescale."""
    audio_guidance_rescale: float = 0.7
    """Audio guidance rescale."""
    width: Positive = 64
    """Frame width, pixels."""
    height: Positive = 64
    """Frame height, pixels."""
    seconds: Annotated[float, Field(gt=0)] = 1.0
    """Duration, seconds."""
    fps: Fraction = Fraction(24)
    """Frame rate."""
    negative_prompt: str = ""
    """What to steer away from."""


@section("model.decode")
class DecodeConfig:
    """How the decoder bounds memory: it decodes latents in tiles and streams frames out.

    The LTX-2 video decoder is causal in time, so a temporal chunk needs only *past* context;
    spatial tiles need a halo on every side. Context and halo are decoded and then cut away.
    When they cover the decoder's receptive field (tiny: 14 latent frames, 8 latent pixels) a
    chunked decode equals a whole decode; the defaults are shorter, trading that exactness at
    chunk seams for ~3x less decoding work. Peak memory grows with
    (chunk + context) x (tile + 2 halo)^2.
    """

    chunk_latent_frames: Annotated[int, Field(ge=1)] = 2
    """Latent frames decoded per temporal chunk."""
    context_latent_frames: NonNegative = 2
    """Past latent frames decoded with a chunk and cut away."""
    tile_latent_size: Annotated[int, Field(ge=1)] = 24
    """Side of a spatial tile, latent pixels."""
    tile_halo_latents: NonNegative = 2
    """Halo around a tile, latent pixels, decoded and cut away."""
    whole_max_latents: NonNegative = 2048
    """Latent volumes up to this (frames x height x width, e.g. 8 x 16 x 16 = 57 frames of 512x512)
    decode whole: exact and with no context or halo to recompute. Larger ones are chunked."""


@section("model.enhancer")
class EnhancerConfig:
    """The optional prompt enhancer: an LLM rewrites a short request into a detailed prompt before
    text encoding (LTX-2's enhancement slot). Off by default; a request opts in per job.

    backend ``transformers`` runs a causal LM in process (``model``: a local directory; empty: the
    model's own Gemma text encoder, as ``LTX2Pipeline.enhance_prompt`` does for LTX-2). Backend
    ``vllm`` calls a vLLM server's OpenAI-compatible API at ``url`` serving ``model`` (the GPU
    deployment). ``system_prompt`` empty: LTX-2's own text-to-video enhancement prompt.
    """

    enabled: bool = False
    """Whether requests may ask for an enhanced prompt."""
    backend: EnhancerBackend = "transformers"
    """transformers: in the TextEncoder replicas; vllm: a vLLM server's OpenAI-compatible API."""
    model: str = ""
    """A local model directory (transformers; empty: the model's own Gemma) or the served model name (vllm)."""
    url: str = ""
    """The vLLM server's OpenAI-compatible base URL."""
    max_new_tokens: Annotated[int, Field(ge=1, le=4096)] = 512
    """Longest rewrite, tokens (LTX-2's default for Gemma 3)."""
    temperature: Annotated[float, Field(ge=0.0, le=2.0)] = 0.7
    """Sampling temperature."""
    system_prompt: str = ""
    """Empty: LTX-2's own text-to-video enhancement prompt."""
    timeout_seconds: Annotated[float, Field(gt=0)] = 60.0
    """How long a vLLM call may take."""

    def __post_init__(self) -> None:
        require(not (self.backend == "vllm" and self.enabled and not (self.url and self.model)), "url",
                "and model are required for the vllm backend (its OpenAI-compatible base URL and the served "
                "model name)")


@section("model.tensorrt")
class TensorRTConfig:
    """TensorRT engines: where they are cached and which shape buckets get a profile.

    Precision follows the model's ``dtype`` (the exported graph is strongly typed)."""

    engine_cache_dir: Path = Path("var/kino/engines")
    """Where built engines are kept (keyed by GPU, TensorRT version, weights and profiles)."""
    profiles: Annotated[tuple[tuple[int, int, float], ...], Field(min_length=1)] = ((768, 512, 5.0),)
    """(width, height, seconds) buckets, one optimisation profile each."""
    max_rows: Annotated[int, Field(ge=1)] = 16
    """Transformer rows per forward (a CFG request takes 2)."""


# The distilled LTX-2 checkpoint's schedules (diffusers.pipelines.ltx2.utils; Lightricks' ltx_pipelines).
DISTILLED_SIGMAS = (1.0, 0.99375, 0.9875, 0.98125, 0.975, 0.909375, 0.725, 0.421875)
STAGE_2_SIGMAS = (0.909375, 0.725, 0.421875)


@section("model.schedule")
class ScheduleConfig:
    """The denoising schedules: one-stage (and stage 1) and the refine of two-stage generation.

    Read from a checkpoint's ``scheduler/scheduler_config.json`` keys ``sigmas`` and
    ``stage_2_sigmas`` where present (a distilled checkpoint's fixed lists)."""

    sigmas: Annotated[tuple[float, ...], Field(min_length=1)] | None = None
    """A fixed sigma list (e.g. the distilled checkpoint's 8): every request then runs exactly these
    steps; None: the pipeline's shifted schedule for the request's step count."""
    refine_sigmas: Annotated[tuple[float, ...], Field(min_length=1)] = STAGE_2_SIGMAS
    """Stage 2 of two-stage generation: it re-noises the upsampled latents to the first of these and
    takes one step per sigma (the distilled stage-2 schedule: 0.909375, 0.725, 0.421875)."""

    def __post_init__(self) -> None:
        for name in ("sigmas", "refine_sigmas"):
            values = getattr(self, name)
            ok = values is None or (all(0 < v <= 1 for v in values) and list(values) == sorted(values, reverse=True))
            require(ok, name, "must be decreasing sigmas in (0, 1]")

    @property
    def refine_start(self) -> float:
        """The sigma stage 2 starts from (its noise scale)."""
        return self.refine_sigmas[0]


@section("model.two_stage")
class TwoStageConfig:
    """LTX-2's recipe for high resolution: generate at half width and height, upsample the latents
    2x (the latent upsampler), refine at full size with a few steps from a middle sigma."""

    min_pixels: Positive | None = None
    """A request that does not say runs in two stages when its width x height is at least this
    (e.g. 921600: 1280x720 and up); None: only when it asks."""


@section("model.step_cache")
class StepCacheConfig:
    """Per-request first-block caching (engines/step_cache.py): a request reuses its own cached
    output of the DiT blocks after the first while the first block's residual barely moves.

    The thresholds bound the summed relative L1 change of block 0's residual since the request last
    ran every block. Calibrated on the random-weight ``small`` preset at 8 steps
    (loadtests/bench_cache.py, 32 requests): balanced skips 50% of request-steps for 1.64x denoise
    throughput at >= 42 dB PSNR against off, fast 62% for 1.95x at >= 40 dB. Random weights change
    evenly from step to step and the per-step change shrinks with more steps: re-calibrate for a
    trained checkpoint and its step counts."""

    default: StepCacheMode = "off"
    """What a request that does not say gets: off (every step runs every block), balanced or fast."""
    balanced_threshold: Annotated[float, Field(gt=0, le=10)] = 0.3
    """Skip threshold of ``balanced``."""
    fast_threshold: Annotated[float, Field(gt=0, le=10)] = 0.4
    """Skip threshold of ``fast`` (skips more, at more quality cost)."""
    first_steps: Annotated[int, Field(ge=1)] = 1
    """A request's first steps always compute (the first must: nothing is cached before it)."""
    last_steps: NonNegative = 1
    """A request's last steps always compute (skipping them costs the most detail)."""
    max_consecutive_skips: Annotated[int, Field(ge=1)] = 3
    """Most steps in a row one request may reuse its cache (bounds the drift of a reused residual)."""

    def __post_init__(self) -> None:
        require(self.fast_threshold >= self.balanced_threshold, "fast_threshold",
                "must be at least balanced_threshold (fast skips more)")


@section("model.parallel")
class ParallelConfig:
    """One video across several devices (engines/parallel/): each DiT forward is split over
    ``cfg x ulysses`` ranks, and the VAE decode of one video over the same ranks.

    Rank 0 runs the Denoiser (step-level batching across requests stays there) and drives every
    step; the other ranks follow what it broadcasts. 1 x 1 is a plain single-device engine."""

    cfg: Literal[1, 2] = 1
    """Classifier-free-guidance parallel degree: 2 puts the unconditional rows of a batch on one
    group of ranks and the conditional rows on another (the two branches are independent)."""
    ulysses: Annotated[int, Field(ge=1, le=8)] = 1
    """Ulysses sequence-parallel degree: the video tokens of each row are split over this many ranks
    (all-to-all around self-attention). Must divide the video and the audio attention head counts,
    and each request's video token count."""

    @property
    def world_size(self) -> int:
        """Ranks one engine spans."""
        return self.cfg * self.ulysses


@section("model.lora")
class LoraConfig:
    """Per-request LoRA adapters (engines/lora/): low-rank updates of the DiT's Linear layers, in the safetensors
    layout diffusers' ``LTX2Pipeline.load_lora_weights`` reads, that a request names and scales. A replica loads
    them on first use and keeps the most recently used; one forward mixes rows of different adapters."""

    dir: Path | None = None
    """Where adapters live, by name: ``<dir>/<name>.safetensors`` or ``<dir>/<name>/pytorch_lora_weights.safetensors``.
    None: requests may name no adapter."""
    max_loaded: Positive = 8
    """Adapters one replica keeps loaded; loading one more drops the least recently used (it loads again on its
    next use)."""
    max_per_request: Positive = 4
    """Adapters one request may combine (each with its own scale)."""
    scale_range: tuple[float, float] = (-2.0, 2.0)
    """Allowed scale of one adapter: 1 applies it as trained, 0 not at all, a negative one pushes away from it."""
    delta_path: LoraDeltaPath = "grouped"
    """How one forward adds each row's adapters (engines/lora/layers.py): grouped (rows grouped by adapter set,
    two matmuls per group; rows without adapters cost nothing; the faster on this CPU, loadtests/bench_lora.py)
    or gathered (every row's factors gathered from a rank-padded stack, two batched matmuls for the batch)."""

    def __post_init__(self) -> None:
        lo, hi = self.scale_range
        require(lo <= hi, "scale_range", "must be (low, high) with low <= high")
        require(self.max_per_request <= self.max_loaded, "max_per_request",
                f"must be at most max_loaded ({self.max_loaded}): a request's adapters are loaded together")


@section("model")
class ModelConfig:
    """Which model to run and how. Build one with `preset()`, `checkpoint()` or `from_mapping()`."""

    name: Annotated[str, Field(min_length=1)]
    """The preset's name (tiny, small, checkpoint)."""
    architecture: Architecture | None = None
    """Component sizes of random weights; None: read from checkpoint_dir."""
    checkpoint_dir: Path | None = None
    """A local diffusers LTX-2 checkpoint directory."""
    seed: int = 0
    """Seeds the random weights of in-code presets."""
    tokenizer_max_length: Annotated[int, Field(ge=8, le=4096)] = 64
    """Prompt tokens (padded or truncated to this)."""
    dtype: Dtype = "float32"
    """Weights dtype."""
    device: Annotated[str, Field(pattern=r"^(cpu|cuda(:\d+)?)$")] = "cpu"
    """cpu or cuda[:N]."""
    dit_backend: DiTBackendName = "auto"
    """auto: TensorRT, then torch.compile on GPUs; eager on CPUs. Opt-in, trading precision for speed:
    fp8 (the blocks' linears in float8 on Ada/Hopper GPUs, bfloat16 weights, compiled) and int8 (the
    blocks' linears in int8 on CPUs, float32 weights)."""
    num_threads: Annotated[int, Field(ge=1)] | None = 1
    """CPU intra-op threads per engine; None: torch's default."""
    limits: ModelLimits = field(default_factory=ModelLimits)
    """What a request may ask."""
    defaults: SamplingDefaults = field(default_factory=SamplingDefaults)
    """What a request gets when it says nothing."""
    decode: DecodeConfig = field(default_factory=DecodeConfig)
    """How the decoder tiles."""
    tensorrt: TensorRTConfig = field(default_factory=TensorRTConfig)
    """TensorRT engines."""
    enhancer: EnhancerConfig = field(default_factory=EnhancerConfig)
    """The optional prompt enhancer."""
    step_cache: StepCacheConfig = field(default_factory=StepCacheConfig)
    """Per-request first-block caching of the DiT (what ``cache`` off/balanced/fast mean)."""
    parallel: ParallelConfig = field(default_factory=ParallelConfig)
    """How one video spreads over several devices (1 x 1: one device)."""
    schedule: ScheduleConfig = field(default_factory=ScheduleConfig)
    """The denoising schedules (fixed sigma lists of a distilled checkpoint, the refine's)."""
    two_stage: TwoStageConfig = field(default_factory=TwoStageConfig)
    """When a request runs in two stages by default."""
    lora: LoraConfig = field(default_factory=LoraConfig)
    """Per-request LoRA adapters: where they live and how many a replica and a request hold."""

    @property
    def has_latent_upsampler(self) -> bool:
        """Whether two-stage generation is possible: random-weight presets build one; a checkpoint needs
        its ``latent_upsampler/`` folder."""
        return self.checkpoint_dir is None or (Path(self.checkpoint_dir) / "latent_upsampler").is_dir()

    def __post_init__(self) -> None:
        require((self.architecture is None) != (self.checkpoint_dir is None), "checkpoint_dir",
                "exactly one of architecture (random weights) or checkpoint_dir must be set")
        d, lim = self.defaults, self.limits
        require(d.steps <= lim.max_steps, "defaults.steps", f"must be in [1, {lim.max_steps}]")
        fixed = self.schedule.sigmas
        require(fixed is None or d.steps == len(fixed), "defaults.steps",
                f"must be {len(fixed or ())}: the length of schedule.sigmas")
        require(d.fps in lim.allowed_fps, "defaults.fps", "must be one of limits.allowed_fps")
        if self.architecture is not None:  # a checkpoint's head counts are checked when it is parallelized
            tr, n = self.architecture.transformer, self.parallel.ulysses
            require(tr.video_num_heads % n == 0 and tr.audio_num_heads % n == 0, "parallel.ulysses",
                    f"{n} must divide the video ({tr.video_num_heads}) and audio ({tr.audio_num_heads}) "
                    "attention head counts (Ulysses splits the heads over the ranks)")

    @property
    def model_id(self) -> str:
        """Stable identifier recorded on every job and in content credentials."""
        if self.checkpoint_dir is not None:
            return f"ltx2-checkpoint:{self.checkpoint_dir.name}"
        return f"ltx2-{self.name}"

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

# Trained weights shipped with Kino (training/train_demo.py writes them).
DEMO_CHECKPOINT_DIR = Path(__file__).resolve().parent / "weights" / "demo"
# LoRA adapters made for the demo model (training/train_lora.py writes them): the demo preset's model.lora.dir.
DEMO_LORA_DIR = Path(__file__).resolve().parent / "weights" / "demo_loras"

PRESETS: Mapping[str, ModelConfig] = {
    "tiny": ModelConfig(name="tiny", architecture=_TINY),
    "small": ModelConfig(name="small", architecture=_SMALL,
                         defaults=SamplingDefaults(steps=8, width=256, height=256, seconds=33 / 24)),
    # What it was trained for: 64x64, 17 frames at 24 fps, prompts of up to 80 (character) tokens; its adapters
    # (e.g. --lora emerald) from DEMO_LORA_DIR unless model.lora.dir says otherwise.
    "demo": ModelConfig(name="demo", checkpoint_dir=DEMO_CHECKPOINT_DIR, tokenizer_max_length=80,
                        defaults=SamplingDefaults(steps=8, width=64, height=64, seconds=17 / 24,
                                                  guidance_scale=3.0, audio_guidance_scale=3.0),
                        lora=LoraConfig(dir=DEMO_LORA_DIR)),
}

# A real LTX-2 checkpoint: the pipeline's own defaults, sizes the model was trained for.
CHECKPOINT_DEFAULTS = SamplingDefaults(steps=30, width=768, height=512, seconds=5.0)


def preset(name: str, **overrides: Any) -> ModelConfig:
    """A built-in preset by name (``tiny``, ``small``, ``demo``), optionally with fields overridden."""
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
    schedule = _checkpoint_schedule(path)
    defaults = CHECKPOINT_DEFAULTS if schedule.sigmas is None else dataclasses.replace(
        CHECKPOINT_DEFAULTS, steps=len(schedule.sigmas))
    kwargs: dict[str, Any] = dict(name="checkpoint", checkpoint_dir=path, defaults=defaults, schedule=schedule,
                                  num_threads=None, tokenizer_max_length=_prompt_tokens(path))
    kwargs.update(overrides)
    return ModelConfig(**kwargs)


def _checkpoint_schedule(path: Path) -> ScheduleConfig:
    """The fixed sigma lists a checkpoint's scheduler config carries (a distilled checkpoint's), if any."""
    try:
        conf = json.loads((path / "scheduler" / "scheduler_config.json").read_text())
    except (OSError, ValueError):
        conf = {}
    found = {key: tuple(conf[name]) for key, name in (("sigmas", "sigmas"), ("refine_sigmas", "stage_2_sigmas"))
             if isinstance(conf.get(name), list)}
    return load(ScheduleConfig, found, "model.schedule")


def _prompt_tokens(path: Path) -> int:
    """The checkpoint's prompt length: its tokenizer's, unless that is the "unbounded" sentinel
    Gemma tokenizers ship with; then LTX2Pipeline's default of 1024."""
    try:
        n = int(json.loads((path / "tokenizer" / "tokenizer_config.json").read_text()).get("model_max_length", 0))
    except (OSError, ValueError):
        n = 0
    return n if 8 <= n <= 4096 else 1024


def from_mapping(data: Mapping[str, Any]) -> ModelConfig:
    """A config from a plain ``model:`` mapping: ``preset`` (tiny, small, or checkpoint with
    ``checkpoint_dir``) and any field of `ModelConfig` over it; nested sections merge key by key."""
    data = dict(data)
    name = data.pop("preset", "tiny")
    if name == "checkpoint":
        if "checkpoint_dir" not in data:
            raise ConfigError("model.checkpoint_dir", "is required when preset is 'checkpoint'")
        base = checkpoint(data["checkpoint_dir"])
    else:
        if "checkpoint_dir" in data:
            raise ConfigError("model.checkpoint_dir", "is only valid with preset 'checkpoint'")
        base = preset(name)
    if "name" in data:
        raise ConfigError("model.name", "is the preset's; set model.preset instead")
    return load(ModelConfig, merge(dataclasses.asdict(base), data, "model."), "model")
