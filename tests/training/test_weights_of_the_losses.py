"""What the demo's losses weight, and how its weights are averaged: the object's latent tokens, the audio tokens
of its clicks, the click frames of a mel spectrogram, and a moving average that forgets its untrained start."""

from __future__ import annotations

import numpy as np
import torch
from torch.optim.swa_utils import AveragedModel

from training.audio import click_tokens, transient_weights
from training.dit import warm_ema
from training.video_vae import object_tokens
from training.world import dataset


def test_object_tokens_mark_the_latent_cells_the_object_covers():
    masks = torch.zeros(1, 9, 16, 16, dtype=torch.bool)
    masks[0, 0, 0:2, 0:2] = True  # first frame: top-left cell of an 8x8 grid cell layout
    masks[0, 6, 9:10, 15:16] = True  # frame 6: second group of four (frames 5..8), bottom-right cell
    tokens = object_tokens(masks, spatial=8, temporal=4)
    assert tokens.shape == (1, 3 * 2 * 2)  # latent frames [0], [1..4], [5..8] x 2 x 2 cells
    grid = tokens.view(3, 2, 2)
    assert grid[0, 0, 0] == 1 and grid[2, 1, 1] == 1 and grid.sum() == 2


def test_object_tokens_of_world_clips_cover_the_object_and_little_else():
    clip = dataset(1, seed=3)[0]
    tokens = object_tokens(torch.from_numpy(clip.masks[None]), spatial=8, temporal=4)
    assert 0 < tokens.mean() < 0.15  # a 14-pixel object on a 64x64 floor


def test_click_tokens_sit_where_the_contacts_are():
    tokens = click_tokens([(3,), (), (0, 16)], fps=24.0, audio_tokens=18, latents_per_second=25.0)
    assert tokens[0].nonzero().flatten().tolist() == [3, 4]  # 0.125 s -> latent 3 (40 ms each) and the next
    assert not tokens[1].any()
    assert tokens[2].nonzero().flatten().tolist() == [0, 1, 16, 17]


def test_transient_weights_rise_on_a_click_frame_only():
    mel = torch.zeros(1, 2, 20, 16)
    mel[..., 7, :] = 5.0  # one click frame in a steady hum
    w = transient_weights(mel, 20.0)
    assert w.shape == (1, 1, 20, 1)
    assert w[0, 0, 7, 0] == 21.0 and (w[0, 0, np.r_[0:7, 8:20], 0] == 1.0).all()
    assert torch.equal(transient_weights(mel, 0.0), torch.ones(1, 1, 20, 1))


def test_the_moving_average_warms_up_and_then_keeps_its_decay():
    model = torch.nn.Linear(1, 1, bias=False)
    with torch.no_grad():
        model.weight.fill_(0.0)
    ema = AveragedModel(model, multi_avg_fn=warm_ema(0.999))
    with torch.no_grad():
        model.weight.fill_(1.0)
    ema.update_parameters(model)  # the first update copies (AveragedModel's own)
    for _ in range(200):
        ema.update_parameters(model)
    # A fixed 0.999 would still hold 0.999**200 = 82% of the start (0); the warm-up has forgotten it.
    assert ema.module.weight.item() > 0.99
