"""How the demo model is trained: one typed recipe per stage (engines' config schema: bounds, a docstring each).

`FULL` is what ``python -m training.train_demo`` runs (about an hour on two otherwise idle CPU cores: the video
VAE 30 minutes, beside it the audio VAE and vocoder 4, then the DiT on both cores 25-30); `SMOKE` runs every stage
for a few steps on a few clips, for the test suite.
"""

from __future__ import annotations

from dataclasses import field
from typing import Annotated

from pydantic import Field

from engines.schema import section

Positive = Annotated[int, Field(gt=0)]
Rate = Annotated[float, Field(gt=0, lt=1)]
Fraction = Annotated[float, Field(ge=0, le=1)]


@section("training.video_vae")
class VideoVAERecipe:
    """Stage 1a: the video VAE, as a plain autoencoder of the world's clips."""

    steps: Positive = 5000
    """Optimizer steps."""
    batch: Positive = 2
    """Whole clips per step. Clips, not lone frames: the latent frames after the first hold four frames of
    motion each, which only clips teach (a VAE trained mostly on frames smeared the moving object)."""
    lr: Rate = 2e-3
    """Peak AdamW learning rate (one-cycle schedule)."""
    latent_noise: Annotated[float, Field(ge=0)] = 0.05
    """Gaussian noise added to the latents before decoding, so the decoder tolerates the DiT's imprecision."""
    latent_l2: Annotated[float, Field(ge=0)] = 1e-4
    """Weight of the latents' squared norm: keeps their scale bounded (in place of a KL term)."""
    object_weight: Annotated[float, Field(ge=0)] = 8.0
    """Extra loss weight on the object's pixels (they are a few percent of the frame and all its content)."""


@section("training.audio")
class AudioRecipe:
    """Stage 1b: the audio VAE on log-mel spectrograms, then the vocoder from log-mel back to a waveform."""

    vae_steps: Positive = 800
    """Audio VAE optimizer steps."""
    vocoder_steps: Positive = 700
    """Vocoder optimizer steps."""
    batch: Positive = 16
    """Clips per audio VAE step."""
    vocoder_batch: Positive = 8
    """Clips per vocoder step (a vocoder step costs 5x an audio VAE step)."""
    lr: Rate = 2e-3
    """Peak AdamW learning rate of both."""
    latent_noise: Annotated[float, Field(ge=0)] = 0.05
    """Noise added to the audio latents before decoding."""
    latent_l2: Annotated[float, Field(ge=0)] = 1e-4
    """Weight of the audio latents' squared norm."""
    mel_noise: Annotated[float, Field(ge=0)] = 0.1
    """Noise added to the log-mel the vocoder reads (it will read the audio VAE's imperfect mels)."""
    transient_weight: Annotated[float, Field(ge=0)] = 20.0
    """Extra audio VAE loss weight on the mel frames where a click rises above the hum (0: plain L1). Without
    it the 4x time compression smoothed every click away (3% of the contacts kept a click after a round
    trip, against 100% with it, on held-out clips)."""


@section("training.dit")
class DiTRecipe:
    """Stage 2: the DiT and the text connectors, flow matching on the joint video+audio latents."""

    steps: Positive = 4000
    """Optimizer steps. Length is what teaches the DiT paths: at 2000 steps it placed the object frame by frame
    (motion 31%, sync 15% of contacts on 48 classes x 2 seeds); at 4000, the same recipe otherwise, 81% and 63%."""
    batch: Positive = 16
    """Clips per step."""
    lr: Rate = 2e-3
    """Peak AdamW learning rate."""
    uncond_prob: Fraction = 0.1
    """Share of rows trained on the empty prompt (what classifier-free guidance subtracts)."""
    first_frame_prob: Fraction = 0.2
    """Share of rows whose first latent frame is given clean at timestep 0 (image-to-video)."""
    object_weight: Annotated[float, Field(ge=0)] = 8.0
    """Extra loss weight on the video tokens that hold part of the object. Unweighted, the floor and walls
    (nearly every token) set the loss, and a DiT trained for under an hour drew them and left the object out."""
    click_weight: Annotated[float, Field(ge=0)] = 8.0
    """Extra loss weight on the audio tokens where a click starts (one or two of a clip's 18): what has to
    line up with the picture for the sound to be in sync."""
    ema_decay: Rate = 0.999
    """Exponential moving average of the weights; the average is what ships."""


@section("training")
class Recipe:
    """The whole demo training run."""

    seed: int = 0
    """Seeds the world, the weights' initialisation and every random draw of training."""
    clips: Positive = 1536
    """World clips rendered for training (every prompt class equally often)."""
    video_vae: VideoVAERecipe = field(default_factory=VideoVAERecipe)
    """Stage 1a."""
    audio: AudioRecipe = field(default_factory=AudioRecipe)
    """Stage 1b."""
    dit: DiTRecipe = field(default_factory=DiTRecipe)
    """Stage 2."""


FULL = Recipe()
# A longer run of a trained DiT (``--warm-start DIR --warm-dit --recipe continue``): 4000 more steps from its
# weights, at half the peak rate (the weights are already near a minimum; a full-rate warm-up undoes steps).
CONTINUE = Recipe(dit=DiTRecipe(steps=4000, lr=1e-3))
SMOKE = Recipe(
    clips=4,
    video_vae=VideoVAERecipe(steps=2, batch=1),
    audio=AudioRecipe(vae_steps=2, vocoder_steps=2, batch=2, vocoder_batch=2),
    dit=DiTRecipe(steps=3, batch=2),
)
