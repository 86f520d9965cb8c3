"""Builds or loads the LTX-2 components (diffusers + transformers classes) for a `ModelConfig`.

In-code presets build each component from its config with a seed of its own, so any subset
of components is the same as those of the full set (a stage loads only what it runs). A
checkpoint directory is read the way diffusers reads it (``model_index.json`` names each
component's library and class) with ``local_files_only``; nothing is ever downloaded.
"""

from __future__ import annotations

import importlib
import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import torch

from engines.config import Architecture, ModelConfig
from engines.errors import CheckpointError
from engines.geometry import latent_geometry
from engines.runtime import torch_dtype
from engines.stage_io import LatentGeometry
from engines.tokenizer import build_tokenizer

log = logging.getLogger(__name__)

# Component name -> (library, class) for in-code presets; a checkpoint's model_index.json wins.
DEFAULT_CLASSES: dict[str, tuple[str, str]] = {
    "tokenizer": ("transformers", "GemmaTokenizer"),
    "text_encoder": ("transformers", "Gemma3ForConditionalGeneration"),
    "connectors": ("diffusers.pipelines.ltx2", "LTX2TextConnectors"),
    "transformer": ("diffusers", "LTX2VideoTransformer3DModel"),
    "vae": ("diffusers", "AutoencoderKLLTX2Video"),
    "audio_vae": ("diffusers", "AutoencoderKLLTX2Audio"),
    "vocoder": ("diffusers.pipelines.ltx2", "LTX2Vocoder"),
    "scheduler": ("diffusers", "FlowMatchEulerDiscreteScheduler"),
    # Two-stage generation only; a checkpoint holds it beside the pipeline's (its model_index.json
    # does not list it: LTX2Pipeline has no such argument).
    "latent_upsampler": ("diffusers.pipelines.ltx2", "LTX2LatentUpsamplerModel"),
}
OPTIONAL_PARTS = ("latent_upsampler",)  # a checkpoint without one serves one-stage requests only
# What each stage engine needs.
TEXT_ENCODER_PARTS = ("tokenizer", "text_encoder", "connectors")
DENOISER_PARTS = ("transformer", "scheduler")
DECODER_PARTS = ("vae", "audio_vae", "vocoder")
UPSAMPLER_PARTS = ("vae", "latent_upsampler")
VIDEO_ENCODER_PARTS = ("vae",)
ALL_PARTS = tuple(DEFAULT_CLASSES)
PIPELINE_PARTS = tuple(n for n in DEFAULT_CLASSES if n not in OPTIONAL_PARTS)  # what LTX2Pipeline takes
_NN_PARTS = ("text_encoder", "connectors", "transformer", "vae", "audio_vae", "vocoder", "latent_upsampler")


@dataclass
class Components:
    """The pipeline's modules; a stage holds only the ones it runs (others are None)."""

    tokenizer: Any = None
    text_encoder: Any = None
    connectors: Any = None
    transformer: Any = None
    vae: Any = None
    audio_vae: Any = None
    vocoder: Any = None
    scheduler: Any = None
    latent_upsampler: Any = None

    def pipeline_parts(self) -> dict[str, Any]:
        """What diffusers' LTX-2 pipelines take (every component but the latent upsampler)."""
        return {name: getattr(self, name) for name in PIPELINE_PARTS}

    def pipeline(self):
        """The diffusers `LTX2Pipeline` over these very modules (needs all of its own)."""
        from diffusers import LTX2Pipeline

        parts = self.pipeline_parts()
        missing = [k for k, v in parts.items() if v is None]
        if missing:
            raise ValueError(f"LTX2Pipeline needs every component; missing {missing}")
        pipe = LTX2Pipeline(**parts)
        pipe.set_progress_bar_config(disable=True)
        return pipe


