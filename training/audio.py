"""Stage 1b: the LTX-2 audio VAE (`AutoencoderKLLTX2Audio`) on log-mel spectrograms, then the vocoder
(`LTX2Vocoder`) from log-mel back to the 24 kHz waveform.

The audio VAE trains as a plain autoencoder on its posterior's mode (as the video VAE does), its L1 loss weighted
towards the frames where a click rises above the hum (`transient_weights`), over mel clips of ``4 L - 3`` frames,
the length its causal decoder returns for ``L`` latent frames, so encoding and decoding a
clip's mel round-trips exactly what Kino's decoder will ask of it. The vocoder trains on the world's own
(mel, waveform) pairs with a multi-resolution STFT loss plus a mel loss, on slightly noised mels because it will
read the audio VAE's reconstructions; no discriminator: the world's sounds (a hum and clicks) need none.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import LTX2Pipeline

from training.mel import LogMel
from training.recipe import AudioRecipe

StepReport = Callable[[int, dict[str, float]], None]
STFT_RESOLUTIONS = ((128, 32), (512, 128), (2048, 512))  # (n_fft, hop): clicks, hum and in between


def mel_clip_frames(latent_frames: int) -> int:
    """Mel frames the causal audio decoder returns for `latent_frames` latents (and encodes back to them)."""
    return 4 * latent_frames - 3


def transient_weights(mels: torch.Tensor, strength: float) -> torch.Tensor:
    """Per mel frame loss weights ``[B, 1, T, 1]``: 1, plus `strength` times how far the frame rises above the
    clip's median frame (relative to the clip's largest rise). Clicks are a few frames of a clip otherwise
    filled by the hum; unweighted, an L1 loss is best served by smoothing them away."""
    rise = (mels - mels.median(dim=2, keepdim=True).values).clamp_min(0).mean(dim=(1, 3), keepdim=True)
    return 1 + strength * rise / rise.amax(dim=2, keepdim=True).clamp_min(1e-6)


def train_audio_vae(audio_vae, mels: torch.Tensor, recipe: AudioRecipe, seed: int, on_step: StepReport) -> None:
    """Train `audio_vae` in place on log-mels ``[N, 2, T, mel_bins]`` (T = `mel_clip_frames`)."""
    r = recipe
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(audio_vae.parameters(), lr=r.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.vae_steps, pct_start=0.05)
    audio_vae.train()
    for step in range(r.vae_steps):
        x = mels[torch.randint(0, len(mels), (r.batch,), generator=gen)]
        weight = transient_weights(x, r.transient_weight)
        z = audio_vae.encode(x).latent_dist.mode()
        y = audio_vae.decode(z + r.latent_noise * torch.randn(z.shape, generator=gen), return_dict=False)[0]
        reconstruction = ((y - x).abs() * weight).mean() / weight.mean()
        loss = reconstruction + r.latent_l2 * z.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(audio_vae.parameters(), 1.0)
        opt.step()
        schedule.step()
        on_step(step, {"mel_l1": reconstruction.item()})
    audio_vae.eval()


def stft_loss(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Multi-resolution STFT loss (spectral convergence + log-magnitude L1) of waveforms ``[B, samples]``."""
    total = pred.new_zeros(())
    for n_fft, hop in STFT_RESOLUTIONS:
        window = torch.hann_window(n_fft, device=pred.device)
        p, t = (torch.stft(x, n_fft, hop, n_fft, window, return_complex=True).abs().clamp_min(1e-6)
                for x in (pred, target))
        total = total + torch.linalg.norm(t - p) / torch.linalg.norm(t) + (p.log() - t.log()).abs().mean()
    return total / len(STFT_RESOLUTIONS)


def train_vocoder(vocoder, log_mel: LogMel, mels: torch.Tensor, waves: torch.Tensor, recipe: AudioRecipe, seed: int,
                  on_step: StepReport) -> None:
    """Train `vocoder` in place: log-mels ``[N, 2, T, mel_bins]`` -> waveforms ``[N, 2, samples]``."""
    r = recipe
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vocoder.parameters(), lr=r.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.vocoder_steps, pct_start=0.05)
    vocoder.train()
    for step in range(r.vocoder_steps):
        idx = torch.randint(0, len(mels), (r.vocoder_batch,), generator=gen)
        mel = mels[idx]
        wave = vocoder(mel + r.mel_noise * torch.randn(mel.shape, generator=gen))
        target = waves[idx, :, : wave.shape[-1]]
        wave = wave[..., : target.shape[-1]]
        spectral = stft_loss(wave.flatten(0, 1), target.flatten(0, 1))
        mel_error = (log_mel(wave)[:, :, : mel.shape[2]] - mel[:, :, : log_mel.frames(wave.shape[-1])]).abs().mean()
        loss = spectral + mel_error
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vocoder.parameters(), 1.0)
        opt.step()
        schedule.step()
        on_step(step, {"stft": spectral.item(), "mel_l1": mel_error.item()})
    vocoder.eval()


@torch.no_grad()
def encode_audio_latents(audio_vae, mels: torch.Tensor, batch: int = 64) -> torch.Tensor:
    """Packed, unnormalized audio latents ``[N, L, C * latent_mel_bins]`` (the posterior modes)."""
    return torch.cat([LTX2Pipeline._pack_audio_latents(audio_vae.encode(mels[i:i + batch]).latent_dist.mode())
                      for i in range(0, len(mels), batch)])


@torch.no_grad()
def fit_audio_statistics(audio_vae, packed: torch.Tensor) -> None:
    """Per packed-channel mean and std into the audio VAE's ``latents_mean/std`` buffers (what
    `LTX2Pipeline._normalize_audio_latents` and Kino's decoder apply)."""
    audio_vae.latents_mean.copy_(packed.mean(dim=(0, 1)))
    audio_vae.latents_std.copy_(packed.std(dim=(0, 1)).clamp_min(1e-4))


def normalize_audio(audio_vae, packed: torch.Tensor) -> torch.Tensor:
    return LTX2Pipeline._normalize_audio_latents(packed, audio_vae.latents_mean, audio_vae.latents_std)


def click_tokens(contact_frames: list[tuple[int, ...]], fps: float, audio_tokens: int,
                 latents_per_second: float) -> torch.Tensor:
    """``[N, audio tokens]`` float: 1 for the audio latent frames around each contact's click (the one its start
    falls in and the next, which the causal decoder also draws it from), else 0."""
    out = torch.zeros(len(contact_frames), audio_tokens)
    for row, frames in enumerate(contact_frames):
        for frame in frames:
            i = int(frame / fps * latents_per_second)
            out[row, i: i + 2] = 1.0
    return out
