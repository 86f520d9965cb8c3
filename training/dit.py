"""Stage 2: the joint audio+video DiT (`LTX2VideoTransformer3DModel`) and the text connectors, by flow matching on
the VAEs' latents, so that Kino's `Denoiser`, unchanged, samples what was trained.

Everything the sampler assumes is reproduced here from the same sources:

- latents are the VAEs' posterior modes, normalized with the statistics stored in the VAEs and packed into
  tokens with `LTX2Pipeline`'s own helpers (`training.video_vae.pack`, `training.audio.normalize_audio`);
- a noisy state is ``x_sigma = (1 - sigma) x0 + sigma noise`` and the DiT predicts the velocity
  ``noise - x0`` (the pipeline's ``x0 = x - sigma v`` and Euler step ``x + (sigma_next - sigma) v``);
- sigmas are drawn uniformly and shifted as the scheduler's config shifts its grid: by its own `time_shift`
  with the ``mu`` the Denoiser computes for this many video tokens (`calculate_shift`) when it shifts
  dynamically, else by its static ``shift`` (the demo's: 1, none); the transformer gets
  ``timestep = sigma * num_train_timesteps``, the scheduler's timesteps;
- the forward is Kino's `EagerBackend.forward` itself (the same keyword arguments, ``use_cross_timestep`` and
  ``sigma`` included), only with gradients on, on a `DiTInputs` batch laid out as the Denoiser lays it out;
- rows trained on the empty prompt teach the unconditional prediction classifier-free guidance needs, and rows
  whose first latent frame is clean at timestep 0 (per-token timesteps, loss masked there) teach
  image-to-video as `LTX2ImageToVideoPipeline` and the Denoiser run it.

The exponential moving average of the weights is what ships.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
from diffusers.pipelines.ltx2.pipeline_ltx2 import calculate_shift
from torch.optim.swa_utils import AveragedModel

from engines.dit_backend import DiTInputs, EagerBackend
from engines.stage_io import LatentShape
from training.recipe import DiTRecipe

StepReport = Callable[[int, dict[str, float]], None]


@dataclass
class DiTData:
    """Training examples as the Denoiser sees them."""

    video: torch.Tensor  # [N, video tokens, C] normalized, packed
    object_tokens: torch.Tensor  # [N, video tokens] 1 where the token's pixels hold part of the object, else 0
    click_tokens: torch.Tensor  # [N, audio tokens] 1 where the token's time holds the start of a click, else 0
    audio: torch.Tensor  # [N, audio tokens, C_a] normalized, packed
    caption: torch.Tensor  # [N] long: row of `text` holding each clip's caption
    text: torch.Tensor  # [K, text tokens, D x (layers + 1)] frozen Gemma hidden states; the last row is ""
    text_mask: torch.Tensor  # [K, text tokens]
    shape: LatentShape
    fps: float

    @property
    def empty_prompt(self) -> int:
        return len(self.text) - 1


def training_sigmas(scheduler, video_tokens: int, u: torch.Tensor) -> torch.Tensor:
    """Uniform draws `u` in (0, 1) through the scheduler's resolution-dependent shift (what `set_timesteps`
    applies to the inference grid, for the Denoiser's ``mu``)."""
    cfg = scheduler.config
    if not cfg.get("use_dynamic_shifting", False):  # a static shift (1: none), as `set_timesteps` applies it
        shift = cfg.get("shift", 1.0)
        return shift * u / (1 + (shift - 1) * u)
    mu = calculate_shift(video_tokens, cfg.get("base_image_seq_len", 1024), cfg.get("max_image_seq_len", 4096),
                         cfg.get("base_shift", 0.95), cfg.get("max_shift", 2.05))
    return scheduler.time_shift(mu, 1.0, u)


def velocity(backend: EagerBackend, inputs: DiTInputs) -> tuple[torch.Tensor, torch.Tensor]:
    """Kino's eager DiT call with gradients (the undecorated `EagerBackend.forward`, not a copy of it)."""
    return EagerBackend.forward.__wrapped__(backend, inputs)


def text_contexts(connectors, data: DiTData, rows: torch.Tensor):
    """The connectors over the frozen text states of `rows` (Gemma pads on the left, as in `TextEncoder`)."""
    return connectors(data.text[rows], data.text_mask[rows], padding_side="left")


