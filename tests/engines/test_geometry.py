"""The latent geometry read off a config (engines/geometry.py, no torch) is what the model classes say it is."""

from __future__ import annotations

import json

import pytest

from engines.config import checkpoint, preset
from engines.geometry import DEFAULT_IMAGE_CRF, LTX2_5_IMAGE_CRF, latent_geometry
from engines.model_loader import ComponentSource, save_checkpoint
from engines.stage_io import LatentGeometry


def _from_the_classes(config) -> LatentGeometry:
    """What the diffusers classes compute in their constructors, on config-only (meta-device) instances."""
    from accelerate import init_empty_weights

    source = ComponentSource(config)
    mods = {}
    for name in ("vae", "audio_vae", "transformer", "vocoder"):
        cls = source._class(name)
        conf = (cls.load_config(config.checkpoint_dir, subfolder=name, local_files_only=True)
                if config.checkpoint_dir is not None else None)
        if conf is None:
            from engines.model_loader import _architecture_configs

            conf = _architecture_configs(config.architecture, 0)[name]
        with init_empty_weights():
            mods[name] = cls.from_config(conf)
    vae, audio, tr, voc = mods["vae"], mods["audio_vae"], mods["transformer"], mods["vocoder"]
    return LatentGeometry(
        spatial_compression=vae.spatial_compression_ratio, temporal_compression=vae.temporal_compression_ratio,
        latent_channels=tr.config.in_channels, patch_size=tr.config.patch_size, patch_size_t=tr.config.patch_size_t,
        audio_latent_channels=audio.config.latent_channels, mel_bins=audio.config.mel_bins,
        mel_compression=audio.mel_compression_ratio, audio_temporal_compression=audio.temporal_compression_ratio,
        audio_sample_rate=audio.config.sample_rate, audio_hop_length=audio.config.mel_hop_length,
        audio_output_sample_rate=voc.config.output_sampling_rate,
        timestep_conditioned_vae=bool(vae.config.timestep_conditioning), image_crf=DEFAULT_IMAGE_CRF)


@pytest.mark.parametrize("name", ["tiny", "small", "demo"])
def test_each_presets_geometry_is_what_its_classes_compute(name):
    config = preset(name)
    assert latent_geometry(config) == _from_the_classes(config)


def test_a_checkpoints_geometry_is_read_from_its_config_files(staged, tmp_path):
    ckpt = save_checkpoint(staged.components, tmp_path / "ckpt")
    config = checkpoint(ckpt)
    assert latent_geometry(config) == _from_the_classes(config) == latent_geometry(staged.config)
    vae_conf = ckpt / "vae" / "config.json"  # a config that leaves the ratios to the constructor's rule
    conf = json.loads(vae_conf.read_text())
    conf.pop("spatial_compression_ratio"), conf.pop("temporal_compression_ratio")
    conf.update(patch_size=4, patch_size_t=1, spatio_temporal_scaling=[True, True, True, False])
    vae_conf.write_text(json.dumps(conf))
    assert (latent_geometry(config).spatial_compression, latent_geometry(config).temporal_compression) == (32, 8)
    assert latent_geometry(config) == _from_the_classes(config)


def test_the_image_crfs_are_diffusers_own():
    from diffusers.pipelines.ltx2 import utils

    assert (DEFAULT_IMAGE_CRF, LTX2_5_IMAGE_CRF) == (utils.DEFAULT_IMAGE_CRF, utils.LTX2_5_IMAGE_CRF)
