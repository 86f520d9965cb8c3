"""Train a LoRA adapter for the shipped ``demo`` model that makes objects purple, a look the base model never makes.

    python -m training.train_lora                       # engines/weights/demo_loras/purple.safetensors (+ .json)
    python -m training.train_lora --steps 50 --out /tmp/loras   # a short try

The data is the world's own (`training.world`): clips of every prompt class, captions unchanged, but with the
object drawn in `PURPLE`, so the adapter learns "whatever colour is asked, draw it purple" and keeps the rest
(shape, motion, floor, clicks). The clips are encoded by the demo's own VAEs as `training.train_demo` encodes
its data (posterior modes, normalized with the statistics the VAEs ship with, never refitted), and the captions
by its frozen text encoder, with one step more for the video: the demo's video VAE was trained on the world's
four colours only, and its encoder maps a purple object to latents its decoder draws teal (hue 140-210
degrees). An adapter of the DiT cannot change the decoder, so the video latents it learns are the decoder's
inverse of the purple clips (`invert_latents`: the encoder's latents refined by gradient descent through the
frozen decoder until they decode purple). A peft LoRA goes into the DiT's video attention (self and text cross) and
feed-forward Linears; the base weights and the text connectors stay frozen, and the adapter trains with
`training.dit.FlowMatching`'s loss, the objective the DiT itself was trained with.

The adapter is written in the layout Kino loads (`engines/lora/adapter.py`: diffusers' ``save_lora_weights``,
keys ``transformer.<module>.lora_A.weight``/``lora_B.weight``, rank and alpha in the ``lora_adapter_metadata``
header) into ``--out``, the directory ``kino run --lora-dir`` points at; the record of the run (recipe, steps,
seconds, final loss) goes beside it as ``<name>.json``.
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
from training.truth import is_purple
from training.video_vae import encode_latents, object_tokens, pack, to_pixels
from training.world import GEOMETRY, PURPLE, dataset, prompt_classes

# The video stream's Linears of every block: self-attention, text cross-attention and feed-forward (the audio
# stream and the cross-modal attentions are left alone: the look is the picture's).
TARGETS = r"transformer_blocks\.\d+\.((attn1|attn2)\.(to_q|to_k|to_v|to_out\.0)|ff\.net\.(0\.proj|2))"


@dataclass(frozen=True)
class LoraRecipe:
    """One adapter's training run."""

    name: str = "purple"
    seed: int = 0
    clips: int = 48  # world clips, every prompt class equally often (one each)
    invert_steps: int = 150  # gradient steps through the frozen decoder per chunk of clips
    invert_lr: float = 0.05
    rank: int = 8
    alpha: float = 8.0
    steps: int = 600
    batch: int = 8
    lr: float = 2e-3
    uncond_prob: float = 0.1  # the empty prompt's rows: purple without a prompt too (what CFG subtracts)
    first_frame_prob: float = 0.0  # no image-to-video rows: a given first frame would show the colour already
    object_weight: float = 8.0  # the object's tokens count more: they are the look
    click_weight: float = 8.0

    def dit(self) -> DiTRecipe:
        """The part of a DiT recipe `FlowMatching.loss` reads."""
        return DiTRecipe(steps=self.steps, batch=self.batch, lr=self.lr, uncond_prob=self.uncond_prob,
                         first_frame_prob=self.first_frame_prob, object_weight=self.object_weight,
                         click_weight=self.click_weight)


def invert_latents(vae, videos: torch.Tensor, masks: torch.Tensor, steps: int, lr: float,
                   on_chunk=None, chunk: int = 8) -> torch.Tensor:
    """Raw video latents ``[N, C, f, h, w]`` that the frozen decoder draws as uint8 clips ``[N, F, H, W, 3]``:
    the encoder's posterior modes, refined by Adam on the decoder's L1 error (the object's pixels weighted as the
    VAE was trained, `VideoVAERecipe.object_weight`)."""
    out = []
    vae.requires_grad_(False)
    for i in range(0, len(videos), chunk):
        x = to_pixels(videos[i:i + chunk])
        weight = 1.0 + 8.0 * masks[i:i + chunk, None].float()
        z = encode_latents(vae, videos[i:i + chunk]).clone().requires_grad_(True)
        opt = torch.optim.Adam([z], lr=lr)
        for _ in range(steps):
            y = vae.decode(z, return_dict=False)[0]
            loss = ((y - x).abs() * weight).mean()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        out.append(z.detach())
        if on_chunk is not None:
            on_chunk(i // chunk, {"l1": loss.item()})
    return torch.cat(out)


@torch.no_grad()
def decoded_purple(vae, latents: torch.Tensor, chunk: int = 8) -> float:
    """Share of raw latents whose decoded clip reads purple (`training.truth.is_purple`)."""
    hits = []
    for i in range(0, len(latents), chunk):
        y = vae.decode(latents[i:i + chunk], return_dict=False)[0]
        frames = ((y.clamp(-1, 1) + 1) * 127.5).round().byte().permute(0, 2, 3, 4, 1).numpy()
        hits += [is_purple(f) for f in frames]
    return float(np.mean(hits))


def prepare(comps, recipe: LoraRecipe, report=None, latents_cache: Path | None = None) -> tuple[DiTData, float]:
    """The purple clips as the DiT trains on them, through the demo's own VAEs and text encoder (the video
    latents inverted through the decoder, `invert_latents`), and the share of them that decodes purple."""
    g = GEOMETRY
    clips = dataset(recipe.clips, recipe.seed, colour_override=PURPLE)
    videos = torch.from_numpy(np.stack([c.video for c in clips]))
    masks = torch.from_numpy(np.stack([c.masks for c in clips]))
    waves = torch.from_numpy(np.stack([c.audio for c in clips]))
    shape, geometry = latent_shape()
    if latents_cache is not None and latents_cache.is_file():
        raw = torch.load(latents_cache)
    else:
        raw = invert_latents(comps.vae, videos, masks, recipe.invert_steps, recipe.invert_lr, report)
        if latents_cache is not None:
            torch.save(raw, latents_cache)
    purple_share = decoded_purple(comps.vae, raw)
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
                   text=states, text_mask=states_mask, shape=shape, fps=float(g.fps)), purple_share