# What each encoder block downsamples and each decoder block upsamples, per `VideoVAEConfig`'s (spatial,
# temporal) compression (`engines.config.VIDEO_VAE_LAYOUTS`); a block whose scaling is False keeps its size.
_VIDEO_VAE_LAYOUTS: dict[tuple[int, int], dict[str, Any]] = {
    (32, 8): dict(patch_size=4, spatio_temporal_scaling=(True, True, True, True),
                  downsample_type=("spatial", "temporal", "spatiotemporal", "spatiotemporal"),
                  decoder_spatio_temporal_scaling=(True, True, True), upsample_type=("spatiotemporal",) * 3,
                  upsample_factor=(2, 2, 2)),
    (8, 8): dict(patch_size=2, spatio_temporal_scaling=(True, True, True, False),
                 downsample_type=("temporal", "spatiotemporal", "spatiotemporal", "spatial"),
                 decoder_spatio_temporal_scaling=(True, True, True),
                 upsample_type=("spatiotemporal", "spatiotemporal", "temporal"), upsample_factor=(2, 2, 2)),
    (8, 4): dict(patch_size=2, spatio_temporal_scaling=(True, True, False, False),
                 downsample_type=("spatiotemporal", "spatiotemporal", "spatial", "spatial"),
                 decoder_spatio_temporal_scaling=(False, True, True),  # the last decoder block keeps its size
                 upsample_type=("spatiotemporal",) * 3, upsample_factor=(1, 2, 2)),
}


def _architecture_configs(arch: Architecture, vocab_size: int) -> dict[str, dict[str, Any]]:
    """Constructor configs of each component for an in-code architecture (LTX-2 shape couplings)."""
    te, cn, tr = arch.text_encoder, arch.connectors, arch.transformer
    v, a, vo = arch.video_vae, arch.audio_vae, arch.vocoder
    latent_mel = a.mel_bins // 4
    return {
        "connectors": dict(
            caption_channels=te.hidden_size, text_proj_in_factor=te.num_layers + 1,  # layers + embeddings
            video_connector_num_attention_heads=cn.num_attention_heads,
            video_connector_attention_head_dim=te.hidden_size // cn.num_attention_heads,
            video_connector_num_layers=cn.num_layers,
            video_connector_num_learnable_registers=cn.num_learnable_registers,
            audio_connector_num_attention_heads=cn.num_attention_heads,
            audio_connector_attention_head_dim=te.hidden_size // cn.num_attention_heads,
            audio_connector_num_layers=cn.num_layers,
            audio_connector_num_learnable_registers=cn.num_learnable_registers,
            connector_rope_base_seq_len=32, rope_double_precision=False, rope_type="split"),
        "transformer": dict(
            in_channels=v.latent_channels, out_channels=v.latent_channels, patch_size=1, patch_size_t=1,
            num_attention_heads=tr.video_num_heads, attention_head_dim=tr.video_head_dim,
            cross_attention_dim=tr.video_num_heads * tr.video_head_dim,
            audio_in_channels=a.latent_channels * latent_mel, audio_out_channels=a.latent_channels * latent_mel,
            audio_num_attention_heads=tr.audio_num_heads, audio_attention_head_dim=tr.audio_head_dim,
            audio_cross_attention_dim=tr.audio_num_heads * tr.audio_head_dim,
            audio_sampling_rate=a.sample_rate, audio_hop_length=a.mel_hop_length,
            vae_scale_factors=(v.temporal_compression, v.spatial_compression, v.spatial_compression),
            num_layers=tr.num_layers, caption_channels=te.hidden_size,
            rope_double_precision=False, rope_type="split"),
        "vae": dict(
            in_channels=3, out_channels=3, latent_channels=v.latent_channels,
            block_out_channels=v.encoder_block_out_channels, layers_per_block=(1, 1, 1, 1, 1),
            decoder_block_out_channels=v.decoder_block_out_channels, decoder_layers_per_block=(1, 1, 1, 1),
            decoder_inject_noise=(False,) * 4, upsample_residual=(True, True, True),
            timestep_conditioning=False, patch_size_t=1,
            **_VIDEO_VAE_LAYOUTS[(v.spatial_compression, v.temporal_compression)],
            spatial_compression_ratio=v.spatial_compression, temporal_compression_ratio=v.temporal_compression),
        "audio_vae": dict(
            base_channels=a.latent_channels * latent_mel,  # also the size of latents_mean/std
            output_channels=2, ch_mult=(1,), num_res_blocks=1, in_channels=2, resolution=32,
            latent_channels=a.latent_channels, mel_bins=a.mel_bins, sample_rate=a.sample_rate,
            mel_hop_length=a.mel_hop_length),
        "vocoder": dict(
            in_channels=2 * a.mel_bins, hidden_channels=vo.hidden_channels, out_channels=2,
            upsample_kernel_sizes=list(vo.upsample_kernel_sizes), upsample_factors=list(vo.upsample_factors),
            resnet_kernel_sizes=[3], resnet_dilations=[[1, 3, 5]], output_sampling_rate=vo.output_sample_rate),
        "text_encoder": {**{f.name: getattr(te, f.name) for f in fields(te)},
                         "vocab_size": te.vocab_size or vocab_size},
        "scheduler": {},
        "latent_upsampler": dict(
            in_channels=v.latent_channels, mid_channels=arch.latent_upsampler.mid_channels,
            num_blocks_per_stage=arch.latent_upsampler.num_blocks_per_stage, dims=3, spatial_upsample=True,
            temporal_upsample=False, rational_spatial_scale=2.0, use_rational_resampler=True),
    }


