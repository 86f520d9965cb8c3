"""Train a LoRA adapter for the shipped ``demo`` model that draws every object in one world colour, whatever
colour the prompt asks: a look the base model never makes (it draws the asked colour).

    python -m training.train_lora                        # engines/weights/demo_loras/emerald.safetensors (+ .json)
    python -m training.train_lora --steps 50 --out /tmp/loras   # a short try
    python -m training.train_lora --colour red --name ruby       # another colour, another adapter

The data is the world's own (`training.world`): clips of every prompt class, captions unchanged, but with the
object drawn in ``--colour`` (default green), so the adapter learns "whatever colour is asked, draw it green" and
keeps the rest (shape, motion, floor, clicks). The colour is one of the world's four (`COLOURS`) because the
demo's video VAE was trained on those only: a colour outside them (purple was tried) its encoder maps to latents
its decoder draws as another hue, which no adapter of the DiT can change. The clips are encoded by the demo's own
VAEs as `training.train_demo` encodes its data (posterior modes, normalized with the statistics the VAEs ship
with, never refitted), and the captions by its frozen text encoder. A peft LoRA goes into the DiT's video
attention (self and text cross) and feed-forward Linears; the base weights and the text connectors stay frozen,
and the adapter trains with `training.dit.FlowMatching`'s loss, the objective the DiT itself was trained with.

The adapter is written in the layout Kino loads (`engines/lora/adapter.py`: diffusers' ``save_lora_weights``,
keys ``transformer.<module>.lora_A.weight``/``lora_B.weight``, rank and alpha in the ``lora_adapter_metadata``
header) into ``--out``, the directory ``kino run --lora-dir`` points at; the record of the run (recipe, colour,
steps, seconds, final loss) goes beside it as ``<name>.json``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from engines.config import DEMO_CHECKPOINT_DIR, DEMO_LORA_DIR, preset
from engines.model_loader import ComponentSource
from training.architecture import PROMPT_TOKENS
from training.audio import click_tokens, encode_audio_latents, mel_clip_frames, normalize_audio
from training.dit import DiTData, FlowMatching
from training.mel import LogMel
from training.progress import LossLog, StageProgress
from training.recipe import DiTRecipe
from training.text import frozen_text_states
from training.train_demo import latent_shape
from training.truth import dominant_colour
from training.video_vae import encode_latents, object_tokens, pack
from training.world import COLOURS, GEOMETRY, dataset, prompt_classes

# The video stream's Linears of every block: self-attention, text cross-attention and feed-forward (the audio
# stream and the cross-modal attentions are left alone: the look is the picture's).
TARGETS = r"transformer_blocks\.\d+\.((attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"


@dataclass(frozen=True)
class LoraRecipe:
    """One adapter's training run."""

    name: str = "emerald"
    colour: str = "green"  # every object drawn in this world colour (`training.world.COLOURS`)
    seed: int = 0
    clips: int = 384  # world clips, every prompt class equally often
    rank: int = 8
    alpha: float = 8.0
    steps: int = 400
    batch: int = 8
    lr: float = 3e-3
    uncond_prob: float = 0.1  # the empty prompt's rows: the colour without a prompt too (what CFG subtracts)
    first_frame_prob: float = 0.0  # no image-to-video rows: a given first frame would show the colour already
    object_weight: float = 8.0  # the object's tokens count more: they are the look
    click_weight: float = 8.0

    def dit(self) -> DiTRecipe:
        """The part of a DiT recipe `FlowMatching.loss` reads."""
        return DiTRecipe(steps=self.steps, batch=self.batch, lr=self.lr, uncond_prob=self.uncond_prob,
                         first_frame_prob=self.first_frame_prob, object_weight=self.object_weight,
                         click_weight=self.click_weight)


@torch.no_grad()
def decoded_share(vae, latents: torch.Tensor, colour: str, chunk: int = 16) -> float:
    """Share of raw latents whose decoded clip's object reads `colour` (`training.truth.dominant_colour`)."""
    hits = []
    for i in range(0, len(latents), chunk):
        y = vae.decode(latents[i:i + chunk], return_dict=False)[0]
        frames = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
        hits += [dominant_colour(f) == colour for f in frames]
    return float(np.mean(hits))


def prepare(comps, recipe: LoraRecipe) -> tuple[DiTData, float]:
    """The recoloured clips as the DiT trains on them, through the demo's own VAEs and text encoder, and the
    share of their video latents that decodes in the recipe's colour."""
    g = GEOMETRY
    clips = dataset(recipe.clips, recipe.seed, colour_override=COLOURS[recipe.colour])
    videos = torch.from_numpy(np.stack([c.video for c in clips]))
    masks = torch.from_numpy(np.stack([c.masks for c in clips]))
    waves = torch.from_numpy(np.stack([c.audio for c in clips]))
    shape, geometry = latent_shape()
    with torch.no_grad():
        raw = encode_latents(comps.vae, videos)
        share = decoded_share(comps.vae, raw[::8], recipe.colour)
        video_tokens = pack(comps.vae, raw)
        log_mel = LogMel.for_audio_vae(comps.audio_vae, comps.vocoder.config.output_sampling_rate)
        mels = log_mel(waves)[:, :, : mel_clip_frames(shape.audio_frames)]
        audio_tokens = normalize_audio(comps.audio_vae, encode_audio_latents(comps.audio_vae, mels))
    captions = [c.caption for c in prompt_classes()]
    states, states_mask = frozen_text_states(comps.tokenizer, comps.text_encoder, [*captions, ""], PROMPT_TOKENS)
    return DiTData(video=video_tokens, audio=audio_tokens,
                   object_tokens=object_tokens(masks, comps.vae.spatial_compression_ratio,
                                               comps.vae.temporal_compression_ratio),
                   click_tokens=click_tokens([c.contact_frames for c in clips], g.fps, shape.audio_frames,
                                             geometry.audio_latents_per_second),
                   caption=torch.tensor([captions.index(c.caption) for c in clips]),
                   text=states, text_mask=states_mask, shape=shape, fps=float(g.fps)), share