def peft_config(recipe: LoraRecipe):
    from peft import LoraConfig

    return LoraConfig(r=recipe.rank, lora_alpha=recipe.alpha, target_modules=TARGETS, lora_dropout=0.0,
                      init_lora_weights=True)


def train(recipe: LoraRecipe, out: Path, checkpoint_dir: Path = DEMO_CHECKPOINT_DIR,
          latents_cache: Path | None = None) -> dict:
    """Train the adapter and write ``<out>/<name>.safetensors`` and ``<out>/<name>.json``; returns the record."""
    from diffusers import LTX2Pipeline
    from peft import get_peft_model_state_dict, inject_adapter_in_model

    started = time.perf_counter()
    torch.manual_seed(recipe.seed)
    comps = ComponentSource(preset("demo", checkpoint_dir=checkpoint_dir)).load(
        ("vae", "audio_vae", "vocoder", "tokenizer", "text_encoder", "connectors", "transformer", "scheduler"))
    log = LossLog()
    with StageProgress(log) as progress:
        with progress.stage("inversion", -(-recipe.clips // 8)) as report:
            data, purple_share = prepare(comps, recipe, report, latents_cache)
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
        "colour": list(PURPLE),
        "targets": TARGETS,
        "inverted_latents_decode_purple": purple_share,
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
    ap.add_argument("--seed", type=int, default=d.seed)
    ap.add_argument("--clips", type=int, default=d.clips, help=f"purple world clips (default {d.clips})")
    ap.add_argument("--rank", type=int, default=d.rank, help=f"LoRA rank (default {d.rank})")
    ap.add_argument("--alpha", type=float, default=d.alpha, help=f"LoRA alpha (default {d.alpha:g})")
    ap.add_argument("--steps", type=int, default=d.steps, help=f"optimizer steps (default {d.steps})")
    ap.add_argument("--batch", type=int, default=d.batch, help=f"clips per step (default {d.batch})")
    ap.add_argument("--lr", type=float, default=d.lr, help=f"peak AdamW learning rate (default {d.lr:g})")
    ap.add_argument("--invert-steps", type=int, default=d.invert_steps,
                    help=f"decoder-inversion steps per chunk of 8 clips (default {d.invert_steps})")
    ap.add_argument("--latents-cache", type=Path, metavar="FILE",
                    help="keep the inverted latents in FILE (read them from it when it exists)")
    ap.add_argument("--threads", type=int, default=1,
                    help="torch CPU threads (default 1: on two shared cores a second thread mostly waits)")
    args = ap.parse_args(argv)
    for flag in ("clips", "rank", "steps", "batch", "threads"):
        if getattr(args, flag) < 1:
            ap.error(f"--{flag} must be an integer >= 1, got {getattr(args, flag)}")
    torch.set_num_threads(args.threads)
    recipe = LoraRecipe(name=args.name, seed=args.seed, clips=args.clips, rank=args.rank, alpha=args.alpha,
                        steps=args.steps, batch=args.batch, lr=args.lr, invert_steps=args.invert_steps)
    record = train(recipe, args.out, args.checkpoint_dir, args.latents_cache)
    loss = record["final_loss"]
    print(f"wrote {args.out / (recipe.name + '.safetensors')} ({record['bytes'] / 1024:.1f} KiB, "
          f"{record['modules']} Linears, rank {recipe.rank}) in {record['seconds']['total'] / 60:.1f} min; loss "
          f"{record['first_loss']['loss']:.4f} -> {loss['loss']:.4f} (video_mse {loss['video_mse']:.4f}); inverted "
          f"latents decoding purple: {100 * record['inverted_latents_decode_purple']:.0f}%")


if __name__ == "__main__":
    main()
