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
import os
import shutil
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
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
from training.dit import DiTChunk, DiTData, train_dit
from training.mel import LogMel
from training.progress import LossLog, StageProgress
from training.recipe import CONTINUE, FULL, SMOKE, Recipe
from training.text import frozen_text_states, separability
from training.video_vae import encode_latents, fit_latent_statistics, object_tokens, pack, train_video_vae
from training.world import GEOMETRY, dataset, prompt_classes


def latent_shape() -> tuple[LatentShape, LatentGeometry]:
    """The latent grid of one world clip, computed as the Denoiser computes it for such a request."""
    params = GenerationRequest(prompt="x", width=GEOMETRY.width, height=GEOMETRY.height, seconds=GEOMETRY.seconds,
                              fps=GEOMETRY.fps).validated(TRAINING_CONFIG)
    geometry = ComponentSource(TRAINING_CONFIG).geometry()
    return LatentShape.for_params(params, geometry), geometry


RECIPES = {"full": FULL, "continue": CONTINUE, "smoke": SMOKE}
WARM_PARTS = ("vae", "audio_vae", "vocoder")  # what a warm start takes from the earlier run
DIT_PARTS = ("transformer", "connectors")  # what `warm_dit` also takes


@dataclass
class Chunks:
    """A run in chunks, for machines or sessions with a time budget: the run's state lives in `state_dir` (the
    trained autoencoders once their stage ends; the DiT's weights, optimizer, schedule, moving average and random
    draws every few minutes and when the chunk stops; the loss curves and seconds so far), and `stop(DiT steps
    done)` ends a chunk at a DiT step. The next chunk (`--resume state_dir`) goes on where it stopped; the
    autoencoders' stage (half an hour) is not split. The finished run is the run in one go, weights and all."""

    state_dir: Path
    stop: Callable[[int], bool] = field(default=lambda steps_done: False)

    @property
    def autoencoders(self) -> Path:
        return self.state_dir / "autoencoders"

    @property
    def dit_state(self) -> Path:
        return self.state_dir / "dit_state.pt"

    @property
    def record(self) -> Path:
        return self.state_dir / "run.json"

    def read(self) -> dict:
        return json.loads(self.record.read_text()) if self.record.exists() else {}

    def write(self, run: dict) -> None:
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.record.with_suffix(".tmp")
        tmp.write_text(json.dumps(run) + "\n")
        os.replace(tmp, self.record)

    def save_dit(self, state: dict) -> None:
        tmp = self.dit_state.with_suffix(".tmp")
        torch.save(state, tmp)
        os.replace(tmp, self.dit_state)