class FlowMatching:
    """One training step's loss, and the pieces the Denoiser must agree with."""

    def __init__(self, transformer, connectors, scheduler, data: DiTData) -> None:
        self.backend = EagerBackend(transformer)
        self.connectors, self.scheduler, self.data = connectors, scheduler, data
        s = data.shape
        self.first_frame_tokens = s.height * s.width
        self.video_coords = transformer.rope.prepare_video_coords(1, s.frames, s.height, s.width, "cpu", fps=data.fps)
        self.audio_coords = transformer.audio_rope.prepare_audio_coords(1, s.audio_frames, "cpu")

    def loss(self, idx: torch.Tensor, recipe: DiTRecipe, gen: torch.Generator) -> tuple[torch.Tensor, dict]:
        d, b = self.data, len(idx)
        x0_video, x0_audio = d.video[idx], d.audio[idx]
        captions = torch.where(torch.rand(b, generator=gen) < recipe.uncond_prob,
                               torch.full((b,), d.empty_prompt), d.caption[idx])
        video_ctx, audio_ctx, mask = text_contexts(self.connectors, d, captions)
        sigma = training_sigmas(self.scheduler, d.video.shape[1], torch.rand(b, generator=gen).clamp(1e-3, 1.0))
        noise_v = torch.randn(x0_video.shape, generator=gen)
        noise_a = torch.randn(x0_audio.shape, generator=gen)
        s = sigma[:, None, None]
        x_video = (1 - s) * x0_video + s * noise_v
        x_audio = (1 - s) * x0_audio + s * noise_a
        timestep = sigma * self.scheduler.config.num_train_timesteps
        # Image-to-video rows: the first latent frame clean, its tokens at timestep 0 and out of the loss.
        clean = torch.zeros(b, d.video.shape[1])
        clean[torch.rand(b, generator=gen) < recipe.first_frame_prob, : self.first_frame_tokens] = 1.0
        x_video = torch.where(clean[..., None] > 0, x0_video, x_video)
        video_timestep = timestep[:, None] * (1 - clean) if clean.any() else None
        inputs = DiTInputs(
            video=x_video, audio=x_audio, video_context=video_ctx, audio_context=audio_ctx, context_mask=mask,
            timestep=timestep, video_timestep=video_timestep,
            video_coords=self.video_coords.expand(b, -1, -1, -1), audio_coords=self.audio_coords.expand(b, -1, -1, -1))
        pred_video, pred_audio = velocity(self.backend, inputs)
        # Loss weights: the object's tokens count `object_weight` times more (a few percent of a clip's tokens,
        # and all of what the prompt asks for); the given first frame of image-to-video rows not at all.
        keep = ((1 - clean) * (1 + recipe.object_weight * d.object_tokens[idx]))[..., None]
        error = (pred_video - (noise_v - x0_video)).square()
        video_loss = (error * keep).sum() / (keep.sum() * x0_video.shape[-1])
        video_mse = error.mean().item()
        audio_error = (pred_audio - (noise_a - x0_audio)).square()
        audio_weight = (1 + recipe.click_weight * d.click_tokens[idx])[..., None]
        audio_loss = (audio_error * audio_weight).sum() / (audio_weight.sum() * x0_audio.shape[-1])
        return video_loss + audio_loss, {"video_mse": video_mse, "video_weighted": video_loss.item(),
                                         "audio_mse": audio_error.mean().item(), "audio_weighted": audio_loss.item()}


def warm_ema(decay: float):
    """`AveragedModel`'s update for an exponential moving average whose decay warms up, ``min(decay, (1 + n) /
    (10 + n))`` after n updates: a fixed 0.999 over a run of a few thousand steps keeps a third of the first
    thousand steps' (untrained) weights in the average."""

    def update(averaged: list[torch.Tensor], current: list[torch.Tensor], num_averaged: torch.Tensor) -> None:
        n = float(num_averaged)
        torch._foreach_lerp_(averaged, current, 1 - min(decay, (1 + n) / (10 + n)))

    return update


@dataclass
class DiTChunk:
    """A DiT run in chunks (`python -m training.train_demo --resume`): the state an earlier chunk saved (None: start
    at step 0), where this chunk saves its own (`save`, every `save_every_s` and when it stops), and when it stops
    (`stop(steps done)`, asked after every step). A resumed run takes every random draw, the optimizer's moments,
    the learning-rate schedule and the moving average where the chunk before left them: its weights are those of
    the same run in one go."""

    resume: dict | None = None
    save: Callable[[dict], None] | None = None
    stop: Callable[[int], bool] = field(default=lambda steps_done: False)
    save_every_s: float = 300.0


def train_dit(transformer, connectors, scheduler, data: DiTData, recipe: DiTRecipe, seed: int,
              on_step: StepReport, chunk: DiTChunk | None = None) -> torch.nn.ModuleDict | None:
    """Train in place; returns the exponential moving average of {transformer, connectors}, or None when `chunk`
    stopped the run before its last step (its state saved)."""
    r, chunk = recipe, chunk or DiTChunk()
    gen = torch.Generator().manual_seed(seed)
    model = torch.nn.ModuleDict({"transformer": transformer, "connectors": connectors}).train()
    ema = AveragedModel(model, multi_avg_fn=warm_ema(r.ema_decay), use_buffers=True)
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, weight_decay=0.01)
    schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=r.lr, total_steps=r.steps, pct_start=0.05)
    first = 0
    if chunk.resume is not None:
        state = chunk.resume
        model.load_state_dict(state["model"])
        ema.load_state_dict(state["ema"])
        opt.load_state_dict(state["optimizer"])
        schedule.load_state_dict(state["schedule"])
        gen.set_state(state["generator"])
        first = state["step"]

    def save(steps_done: int) -> None:
        if chunk.save is not None:
            chunk.save({"step": steps_done, "model": model.state_dict(), "ema": ema.state_dict(),
                        "optimizer": opt.state_dict(), "schedule": schedule.state_dict(), "generator": gen.get_state()})

    objective = FlowMatching(transformer, connectors, scheduler, data)
    saved = time.monotonic()
    for step in range(first, r.steps):
        idx = torch.randint(0, len(data.video), (r.batch,), generator=gen)
        loss, parts = objective.loss(idx, r, gen)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        schedule.step()
        ema.update_parameters(model)
        on_step(step, parts)
        if step + 1 == r.steps:
            break
        if chunk.stop(step + 1):
            save(step + 1)
            return None
        if time.monotonic() - saved > chunk.save_every_s:
            save(step + 1)
            saved = time.monotonic()
    model.eval()
    return ema.module.eval()
