"""TensorRT DiT backend (NVIDIA GPUs): ONNX export -> engines per shape profile -> execution.

Building is explicit (`kino engines build`) and resumable: the ONNX export is kept beside the
engines, and each engine is cached under a key of GPU, TensorRT version, weights, precision and
profiles (engine_cache.py). A backend created before its engine exists builds it on first use.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path

import torch

from engines.backends.engine_cache import EngineCache, EngineKey, Profile, weights_hash
from engines.backends.onnx_export import INPUTS, OUTPUTS, export_onnx, graph_inputs
from engines.config import ModelConfig
from engines.dit_backend import BackendUnavailable, DiTBackend, DiTInputs
from engines.lora import LoraRows
from engines.model_loader import ComponentSource
from engines.params import GenerationRequest
from engines.stage_io import LatentShape

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class TensorRTSettings:
    cache_dir: Path
    profiles: tuple[Profile, ...]
    text_tokens: int  # prompts are padded to this length (the graph's one static sequence axis)

    @classmethod
    def from_config(cls, config: ModelConfig) -> TensorRTSettings:
        """The engine cache and one optimisation profile per configured (width, height, seconds) bucket."""
        geometry = ComponentSource(config).geometry()
        rows = config.tensorrt.max_rows
        profiles = []
        for w, h, seconds in config.tensorrt.profiles:
            p = GenerationRequest(prompt="x", width=w, height=h, seconds=seconds).validated(config)
            s = LatentShape.for_params(p, geometry)
            profiles.append(Profile(name=f"{w}x{h}x{seconds:g}s", rows=(1, max(1, rows // 2), rows),
                                    video_tokens=(s.video_tokens,) * 3, audio_tokens=(s.audio_frames,) * 3))
        return cls(cache_dir=Path(config.tensorrt.engine_cache_dir), profiles=tuple(profiles),
                   text_tokens=config.tokenizer_max_length)


def _require_tensorrt():
    if not torch.cuda.is_available():
        raise BackendUnavailable("TensorRT needs an NVIDIA GPU and CUDA is not available here")
    try:
        import tensorrt as trt
    except ImportError as e:
        raise BackendUnavailable(f"the tensorrt package is not installed ({e}); pip install 'kino[gpu]'") from None
    return trt


def engine_key(transformer: torch.nn.Module, settings: TensorRTSettings) -> EngineKey:
    trt = _require_tensorrt()
    props = torch.cuda.get_device_properties(transformer.device)
    return EngineKey(gpu=f"{props.name} sm_{props.major}{props.minor}", tensorrt=trt.__version__,
                     weights=weights_hash(transformer), precision=str(transformer.dtype).removeprefix("torch."),
                     profiles=settings.profiles)


def onnx_directory(transformer: torch.nn.Module, settings: TensorRTSettings, weights: str | None = None) -> Path:
    """Where the transformer's ONNX export lives in the cache (per weights and dtype)."""
    weights = weights or weights_hash(transformer)
    return settings.cache_dir / f"onnx-{weights[:16]}-{str(transformer.dtype).removeprefix('torch.')}"


def build_engine(transformer: torch.nn.Module, settings: TensorRTSettings) -> tuple[Path, bool]:
    """Build (or find) the engine for `transformer`; (path, built now)."""
    trt = _require_tensorrt()
    key = engine_key(transformer, settings)
    cache = EngineCache(settings.cache_dir)

    def build() -> bytes:
        # Resumable: a previous run's complete export is reused (export_onnx returns it).
        onnx_path = export_onnx(transformer, onnx_directory(transformer, settings, key.weights),
                                text_tokens=settings.text_tokens)
        logger = trt.Logger(trt.Logger.WARNING)
        builder = trt.Builder(logger)
        # Strongly typed: the graph's own dtypes (the transformer's bf16/fp16 weights and the
        # float32 islands diffusers keeps, e.g. RoPE and norms) decide precision, not builder flags.
        network = builder.create_network(1 << int(trt.NetworkDefinitionCreationFlag.STRONGLY_TYPED))
        parser = trt.OnnxParser(network, logger)
        if not parser.parse_from_file(str(onnx_path)):
            errors = "; ".join(str(parser.get_error(i)) for i in range(parser.num_errors))
            raise RuntimeError(f"TensorRT cannot parse {onnx_path}: {errors}")
        config = builder.create_builder_config()
        for p in settings.profiles:
            profile = builder.create_optimization_profile()
            for name, dims in _shapes(transformer, p, settings.text_tokens).items():
                profile.set_shape(name, *dims)
            config.add_optimization_profile(profile)
        log.info("building a TensorRT engine for %d profile(s); this takes minutes", len(settings.profiles))
        plan = builder.build_serialized_network(network, config)
        if plan is None:
            raise RuntimeError("TensorRT failed to build the engine (see its log above)")
        return bytes(plan)

    _, built = cache.get_or_build(key, build)
    return cache.path(key), built