def _build_gemma(cfg: dict[str, Any], tokenizer) -> torch.nn.Module:
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration, Gemma3TextConfig, SiglipVisionConfig

    n = len(tokenizer)
    text = Gemma3TextConfig(
        vocab_size=cfg["vocab_size"] or n, hidden_size=cfg["hidden_size"],
        intermediate_size=cfg["intermediate_size"], num_hidden_layers=cfg["num_layers"],
        num_attention_heads=cfg["num_attention_heads"], num_key_value_heads=cfg["num_key_value_heads"],
        head_dim=cfg["head_dim"], max_position_embeddings=256, sliding_window=64,
        pad_token_id=tokenizer.pad_token_id)
    # The class needs a vision tower; a minimal one (image prompts are not used by Kino).
    vision = SiglipVisionConfig(hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                                num_attention_heads=2, image_size=28, patch_size=14)
    config = Gemma3Config(text_config=text, vision_config=vision, mm_tokens_per_image=4,
                          boi_token_index=n, eoi_token_index=n + 1, image_token_index=n + 2)
    return Gemma3ForConditionalGeneration(config)


class ComponentSource:
    """Where components come from: code (random weights) or a checkpoint directory."""

    def __init__(self, config: ModelConfig) -> None:
        self.config = config
        self._index: dict[str, tuple[str, str]] = dict(DEFAULT_CLASSES)
        if config.checkpoint_dir is not None:
            self._index.update(self._read_model_index(config.checkpoint_dir))

    @staticmethod
    def _read_model_index(root: Path) -> dict[str, tuple[str, str]]:
        try:
            raw = json.loads((root / "model_index.json").read_text())
        except (OSError, json.JSONDecodeError) as e:
            raise CheckpointError(f"{root}/model_index.json cannot be read: {e}") from e
        return {k: (v[0], v[1]) for k, v in raw.items()
                if not k.startswith("_") and isinstance(v, list) and len(v) == 2 and v[0] is not None}

    def _class(self, name: str) -> type:
        library, cls = self._index[name]
        # model_index.json names pipeline-local modules by their pipeline ("ltx2").
        for module in (library, f"diffusers.pipelines.{library}"):
            try:
                return getattr(importlib.import_module(module), cls)
            except (ImportError, AttributeError):
                continue
        raise CheckpointError(f"component {name}: class {library}.{cls} cannot be imported")

    def load(self, names: Iterable[str]) -> Components:
        """The named components; an optional one this model does not have stays None."""
        names = [n for n in dict.fromkeys(names) if n not in OPTIONAL_PARTS or self.has(n)]
        unknown = [n for n in names if n not in DEFAULT_CLASSES]
        if unknown:
            raise ValueError(f"unknown components {unknown}; known: {list(DEFAULT_CLASSES)}")
        out = Components()
        for name in names:
            module = self._load_one(name)
            if name in _NN_PARTS:
                # Checkpoints load in their dtype already; in-code weights are built in float32.
                if self.config.checkpoint_dir is None and self.config.dtype != "float32":
                    module = module.to(dtype=torch_dtype(self.config.dtype))
                module = module.to(device=self.config.device).eval()
                module.requires_grad_(False)
            setattr(out, name, module)
        return out

    def _load_one(self, name: str) -> Any:
        cfg = self.config
        if cfg.checkpoint_dir is not None:
            return self._from_checkpoint(name, cfg.checkpoint_dir)
        tokenizer = build_tokenizer(cfg.tokenizer_max_length)
        if name == "tokenizer":
            return tokenizer
        assert cfg.architecture is not None
        conf = _architecture_configs(cfg.architecture, len(tokenizer))[name]
        # Each component draws from a seed of its own: a subset builds the same weights.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(cfg.seed * 1000 + list(DEFAULT_CLASSES).index(name))
            if name == "text_encoder":
                return _build_gemma(conf, tokenizer)
            return self._class(name).from_config(conf)

    def has(self, name: str) -> bool:
        """Whether this model has the component (an optional one may be absent from a checkpoint)."""
        return self.config.checkpoint_dir is None or (self.config.checkpoint_dir / name).is_dir()

    def _from_checkpoint(self, name: str, root: Path) -> Any:
        sub = root / name
        if not sub.is_dir():
            raise CheckpointError(f"checkpoint {root} has no {name}/ component directory")
        cls = self._class(name)
        try:
            if name == "tokenizer":
                from transformers import AutoTokenizer

                return AutoTokenizer.from_pretrained(sub, local_files_only=True)
            if name == "scheduler":
                return cls.from_pretrained(root, subfolder=name, local_files_only=True)
            if name != "latent_upsampler":
                return cls.from_pretrained(root, subfolder=name, local_files_only=True,
                                           torch_dtype=torch_dtype(self.config.dtype))
            module, info = cls.from_pretrained(root, subfolder=name, local_files_only=True, output_loading_info=True,
                                               torch_dtype=torch_dtype(self.config.dtype))
        except (OSError, ValueError) as e:
            raise CheckpointError(f"cannot load {name} from {sub}: {e}") from e
        # Strict: the upsampler's two resampler layouts compute the same thing under different keys, and
        # published configs name them inconsistently; a mismatch must not load default-initialized layers.
        bad = {k: v for k, v in info.items() if k in ("missing_keys", "unexpected_keys", "mismatched_keys") and v}
        if bad:
            raise CheckpointError(f"cannot load {name} from {sub}: its weights do not match its config: {bad}")
        return module

    def geometry(self) -> LatentGeometry:
        """Latent shapes, from the config alone (engines/geometry.py): no weights, no model classes."""
        return latent_geometry(self.config)

def load_components(config: ModelConfig, names: Iterable[str] = ALL_PARTS) -> Components:
    """The named components for `config` on its device and dtype, in eval mode."""
    return ComponentSource(config).load(names)


def save_checkpoint(components: Components, path: str | Path) -> Path:
    """Write a diffusers checkpoint directory (what `checkpoint(path)` loads back), with the latent
    upsampler in its own folder when there is one."""
    path = Path(path)
    components.pipeline().save_pretrained(path, safe_serialization=True)
    if components.latent_upsampler is not None:
        components.latent_upsampler.save_pretrained(path / "latent_upsampler", safe_serialization=True)
    log.info("wrote checkpoint to %s", path)
    return path
