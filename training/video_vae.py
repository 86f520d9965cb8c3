"""Stage 1a: the LTX-2 video VAE (`AutoencoderKLLTX2Video`) as an autoencoder of the world's clips.

The demo's VAE compresses 8x in space and 4x in time (`training.architecture`): a clip's first frame is a latent
frame of its own (what image-to-video keeps), each later one holds four frames of motion. It trains on whole clips,
its loss weighted towards the object's pixels, as a plain autoencoder on the posterior's mode,
the latents LTX-2's pipelines condition on, with a little latent noise so the decoder tolerates imprecise latents,
and a small penalty on the latents' norm in place of the KL term (the latents are normalized by their measured
statistics before the DiT sees them, as in LTX-2).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from diffusers import LTX2Pipeline

from training.recipe import VideoVAERecipe

StepReport = Callable[[int, dict[str, float]], None]


def to_pixels(video: torch.Tensor) -> torch.Tensor:
    """uint8 ``[N, F, H, W, 3]`` -> float ``[N, 3, F, H, W]`` in [-1, 1] (what VideoProcessor gives the VAE)."""
    return video.permute(0, 4, 1, 2, 3).float() / 127.5 - 1.0


def train_video_vae(vae, videos: torch.Tensor, masks: torch.Tensor, recipe: VideoVAERecipe, seed: int,
                    on_step: StepReport) -> None:
    """Train `vae` in place on uint8 clips ``[N, F, H, W, 3]`` with object masks ``[N, F, H, W]``."""
    r = recipe
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(vae.parameters(), lr=r.lr, weight_decay=0.0)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.steps, pct_start=0.05)
    vae.train()
    for step in range(r.steps):
        idx = torch.randint(0, len(videos), (r.batch,), generator=gen)
        clip, mask = videos[idx], masks[idx]
        x = to_pixels(clip)
        weight = 1.0 + r.object_weight * mask[:, None].float()
        z = vae.encode(x).latent_dist.mode()
        y = vae.decode(z + r.latent_noise * torch.randn(z.shape, generator=gen), return_dict=False)[0]
        err = y - x
        reconstruction = ((err.abs() + err.square()) * weight).mean()
        loss = reconstruction + r.latent_l2 * z.square().mean()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(vae.parameters(), 1.0)
        opt.step()
        schedule.step()
        with torch.no_grad():
            psnr = 10 * torch.log10(4.0 / err.detach().clamp(-2, 2).square().mean()).item()
        on_step(step, {"reconstruction": reconstruction.item(), "psnr_db": psnr})
    vae.eval()


@torch.no_grad()
def encode_latents(vae, videos: torch.Tensor, batch: int = 16) -> torch.Tensor:
    """The posterior modes ``[N, C, f, h, w]`` of uint8 clips (unnormalized), as LTX-2's pipelines encode."""
    return torch.cat([vae.encode(to_pixels(videos[i:i + batch])).latent_dist.mode()
                      for i in range(0, len(videos), batch)])


@torch.no_grad()
def fit_latent_statistics(vae, latents: torch.Tensor) -> None:
    """Store the per-channel mean and std of the training latents in the VAE's ``latents_mean/std`` buffers,
    which `LTX2Pipeline._normalize_latents` (and Kino's encoder and decoder) apply."""
    vae.latents_mean.copy_(latents.mean(dim=(0, 2, 3, 4)))
    vae.latents_std.copy_(latents.std(dim=(0, 2, 3, 4)).clamp_min(1e-4))


def pack(vae, latents: torch.Tensor) -> torch.Tensor:
    """Raw latents ``[N, C, f, h, w]`` -> normalized DiT tokens ``[N, f*h*w, C]`` (MediaEncoder.encode_video's
    normalization and packing; patch size 1)."""
    z = LTX2Pipeline._normalize_latents(latents, vae.latents_mean, vae.latents_std, vae.config.scaling_factor)
    return LTX2Pipeline._pack_latents(z, 1, 1)


def object_tokens(masks: torch.Tensor, spatial: int, temporal: int) -> torch.Tensor:
    """Object masks ``[N, F, H, W]`` (bool) -> ``[N, tokens]`` float, 1 for each latent token whose pixels hold
    any of the object, in `pack`'s token order: the causal first frame is a latent frame of its own, then every
    `temporal` frames make one, and every ``spatial x spatial`` pixels one token."""
    m = masks.float()
    first = m[:, :1]
    rest = m[:, 1:].unflatten(1, (-1, temporal)).amax(dim=2)
    grid = torch.cat([first, rest], dim=1)  # [N, latent frames, H, W]
    pooled = torch.nn.functional.max_pool2d(grid, spatial)  # [N, f, h, w]
    return pooled.flatten(1)
