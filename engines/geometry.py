"""A model's latent geometry from its configuration alone: plain arithmetic, no torch, no weights.

How many latent frames, rows, columns and audio latents a request becomes decides what it costs in one
forward (the front door's token budget, serving/videos/capacity.py) and how the engines shape their
tensors. It follows from the config: the in-code architecture of the random-weight presets, or the
components' config.json files of a checkpoint, read with the rules diffusers' classes apply in their
constructors (cited below). So a process that only checks requests (a Frontend replica) never imports
the model classes; `tests/engines/test_geometry.py` holds these rules equal to what the loaded modules say.
"""

from __future__ import annotations

import functools
import json
from pathlib import Path
from typing import Any

from engines.config import ModelConfig
from engines.errors import CheckpointError
from engines.stage_io import LatentGeometry

# diffusers.models.autoencoders.autoencoder_kl_ltx2_audio.LATENT_DOWNSAMPLE_FACTOR: the audio VAE compresses
# time and mel bins 4x whatever its config says.
AUDIO_LATENT_DOWNSAMPLE = 4
# diffusers.pipelines.ltx2.utils: the H.264 CRF an image is compressed with before conditioning (LTX-2.5's
# Gemma-4 family was trained with another).
DEFAULT_IMAGE_CRF, LTX2_5_IMAGE_CRF = 33, 18
# AutoencoderKLLTX2Video's constructor defaults, for a config.json that leaves them out.
_VAE_DEFAULTS = {"patch_size": 4, "patch_size_t": 1, "spatio_temporal_scaling": (True, True, True, True),
                 "timestep_conditioning": False}


def latent_geometry(config: ModelConfig) -> LatentGeometry:
    """The geometry of `config`'s model (engines.model_loader.ComponentSource.geometry returns this)."""
    if config.checkpoint_dir is not None:
        return _from_checkpoint(Path(config.checkpoint_dir))
    arch = config.architecture
    assert arch is not None, "a ModelConfig has an architecture or a checkpoint_dir"
    v, a = arch.video_vae, arch.audio_vae
    return LatentGeometry(
        spatial_compression=v.spatial_compression, temporal_compression=v.temporal_compression,
        latent_channels=v.latent_channels, patch_size=1, patch_size_t=1,
        audio_latent_channels=a.latent_channels, mel_bins=a.mel_bins, mel_compression=AUDIO_LATENT_DOWNSAMPLE,
        audio_temporal_compression=AUDIO_LATENT_DOWNSAMPLE, audio_sample_rate=a.sample_rate,
        audio_hop_length=a.mel_hop_length, audio_output_sample_rate=arch.vocoder.output_sample_rate,
        timestep_conditioned_vae=False, image_crf=DEFAULT_IMAGE_CRF)


def _read(root: Path, name: str) -> dict[str, Any]:
    path = root / name / "config.json"
    try:
        return json.loads(path.read_text())
    except (OSError, json.JSONDecodeError) as e:
        raise CheckpointError(f"cannot read {path}: {e}") from e


@functools.cache  # a checkpoint's files do not change under a running process
def _from_checkpoint(root: Path) -> LatentGeometry:
    vae = {**_VAE_DEFAULTS, **_read(root, "vae")}
    audio, transformer, vocoder = _read(root, "audio_vae"), _read(root, "transformer"), _read(root, "vocoder")
    scaling = vae["spatio_temporal_scaling"]
    if isinstance(scaling, bool):  # one flag for every block but the last (as the constructor expands it)
        scaling = [scaling] * (len(vae.get("block_out_channels", (0,) * 5)) - 1)
    # AutoencoderKLLTX2Video.__init__: patch size x 2 per scaling block, unless the ratio is given.
    spatial = vae.get("spatial_compression_ratio") or vae["patch_size"] * 2 ** sum(scaling)
    temporal = vae.get("temporal_compression_ratio") or vae["patch_size_t"] * 2 ** sum(scaling)
    text_conf = root / "text_encoder" / "config.json"
    text_type = json.loads(text_conf.read_text()).get("model_type", "") if text_conf.is_file() else ""
    return LatentGeometry(
        spatial_compression=spatial, temporal_compression=temporal,
        latent_channels=transformer.get("in_channels", 128), patch_size=transformer.get("patch_size", 1),
        patch_size_t=transformer.get("patch_size_t", 1), audio_latent_channels=audio.get("latent_channels", 8),
        mel_bins=audio.get("mel_bins", 64), mel_compression=AUDIO_LATENT_DOWNSAMPLE,
        audio_temporal_compression=AUDIO_LATENT_DOWNSAMPLE, audio_sample_rate=audio.get("sample_rate", 16000),
        audio_hop_length=audio.get("mel_hop_length", 160),
        audio_output_sample_rate=int(vocoder.get("output_sampling_rate", 24000)),
        timestep_conditioned_vae=bool(vae["timestep_conditioning"]),
        image_crf=LTX2_5_IMAGE_CRF if text_type in ("gemma4", "gemma4_unified") else DEFAULT_IMAGE_CRF)