def train(recipe: Recipe, out: Path, report_dir: Path, warm_start: Path | None = None,
          dit_threads: int | None = None, *, warm_dit: bool = False, chunks: Chunks | None = None) -> dict:
    """Run every stage and write the checkpoint to `out`; returns the training record (also in training.json).

    `warm_start`: an earlier run's checkpoint whose VAEs and vocoder this run takes as they are; only the DiT
    and the connectors train, on the latents of those VAEs: from scratch, or with `warm_dit` from that run's DiT
    and connectors (a longer run of the DiT, with a schedule of its own). `dit_threads`: torch threads of the
    DiT stage, which runs alone (default: as many as the side-by-side stages each use). `chunks`: run in chunks
    (`Chunks`); a chunk that stops before the end returns ``{"finished": False, ...}`` and writes no checkpoint."""
    chunk_started = time.perf_counter()
    stage_threads = torch.get_num_threads()
    dit_threads = dit_threads or stage_threads
    torch.manual_seed(recipe.seed)
    run = chunks.read() if chunks is not None else {}
    log = LossLog.from_json(run["log"]) if run else LossLog()
    run.setdefault("chunks", [])
    g = GEOMETRY
    earlier = None
    if warm_start is not None:
        earlier = json.loads((warm_start / "training.json").read_text())
    autoencoders = warm_start
    if autoencoders is None and chunks is not None and chunks.autoencoders.is_dir():  # an earlier chunk's
        autoencoders = chunks.autoencoders
    dit_resume = torch.load(chunks.dit_state, weights_only=False) if chunks and chunks.dit_state.exists() else None
    with StageProgress(log) as progress:
        with progress.stage("world", recipe.clips) as report:
            clips = dataset(recipe.clips, recipe.seed)
            report(recipe.clips - 1, {})
        comps = build_components(recipe.seed)
        if autoencoders is not None:  # (a resumed DiT's weights come from its state, below)
            take = WARM_PARTS + (DIT_PARTS if warm_dit and warm_start is not None and dit_resume is None else ())
            loaded = ComponentSource(preset("demo", checkpoint_dir=autoencoders)).load(take)
            for name in take:
                getattr(comps, name).load_state_dict(getattr(loaded, name).state_dict())
        videos = torch.from_numpy(np.stack([c.video for c in clips]))
        masks = torch.from_numpy(np.stack([c.masks for c in clips]))
        waves = torch.from_numpy(np.stack([c.audio for c in clips]))

        def video_stage() -> torch.Tensor:
            if autoencoders is None:
                with progress.stage("video VAE", recipe.video_vae.steps) as report:
                    train_video_vae(comps.vae, videos, masks, recipe.video_vae, recipe.seed + 1, report)
            raw = encode_latents(comps.vae, videos)
            fit_latent_statistics(comps.vae, raw)
            return pack(comps.vae, raw)

        def audio_stage() -> torch.Tensor:
            mels = log_mel(waves)[:, :, : mel_clip_frames(shape.audio_frames)]
            if autoencoders is None:
                with progress.stage("audio VAE", recipe.audio.vae_steps) as report:
                    train_audio_vae(comps.audio_vae, mels, recipe.audio, recipe.seed + 2, report)
            packed_audio = encode_audio_latents(comps.audio_vae, mels)
            fit_audio_statistics(comps.audio_vae, packed_audio)
            if autoencoders is None:
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
        if chunks is not None and autoencoders is None:  # trained in this chunk: the next one takes them
            save_checkpoint(comps, chunks.autoencoders)
            chunks.write({**run, "log": log.to_json()})

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
        first_step = dit_resume["step"] if dit_resume is not None else 0
        dit_chunk = None
        if chunks is not None:
            def save(state: dict) -> None:
                chunks.save_dit(state)
                chunks.write({**run, "log": log.to_json()})

            dit_chunk = DiTChunk(resume=dit_resume, save=save, stop=chunks.stop)
        torch.set_num_threads(dit_threads)
        try:
            with progress.stage("DiT", recipe.dit.steps, done=first_step) as report:
                averaged = train_dit(comps.transformer, comps.connectors, comps.scheduler, data, recipe.dit,
                                     recipe.seed + 4, report, dit_chunk)
        finally:
            torch.set_num_threads(stage_threads)
        last_step = len(log.curves["DiT"]["video_mse"]) if log.curves.get("DiT") else 0
        run["chunks"].append({"seconds": time.perf_counter() - chunk_started, "dit_steps": [first_step, last_step]})
        if averaged is None:  # this chunk ends here; the next one resumes from the state just saved
            assert chunks is not None
            chunks.write({**run, "log": log.to_json()})
            return {"finished": False, "dit_step": last_step, "dit_steps": recipe.dit.steps,
                    "state_dir": str(chunks.state_dir)}
        comps.transformer, comps.connectors = averaged["transformer"], averaged["connectors"]

    for name in TRAINABLE:
        getattr(comps, name).eval().requires_grad_(False)
    if out.exists():
        shutil.rmtree(out)
    save_checkpoint(comps, out)
    record = {
        "recipe": dataclasses.asdict(recipe),
        "geometry": dataclasses.asdict(g),
        "seconds": {**log.seconds, "total": sum(c["seconds"] for c in run["chunks"])},
        "chunks": run["chunks"],
        "threads": {"side-by-side stages": stage_threads, "DiT": dit_threads},
        "final_losses": {stage: log.last(stage) for stage in log.curves if stage != "world"},
        "caption_separability": text_gap,
        "parameters": {name: parameter_count(getattr(comps, name)) for name in (*TRAINABLE, "text_encoder")},
        "checkpoint_bytes": sum(f.stat().st_size for f in out.rglob("*") if f.is_file()),
        "warm_start": earlier,
        "warm_dit": warm_dit,
    }
    (out / "training.json").write_text(json.dumps(record, indent=2) + "\n")
    log.plot(report_dir / "loss_curves.png")
    (report_dir / "loss_curves.json").write_text(json.dumps(log.curves))
    return record


