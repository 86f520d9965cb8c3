"""Chunked (temporal chunks x spatial tiles) decoding equals a whole decode."""

import numpy as np
import torch

from engines.config import DecodeConfig
from engines.stage_io import DenoisedLatents, LatentShape

# The tiny video decoder is causal in time with a receptive field of ~14 latent frames and
# ~8 latent pixels (measured by perturbing one latent voxel); context/halo cover it.
EXACT = DecodeConfig(chunk_latent_frames=3, context_latent_frames=14, tile_latent_size=2, tile_halo_latents=8,
                     whole_max_latents=0)


def _random_latents(staged, frames=9, height=3, width=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    c = staged.decoder.geometry.latent_channels
    shape = LatentShape(frames=frames, height=height, width=width, audio_frames=4)
    video = torch.randn(frames * height * width, c, generator=g).numpy()
    audio = np.zeros((4, staged.decoder.geometry.audio_latent_channels * staged.decoder.geometry.latent_mel_bins),
                     np.float32)
    return DenoisedLatents("t", shape, video, audio)


def test_chunked_decode_matches_whole_decode(staged):
    lat = _random_latents(staged)
    whole = staged.decoder.decode_video(lat, chunked=False)
    chunks = list(staged.decoder.iter_video(lat, EXACT))
    assert len(chunks) == 3  # 9 latent frames in chunks of 3
    assert [len(c) for c in chunks] == [17, 24, 24]  # 1 + 8*2, then 8 per latent frame
    chunked = torch.cat(chunks)
    assert chunked.shape == whole.shape == (65, 96, 160, 3)
    assert (chunked - whole).abs().max().item() <= 1e-4


def test_short_context_is_an_approximation(staged):
    """Cutting the context below the receptive field changes frames: the test above is not vacuous."""
    lat = _random_latents(staged)
    whole = staged.decoder.decode_video(lat, chunked=False)
    short = DecodeConfig(chunk_latent_frames=3, context_latent_frames=1, tile_latent_size=2, tile_halo_latents=1,
                         whole_max_latents=0)
    chunked = torch.cat(list(staged.decoder.iter_video(lat, short)))
    assert (chunked - whole).abs().max().item() > 1e-2


def test_small_clips_decode_whole_in_one_chunk(staged):
    lat = _random_latents(staged, frames=5, height=2, width=2)
    chunks = list(staged.decoder.iter_video(lat))  # default config: 20 latents <= whole_max_latents
    assert len(chunks) == 1
    assert (chunks[0] - staged.decoder.decode_video(lat, chunked=False)).abs().max().item() == 0.0
