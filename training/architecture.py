"""The demo model's components: the real LTX-2 classes Kino's presets build, at sizes that train on a CPU.

Everything comes from engines' own builder (`engines.model_loader.load_components` over an `Architecture`), so
the demo is the same code path as the ``tiny`` and ``small`` presets, with two departures that a *trained* model
needs and random weights never showed:

- the video VAE compresses 8x in space and 4x in time (`VideoVAEConfig.spatial_compression` and
  ``temporal_compression``), not LTX-2's 32x and 8x: at 64x64 LTX-2's layout leaves a 2x2 latent per 8 frames,
  in which an object 14 pixels wide came back as a blur of roughly its colour that barely moved. 8x8 latents
  of 4 frames each show where the object is and how it moves (measured on held-out clips after a round trip:
  every colour and every motion read right);
- the audio VAE gets three resolution levels (``ch_mult`` of length 3) so it really compresses mel time and
  frequency 4x, the geometry LTX-2's pipeline assumes (`LatentGeometry.audio_temporal_compression`,
  ``mel_compression``). The in-code presets' one-level audio VAE keeps its latents at mel resolution and its
  decoder zero-pads the rest, which random weights never revealed.

The scheduler is the presets' own `FlowMatchEulerDiscreteScheduler` (no shift: sigmas uniform in training, the
pipeline's linear grid at inference). LTX-2's resolution-dependent shift extrapolates to ``mu`` 0.59 (a 1.8x
shift) at the demo's 12 video tokens, far below the 1024 tokens its line is fitted on; the demo model was trained
without it, so its checkpoint ships without it.

The text encoder is the tiny preset's Gemma-3 with its seeded random weights, frozen: the same architecture and
seed give the very same weights, so no text model is trained or shipped that Kino could not build itself.
"""

from __future__ import annotations

import torch
from diffusers import AutoencoderKLLTX2Audio

from engines.config import (
    Architecture,
    AudioVAEConfig,
    ConnectorConfig,
    ModelConfig,
    TextEncoderConfig,
    TransformerConfig,
    VideoVAEConfig,
    VocoderConfig,
)
from engines.model_loader import Components, load_components

DEMO_ARCHITECTURE = Architecture(
    text_encoder=TextEncoderConfig(),  # the tiny preset's: frozen, never trained
    connectors=ConnectorConfig(num_attention_heads=4, num_layers=1),
    transformer=TransformerConfig(num_layers=4, video_num_heads=4, video_head_dim=16, audio_num_heads=2,
                                  audio_head_dim=16),
    video_vae=VideoVAEConfig(latent_channels=16, encoder_block_out_channels=(16, 32, 32, 32),
                             decoder_block_out_channels=(16, 32, 64), spatial_compression=8,
                             temporal_compression=4),
    audio_vae=AudioVAEConfig(latent_channels=4, mel_bins=16),
    vocoder=VocoderConfig(hidden_channels=32),
)
AUDIO_VAE_CH_MULT = (1, 1, 1)  # three levels, two 2x downsamplings: 4x in mel time and in mel bins
PROMPT_TOKENS = 80  # the longest world caption is 75 characters (the tokenizer is character level) + <bos>
PARTS = ("tokenizer", "text_encoder", "connectors", "transformer", "vae", "audio_vae", "vocoder", "scheduler")
TRAINABLE = ("connectors", "transformer", "vae", "audio_vae", "vocoder")

TRAINING_CONFIG = ModelConfig(name="demo", architecture=DEMO_ARCHITECTURE, tokenizer_max_length=PROMPT_TOKENS,
                              seed=0, num_threads=None)


def build_components(seed: int = 0) -> Components:
    """Untrained demo components (seeded), trainable ones in train mode with gradients on."""
    config = TRAINING_CONFIG.replace(seed=seed)
    comps = load_components(config, PARTS)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed * 1000 + 99)
        comps.audio_vae = AutoencoderKLLTX2Audio.from_config({**comps.audio_vae.config, "ch_mult": AUDIO_VAE_CH_MULT})
    for name in TRAINABLE:
        getattr(comps, name).train().requires_grad_(True)
    return comps


def parameter_count(module: torch.nn.Module) -> int:
    return sum(p.numel() for p in module.parameters())