RUN_ARGS = ("out", "report", "threads", "dit_threads", "smoke", "recipe", "warm_start", "warm_dit")  # a resume's


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
    ap.add_argument("--warm-dit", action="store_true",
                    help="with --warm-start: the DiT and the connectors start from that checkpoint's too (a longer "
                         "run of its DiT, e.g. --recipe continue)")
    ap.add_argument("--chunk-minutes", type=float, metavar="M",
                    help="stop after M minutes (at a DiT step; the autoencoders' half hour is not split), keeping "
                         "the run's state in --state; go on with --resume")
    ap.add_argument("--state", type=Path, default=Path("out/train_demo/state"),
                    help="where a run in chunks keeps its state (default out/train_demo/state)")
    ap.add_argument("--resume", type=Path, metavar="DIR",
                    help="go on with the run whose state is in DIR, with that run's arguments (only "
                         "--chunk-minutes is this chunk's own)")
    args = ap.parse_args(argv)
    for flag, value in (("--threads", args.threads), ("--dit-threads", args.dit_threads)):
        if value < 1:
            ap.error(f"{flag} must be an integer >= 1, got {value}")
    if args.chunk_minutes is not None and args.chunk_minutes <= 0:
        ap.error(f"--chunk-minutes must be a number > 0, got {args.chunk_minutes}")
    if args.warm_dit and args.warm_start is None:
        ap.error("--warm-dit needs --warm-start DIR (the checkpoint whose DiT to start from)")
    chunks = None
    if args.resume is not None:
        run_args = args.resume / "arguments.json"
        if not run_args.is_file():
            ap.error(f"--resume {args.resume}: no run's state there (no arguments.json)")
        saved = json.loads(run_args.read_text())
        if saved.get("finished"):
            ap.error(f"--resume {args.resume}: that run finished; its checkpoint is {saved['out']}")
        for name in RUN_ARGS:
            value = saved[name]
            setattr(args, name, Path(value) if name in ("out", "report", "warm_start") and value else value)
        args.state = args.resume
    if args.chunk_minutes is not None or args.resume is not None:
        deadline = time.monotonic() + 60 * args.chunk_minutes if args.chunk_minutes is not None else None
        chunks = Chunks(args.state, stop=lambda done: deadline is not None and time.monotonic() > deadline)
        if args.resume is None:
            if args.state.exists():
                ap.error(f"--state {args.state} holds another run's state: --resume it, or remove it")
            args.state.mkdir(parents=True)
            saved = {name: str(v) if isinstance(v := getattr(args, name), Path) else v for name in RUN_ARGS}
            (args.state / "arguments.json").write_text(json.dumps(saved, indent=2) + "\n")
    torch.set_num_threads(args.threads)
    record = train(SMOKE if args.smoke else RECIPES[args.recipe], args.out, args.report, args.warm_start,
                   args.dit_threads, warm_dit=args.warm_dit, chunks=chunks)
    if not record.get("finished", True):
        print(f"this chunk stopped at DiT step {record['dit_step']}/{record['dit_steps']}; go on with: "
              f"python -m training.train_demo --resume {args.state} [--chunk-minutes M]")
        return
    if chunks is not None:
        arguments = json.loads((args.state / "arguments.json").read_text())
        (args.state / "arguments.json").write_text(json.dumps({**arguments, "finished": True}, indent=2) + "\n")
        chunks.dit_state.unlink(missing_ok=True)  # the weights are in the checkpoint now
    secs = record["seconds"]
    print(f"wrote {args.out} ({record['checkpoint_bytes'] / 2**20:.2f} MiB) in {secs['total'] / 60:.1f} min"
          f" ({len(record['chunks'])} chunk(s)): "
          + ", ".join(f"{k} {v / 60:.1f} min" for k, v in secs.items() if k != "total"))
    print(f"loss curves: {args.report / 'loss_curves.png'}")


if __name__ == "__main__":
    main()
