"""How far an approximate output is from the exact one: PSNR and SSIM of decoded frames, SNR of audio.

Frames are float [F, H, W, 3] in [0, 1] as `Decoder.decode_video` returns them. SSIM is
`pytorch_msssim`'s (gaussian window 11, sigma 1.5, as in Wang et al. 2004) on BT.601 luma, per
frame, averaged over the frames.
"""

from __future__ import annotations

import math

import numpy as np
import torch
from pytorch_msssim import ssim

_LUMA = torch.tensor([0.299, 0.587, 0.114])


def psnr(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """Peak signal-to-noise ratio in dB over all pixels (peak 1); inf when identical."""
    mse = float(((frames.double() - reference.double()) ** 2).mean())
    return math.inf if mse == 0 else 10 * math.log10(1.0 / mse)


def ssim_luma(frames: torch.Tensor, reference: torch.Tensor) -> float:
    """Mean structural similarity of the frames' luma (1: identical)."""
    def luma(x: torch.Tensor) -> torch.Tensor:
        return (x.float() @ _LUMA.to(x.device))[:, None]  # [F, 1, H, W]

    return float(ssim(luma(frames), luma(reference), data_range=1.0, size_average=False).mean())


def snr(samples: np.ndarray, reference: np.ndarray) -> float:
    """Signal-to-noise ratio of a waveform against the reference, dB; inf when identical."""
    noise = float(np.sum((samples.astype(np.float64) - reference) ** 2))
    return math.inf if noise == 0 else 10 * math.log10(float(np.sum(reference.astype(np.float64) ** 2)) / noise)