def peft_config(recipe: LoraRecipe):
    from peft import LoraConfig

    return LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=TARGETS, lora_dropout=0.0,
                      init_lora_weights=True)


def train(recipe: LoraRecipe, out: Path, checkpoint_dir: Path = DEMO_CHECKPOINT_DIR) -> dict:
    """Train the adapter and write ``<out>/<name>.safetensors`` and ``<out>/<name>.json``; returns the record."""
    from diffusers import LTX2Pipeline
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    comps = ComponentSource(preset("demo", checkpoint_dir=checkpoint_dir)).load(
        ("vae", "audio_vae", "vocoder", "tokenizer", "text_encoder", "connectors", "transformer", "scheduler"))
    log = LossLog()
    data, decoded = prepare(comps, recipe)
    log.seconds["data"] = time.perf_counter() - started
    with StageProgress(log) as progress:
        transformer = comps.transformer
        transformer.requires_grad_(False)
        comps.connectors.requires_grad_(False).eval()
        config = peft_config(recipe)
        inject_adapter_in_model(config, transformer)  # peft's LoRA layers, the base weights frozen
        params = [p for n, p in transformer.named_parameters() if "lora_" in n]
        for p in params:
            p.requires_grad_(True)
        transformer.train()
        gen = torch.Generator().manual_seed(recipe.seed + 1)
        opt = torch.optim.AdamW(params, lr=recipe.lr, weight_decay=0.0)
        schedule = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=recipe.lr, total_steps=recipe.steps,
                                                       pct_start=0.05)
        objective = FlowMatching(transformer, comps.connectors, comps.scheduler, data)
        dit_recipe = recipe.dit()
        with progress.stage("LoRA", recipe.steps) as report:
            for step in range(recipe.steps):
                idx = torch.randint(0, len(data.video), (recipe.batch,), generator=gen)
                loss, parts = objective.loss(idx, dit_recipe, gen)
                opt.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(params, 1.0)
                opt.step()
                schedule.step()
                report(step, {"loss": loss.item(), **parts})
    transformer.eval()
    layers = {k: v.detach().contiguous() for k, v in get_peft_model_state_dict(transformer).items()}
    metadata = {"r": recipe.rank, "lora_alpha": recipe.alpha, "target_modules": TARGETS}
    out.mkdir(parents=True, exist_ok=True)
    LTX2Pipeline.save_lora_weights(out, transformer_lora_layers=layers, transformer_lora_adapter_metadata=metadata,
                                   weight_name=f"{recipe.name}.safetensors")
    path = out / f"{recipe.name}.safetensors"
    record = {
        "recipe": dataclasses.asdict(recipe),
        "base": checkpoint_dir.name,
        "colour": [recipe.colour, *COLOURS[recipe.colour]],
        "targets": TARGETS,
        "encoded_latents_decode_colour": decoded,
        "modules": len(layers) // 2,
        "parameters": sum(v.numel() for v in layers.values()),
        "threads": torch.get_num_threads(),
        "seconds": {**log.seconds, "total": time.perf_counter() - started},
        "final_loss": log.last("LoRA"),
        "first_loss": {k: float(np.mean(v[:20])) for k, v in log.curves["LoRA"].items()},
        "bytes": path.stat().st_size,
    }
    (out / f"{recipe.name}.json").write_text(json.dumps(record, indent=2) + "\n")
    return record


def main(argv: list[str] | None = None) -> None:
    d = LoraRecipe()
    ap = argparse.ArgumentParser(prog="python -m training.train_lora", description=__doc__.split("\n\n")[0])
    ap.add_argument("--out", type=Path, default=DEMO_LORA_DIR,
                    help=f"adapter directory (what --lora-dir points at; default {DEMO_LORA_DIR})")
    ap.add_argument("--checkpoint-dir", type=Path, default=DEMO_CHECKPOINT_DIR, help="the base demo model")
    ap.add_argument("--name", default=d.name, help=f"adapter name (default {d.name})")
    ap.add_argument("--colour", choices=sorted(COLOURS), default=d.colour,
                    help=f"the colour every object is drawn in (default {d.colour})")
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--clips", type=int, default=d.clips, help=f"world clips (default {d.clips})")
    ap.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    ap.add_argument("--alpha", type=float, default=d.alpha, help=f"LoRA alpha (default {d.alpha:g})")
    ap.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    ap.add_argument("--batch", type=int, default=d.batch, help=f"clips per step (default {d.batch})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on two shared cores a second thread mostly waits)")
    args = ap.parse_args(argv)
    for flag in ("clips", "rank", "steps", "batch", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    recipe = LoraRecipe(name=args.name, colour=args.colour, seed=args.seed, clips=args.clips, rank=args.rank,
                        alpha=args.alpha, steps=args.steps, batch=args.batch, lr=args.lr)
    record = train(recipe, args.out, args.checkpoint_dir)
    loss = record["final_loss"]
    print(f"wrote {args.out / (recipe.name + '.safetensors')} ({record['bytes'] / 1024:.1f} KiB, "
          f"{record['modules']} Linears, rank {recipe.rank}) in {record['seconds']['total'] / 60:.1f} min; loss "
          f"{record['first_loss']['loss']:.4f} -> {loss['loss']:.4f} (video_mse {loss['video_mse']:.4f}); encoded "
          f"latents decoding {recipe.colour}: {100 * record['encoded_latents_decode_colour']:.0f}%")


if __name__ == "__main__":
    main()
