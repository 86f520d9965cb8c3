"""Train Kino's ``demo`` model on the synthetic world, on a CPU, and write it where the ``demo`` preset loads it.

    python -m training.train_demo                       # the full run (engines/weights/demo/); make train-demo
    python -m training.train_demo --smoke --out /tmp/x  # every stage for a few steps (seconds)
    python -m training.train_demo --warm-start engines/weights/demo --out /tmp/y   # the DiT alone, on those VAEs

Stages, in order, each with a progress bar; seeded, so a run is reproducible on the same machine:

1. render the world's clips (`training.world`);
2. the video VAE, then its latent statistics (`training.video_vae`), and beside it, on the other core,
3. the audio VAE on log-mels, its latent statistics, then the vocoder (`training.audio`);
4. the frozen tiny Gemma's states for every caption (`training.text`), then the DiT and the text connectors by
   flow matching on the normalized latents (`training.dit`).

The checkpoint is a diffusers directory (`engines.model_loader.save_checkpoint`: model_index.json and one folder
per component) plus ``training.json`` (recipe, seconds per stage, final losses, sizes). Loss curves go to
``--report`` (default out/train_demo/loss_curves.png).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import torch

from engines.config import DEMO_CHECKPOINT_DIR, preset
from engines.model_loader import ComponentSource, save_checkpoint
from engines.params import GenerationRequest
from engines.stage_io import LatentGeometry, LatentShape
from training.architecture import PROMPT_TOKENS, TRAINABLE, TRAINING_CONFIG, build_components, parameter_count
from training.audio import (
    click_tokens,
    encode_audio_latents,
    fit_audio_statistics,
    mel_clip_frames,
    normalize_audio,
    train_audio_vae,
    train_vocoder,
)
from training.dit import DiTData, train_dit
from training.mel import LogMel
from training.progress import LossLog, StageProgress
from training.recipe import FULL, SMOKE, Recipe
from training.text import frozen_text_states, separability
from training.video_vae import encode_latents, fit_latent_statistics, object_tokens, pack, train_video_vae
from training.world import GEOMETRY, dataset, prompt_classes


def latent_shape() -> tuple[LatentShape, LatentGeometry]:
    """The latent grid of one world clip, computed as the Denoiser computes it for such a request."""
    params = GenerationRequest(prompt="x", width=GEOMETRY.width, height=GEOMETRY.height, seconds=GEOMETRY.seconds,
                              fps=GEOMETRY.fps).validated(TRAINING_CONFIG)
    geometry = ComponentSource(TRAINING_CONFIG).geometry()
    return LatentShape.for_params(params, geometry), geometry


RECIPES = {"full": FULL, "smoke": SMOKE}
WARM_PARTS = ("vae", "audio_vae", "vocoder")  # what a warm start takes from the earlier run


def train(recipe: Recipe, out: Path, report_dir: Path, warm_start: Path | None = None,
          dit_threads: int | None = None) -> dict:
    """Run every stage and write the checkpoint to `out`; returns the training record (also in training.json).

    `warm_start`: an earlier run's checkpoint whose VAEs and vocoder this run takes as they are; only the DiT
    and the connectors train (from scratch), on the latents of those VAEs. `dit_threads`: torch threads of the
    DiT stage, which runs alone (default: as many as the side-by-side stages each use)."""
    started = time.perf_counter()
    stage_threads = torch.get_num_threads()
    dit_threads = dit_threads or stage_threads
    torch.manual_seed(recipe.seed)
    log = LossLog()
    g = GEOMETRY
    earlier = None
    if warm_start is not None:
        earlier = json.loads((warm_start / "training.json").read_text())
        loaded = ComponentSource(preset("demo", checkpoint_dir=warm_start)).load(WARM_PARTS)
    with StageProgress(log) as progress:
        with progress.stage("world", recipe.clips) as report:
            clips = dataset(recipe.clips, recipe.seed)
            report(recipe.clips - 1, {})
        comps = build_components(recipe.seed)
        if earlier is not None:
            for name in WARM_PARTS:
                getattr(comps, name).load_state_dict(getattr(loaded, name).state_dict())
        videos = torch.from_numpy(np.stack([c.video for c in clips]))
        masks = torch.from_numpy(np.stack([c.masks for c in clips]))
        waves = torch.from_numpy(np.stack([c.audio for c in clips]))

        def video_stage() -> torch.Tensor:
            if earlier is None:
                with progress.stage("video VAE", recipe.video_vae.steps) as report:
                    train_video_vae(comps.vae, videos, masks, recipe.video_vae, recipe.seed + 1, report)
            raw = encode_latents(comps.vae, videos)
            fit_latent_statistics(comps.vae, raw)
            return pack(comps.vae, raw)

        def audio_stage() -> torch.Tensor:
            mels = log_mel(waves)[:, :, : mel_clip_frames(shape.audio_frames)]
            if earlier is None:
                with progress.stage("audio VAE", recipe.audio.vae_steps) as report:
                    train_audio_vae(comps.audio_vae, mels, recipe.audio, recipe.seed + 2, report)
            packed_audio = encode_audio_latents(comps.audio_vae, mels)
            fit_audio_statistics(comps.audio_vae, packed_audio)
            if earlier is None:
                with progress.stage("vocoder", recipe.audio.vocoder_steps) as report:
                    train_vocoder(comps.vocoder, log_mel, mels, waves, recipe.audio, recipe.seed + 3, report)
            return normalize_audio(comps.audio_vae, packed_audio)

        log_mel = LogMel.for_audio_vae(comps.audio_vae, comps.vocoder.config.output_sampling_rate)
        shape, geometry = latent_shape()
        # The video and the audio autoencoders share nothing: they train side by side, one core each (each
        # stage draws from its own seeded generator, so the run stays deterministic).
        with ThreadPoolExecutor(max_workers=2) as pool:
            video_future = pool.submit(video_stage)
            audio_tokens = audio_stage()
            video_tokens = video_future.result()

        classes = prompt_classes()
        captions = [c.caption for c in classes]
        states, states_mask = frozen_text_states(comps.tokenizer, comps.text_encoder, [*captions, ""], PROMPT_TOKENS)
        text_gap = separability(states[:-1], states_mask[:-1], classes,
                                comps.text_encoder.config.text_config.hidden_size)
        data = DiTData(video=video_tokens, audio=audio_tokens,
                       object_tokens=object_tokens(masks, comps.vae.spatial_compression_ratio,
                                                   comps.vae.temporal_compression_ratio),
                       click_tokens=click_tokens([c.contact_frames for c in clips], g.fps, shape.audio_frames,
                                                 geometry.audio_latents_per_second),
                       caption=torch.tensor([captions.index(c.caption) for c in clips]),
                       text=states, text_mask=states_mask, shape=shape, fps=float(g.fps))
        torch.set_num_threads(dit_threads)
        try:
            with progress.stage("DiT", recipe.dit.steps) as report:
                averaged = train_dit(comps.transformer, comps.connectors, comps.scheduler, data, recipe.dit,
                                     recipe.seed + 4, report)
        finally:
            torch.set_num_threads(stage_threads)
        comps.transformer, comps.connectors = averaged["transformer"], averaged["connectors"]

    for name in TRAINABLE:
        getattr(comps, name).eval().requires_grad_(False)
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(comps, out)
    record = {
        "recipe": dataclasses.asdict(recipe),
        "geometry": dataclasses.asdict(g),
        "seconds": {**log.seconds, "total": time.perf_counter() - started},
        "threads": {"side-by-side stages": stage_threads, "DiT": dit_threads},
        "final_losses": {stage: log.last(stage) for stage in log.curves if stage != "world"},
        "caption_separability": text_gap,
        "parameters": {name: parameter_count(getattr(comps, name)) for name in (*TRAINABLE, "text_encoder")},
        "checkpoint_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "warm_start": earlier,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.plot(report_dir / "loss_curves.png")
    (report_dir / "loss_curves.json").write_text(json.dumps(log.curves))
    return record


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.train_demo", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEMO_CHECKPOINT_DIR, help="checkpoint directory to (re)write")
    ap.add_argument("--report", type=Path, default=Path("out/train_demo"), help="where loss curves go")
    # One thread: on two cores shared with other work, a second torch thread mostly waits at barriers (a
    # video VAE step measured 3.5 s with two threads, 0.5 s with one, on a loaded 2-core machine).
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads of each of the two stages that train side by side (default 1)")
    # The DiT trains alone, after the autoencoders: it takes both cores (a step measured 0.38 s with two
    # threads, 0.53 s with one, on an otherwise idle 2-core machine; the same losses to the last digit).
    ap.add_argument("--dit-threads", type=int, default=2, help="torch CPU threads of the DiT stage (default 2)")
    ap.add_argument("--smoke", action="store_true", help="a few steps of every stage on a few clips")
    ap.add_argument("--recipe", choices=sorted(RECIPES), default="full", help="training.recipe's (default full)")
    ap.add_argument("--warm-start", type=Path, metavar="DIR",
                    help="take the VAEs and the vocoder of this checkpoint as they are and train only the DiT "
                         "and the connectors (to try a DiT recipe without the hour)")
    args = ap.parse_args(argv)
    for flag, value in (("--threads", args.threads), ("--dit-threads", args.dit_threads)):
        if value < 1:
            ap.error(f"{flag} must be an integer >= 1, got {value}")
    torch.set_num_threads(args.threads)
    record = train(SMOKE if args.smoke else RECIPES[args.recipe], args.out, args.report, args.warm_start,
                   args.dit_threads)
    secs = record["seconds"]
    print(f"wrote {args.out} ({record['checkpoint_bytes'] / 2**20:.2f} MiB) in {secs['total'] / 60:.1f} min: "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items() if k != "total"))
    print(f"loss curves: {args.report / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