def _shapes(transformer: torch.nn.Module, p: Profile, tt: int) -> dict[str, tuple[tuple[int, ...], ...]]:
    """(min, opt, max) shapes of every input for one profile."""
    cfg = transformer.config
    out = {}
    for i in range(3):
        rows, vt, at = p.rows[i], p.video_tokens[i], p.audio_tokens[i]
        dims = {"video": (rows, vt, cfg.in_channels), "audio": (rows, at, cfg.audio_in_channels),
                "video_context": (rows, tt, cfg.caption_channels), "audio_context": (rows, tt, cfg.caption_channels),
                "context_mask": (rows, tt), "timestep": (rows,), "video_timestep": (rows, vt),
                "video_coords": (rows, 3, vt, 2), "audio_coords": (rows, 1, at, 2)}
        for name, shape in dims.items():
            out.setdefault(name, []).append(shape)
    return {k: tuple(v) for k, v in out.items()}


class TensorRTBackend(DiTBackend):
    name = "tensorrt"

    def __init__(self, transformer: torch.nn.Module, settings: TensorRTSettings) -> None:
        trt = _require_tensorrt()
        super().__init__(transformer)
        path, built = build_engine(transformer, settings)
        log.info("TensorRT engine %s (%s)", path, "built now" if built else "from the cache")
        self.runtime = trt.Runtime(trt.Logger(trt.Logger.WARNING))
        self.engine = self.runtime.deserialize_cuda_engine(path.read_bytes())
        self.context = self.engine.create_execution_context()
        self.profiles = settings.profiles
        self.stream = torch.cuda.Stream(device=transformer.device)

    def _profile_for(self, inputs: DiTInputs) -> int:
        rows, vt, at = inputs.video.shape[0], inputs.video.shape[1], inputs.audio.shape[1]
        for i, p in enumerate(self.profiles):
            if p.rows[0] <= rows <= p.rows[2] and p.video_tokens[0] <= vt <= p.video_tokens[2] \
                    and p.audio_tokens[0] <= at <= p.audio_tokens[2]:
                return i
        raise ValueError(f"no TensorRT profile covers rows={rows}, video tokens={vt}, audio tokens={at}; "
                         "add one (kino engines build --profile ...)")

    @torch.inference_mode()
    def forward(self, inputs: DiTInputs, lora: LoraRows | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        tensors = graph_inputs(inputs, self.transformer.dtype)
        outputs = {"video_velocity": torch.empty_like(tensors["video"]),
                   "audio_velocity": torch.empty_like(tensors["audio"])}
        self.context.set_optimization_profile_async(self._profile_for(inputs), self.stream.cuda_stream)
        for name in INPUTS:
            self.context.set_input_shape(name, tuple(tensors[name].shape))
            self.context.set_tensor_address(name, tensors[name].data_ptr())
        for name in OUTPUTS:
            self.context.set_tensor_address(name, outputs[name].data_ptr())
        if not self.context.execute_async_v3(self.stream.cuda_stream):
            raise RuntimeError("TensorRT execution failed")
        self.stream.synchronize()
        return outputs["video_velocity"].float(), outputs["audio_velocity"].float()
