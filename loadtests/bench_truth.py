"""Output truth of the demo model: does it make what the prompt asks for, with the sound in sync?

    python -m loadtests.bench_truth                        # 48 prompt classes x 8 seeds, 16 remixes, 16 images
    python -m loadtests.bench_truth --seeds 1 --remixes 4 --images 4   # quicker
    python -m loadtests.bench_truth --checkpoint-dir out/train_demo/run   # a training run's weights, before they ship
    python -m loadtests.bench_truth --paths all --seeds 2 --remixes 0 --images 0   # each serving path against exact
    python -m loadtests.bench_truth --lora emerald --seeds 1 --remixes 0 --images 0   # an adapter's look, with/without

Every video goes through Kino's serving path in this process (`ServingPath`, over `LocalEngine`, what `kino run`
drives): jobs in a job store (SQLite), the `Dispatcher` driving `LocalStages` (the text encoder, the denoise loop
with step batching across jobs, the renderer that marks, muxes and signs into the artifact store), the same pieces
the Ray deployments wrap. `--paths` runs the same prompts and seeds through several of its configurations
(`TRUTH_PATHS`: exact, batched, step caching, int8, cfg-parallel and Ulysses over gloo ranks) and compares them.
The finished MP4s are measured with `training.truth`, from their decoded pixels and samples only:

- text-to-video, every prompt class of the world (colour x shape x motion x background) at each seed: colour
  adherence, motion adherence, and audio-visual sync (each contact seen in the video has a click onset within
  one frame, 41.7 ms);
- remix (the job's parent is a world clip of a sliding object, prompted to slide the other way, at strength
  0.6): the colour is kept, the first frame's object mask overlaps the source's (IoU), the new direction shows;
- image-to-video (the job's first-frame image is a world clip's first frame): PSNR of the output's first frame
  against the image, outside the watermark's badge (which covers 6% of a 64x64 frame and alone would hold the
  PSNR under 19 dB).

With ``--lora NAME[:SCALE]`` (adapters of ``--lora-dir``, default engines/weights/demo_loras) every path runs
twice, without and with the adapters on every job, and the table also reads the adapter's look (issue 28): the
share of the videos prompted with another colour whose object reads as the adapter's colour (`--look`, by default
the colour of the first adapter's training record, ``<name>.json``; ``emerald``: green). The goal is >= 90% of
those videos with the adapter and <= 10% without (the base model draws the prompt's colour).

Prints a markdown table of the figures against the goals of issue 13 (and 29), one per path, and with several
paths their colour, motion and sync against the first's.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import tempfile
import time
from dataclasses import dataclass, field
from fractions import Fraction
from pathlib import Path

import numpy as np
import PIL.Image

from engines.config import DEMO_LORA_DIR, ModelConfig, preset
from engines.mp4 import Waveform, write_mp4
from engines.params import GenerationRequest, params_to_dict
from engines.schema import load, merge
from kino.cli.options import lora_option
from serving.artifacts import LocalArtifactStore
from serving.config import BatchingConfig, KinoConfig
from serving.jobs import Conditioning, JobStatus, NewJob, open_store
from serving.local_engine import LoadedModel, LocalEngine
from training import truth
from training.world import COLOURS, Clip, PromptClass, dataset, prompt_classes, render, sample_scene

OPPOSITE = {"sliding left": "sliding right", "sliding right": "sliding left"}
REMIX_STRENGTH = 0.6


# The serving paths the truth bench compares (issue 29): each changes one thing of `exact` (one request per
# forward, no step cache, the eager float32 DiT on one rank), as a model and a batching override.
TRUTH_PATHS: dict[str, tuple[dict, dict]] = {
    "exact": ({}, {"max_batch_size": 1}),
    # Mixed requests in one forward: up to 8 rows of different prompts and seeds per step, not left to the
    # measured caps (which may choose 1 on a busy CPU and make this the exact path).
    "batched": ({}, {"measure_batches": False}),
    "cache-balanced": ({"step_cache": {"default": "balanced"}}, {"max_batch_size": 1}),
    "cache-fast": ({"step_cache": {"default": "fast"}}, {"max_batch_size": 1}),
    "int8": ({"dit_backend": "int8"}, {"max_batch_size": 1}),
    "cfg-parallel-2": ({"parallel": {"cfg": 2}}, {"max_batch_size": 1}),  # gloo, a follower process
    "ulysses-2": ({"parallel": {"ulysses": 2}}, {"max_batch_size": 1}),
}


def truth_config(model: ModelConfig, path: str = "batched") -> KinoConfig:
    """The server's config over `model`, on one of `TRUTH_PATHS`."""
    model_overrides, batching = TRUTH_PATHS[path]
    model = load(ModelConfig, merge(dataclasses.asdict(model), model_overrides, "model."), "model")
    return KinoConfig(model=model, batching=dataclasses.replace(BatchingConfig(), **batching))


class ServingPath:
    """Jobs through Kino's server pieces in this process: `LocalEngine` (what `kino run` drives: the dispatcher,
    the Denoiser's loop with its scheduler and step batching, the renderer that marks, muxes and signs into the
    artifact store), its model loaded as `kino run` loads it (over gloo ranks where the config's parallel says
    so). Jobs go straight into its job store (a remix's parent is a world clip, not a video of this store).
    `loras`: the (adapter name, scale) pairs every job asks for (of ``model.lora.dir``)."""

    def __init__(self, cfg: KinoConfig, work: Path, loras: tuple[tuple[str, float], ...] = ()) -> None:
        self.loras = tuple(loras)
        self._stack = contextlib.ExitStack()
        try:
            model = self._stack.enter_context(LoadedModel.load(cfg.model))
            self.engine = self._stack.enter_context(LocalEngine.open(cfg, model.pipeline, decoder=model.decoder,
                                                                     state_dir=work))
        except BaseException:
            self._stack.close()
            raise
        self.config, self.work = cfg.model, work
        self.store = self._stack.enter_context(contextlib.closing(open_store(self.engine.cfg.storage.database_url)))
        self.artifacts = LocalArtifactStore(Path(self.engine.cfg.storage.artifacts_dir))
        self.pending: list[str] = []

    def close(self) -> None:
        self._stack.close()

    def submit(self, name: str, prompt: str, seed: int, conditioning: Conditioning = Conditioning()) -> str:
        params = GenerationRequest(prompt=prompt, seed=seed, loras=self.loras).validated(self.config)
        job, _ = self.store.create(NewJob(id=f"video_{name}", tenant=self.engine.principal.tenant_id,
                                          model=self.config.model_id, priority=5, params=params_to_dict(params),
                                          request_hash=name, conditioning=conditioning), max_queued=100_000)
        self.pending.append(job.id)
        return job.id

    def put_clip(self, name: str, clip: Clip) -> str:
        """A world clip as an MP4 in the artifact store (a remix's parent); its key."""
        g, path = clip.geometry, self.work / f"{name}.mp4"
        write_mp4(path, [clip.video], width=g.width, height=g.height, fps=Fraction(g.fps), num_frames=g.frames,
                  audio=Waveform(clip.audio, g.sample_rate))
        return self.artifacts.put_file(f"sources/{name}.mp4", path).key

    def put_image(self, name: str, image: np.ndarray) -> str:
        return self.artifacts.put_png(f"images/{name}.png", PIL.Image.fromarray(image)).key

    def run(self) -> dict[str, Path]:
        """Run every submitted job to its end (all at once: the Denoiser's loop batches them as a replica
        would); job id -> its MP4."""
        ids, self.pending = self.pending, []
        self.engine.dispatcher.wake()
        finished = {i: self.engine.wait(self.store.get(i)) for i in ids}
        failed = {i: job.error_message for i, job in finished.items() if job.status != JobStatus.COMPLETED}
        if failed:
            raise RuntimeError(f"jobs failed: {failed}")
        return {i: self.artifacts.local_path(job.artifact.key) for i, job in finished.items()}


def read_video(path: Path) -> truth.Reading:
    frames, audio, rate, fps = truth.read_mp4(path)
    return truth.read(frames, audio, rate, fps)


@dataclass
class Tally:
    colour: list[bool] = field(default_factory=list)
    motion: list[bool] = field(default_factory=list)
    seen_colour: list[tuple[str, str | None]] = field(default_factory=list)  # (asked, read) per video
    contacts: int = 0
    in_sync: int = 0
    clips_with_contacts: int = 0
    remix_iou: list[float] = field(default_factory=list)
    remix_colour: list[bool] = field(default_factory=list)
    remix_motion: list[bool] = field(default_factory=list)
    i2v_psnr: list[float] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    def add_t2v(self, asked: PromptClass, seen: truth.Reading) -> None:
        self.colour.append(seen.colour == asked.colour)
        self.motion.append(seen.motion == asked.motion)
        self.seen_colour.append((asked.colour, seen.colour))
        self.contacts += seen.sync.contacts
        self.in_sync += seen.sync.in_sync
        self.clips_with_contacts += seen.sync.contacts > 0

    def look(self, colour: str) -> list[bool]:
        """Whether each video prompted with another colour reads `colour` (an adapter's look)."""
        return [seen == colour for asked, seen in self.seen_colour if asked != colour]

    @property
    def sync_share(self) -> float:
        return self.in_sync / self.contacts if self.contacts else 0.0


def text_to_video(path: ServingPath, classes: list[PromptClass], seeds: range, tally: Tally) -> None:
    asked = {path.submit(f"t2v-{seed}-{i}", c.caption, seed): c for seed in seeds for i, c in enumerate(classes)}
    for job_id, mp4 in path.run().items():
        tally.add_t2v(asked[job_id], read_video(mp4))


def remix_sources(count: int) -> list[tuple[Clip, PromptClass]]:
    """World clips of sliding objects and the class that slides them back (both start on the floor, so the
    object's place at the first frame is well defined for both)."""
    rng = np.random.default_rng(1234)
    slides = [c for c in prompt_classes() if c.motion in OPPOSITE]
    out = []
    for i in range(count):
        cls = slides[i % len(slides)]
        scene = sample_scene(cls, rng)
        while not 3 <= 15 - scene.first_contact <= 12:  # room to slide back the other way
            scene = sample_scene(cls, rng)
        out.append((render(scene), PromptClass(cls.colour, cls.shape, OPPOSITE[cls.motion], cls.background)))
    return out


def remix(path: ServingPath, count: int, strength: float, tally: Tally) -> None:
    jobs = {}
    for i, (source, target) in enumerate(remix_sources(count)):
        key = path.put_clip(f"remix-source-{i}", source)
        jobs[path.submit(f"remix-{i}", target.caption, 100 + i,
                         Conditioning(parent_key=key, strength=strength))] = (source, target)
    for job_id, mp4 in path.run().items():
        source, target = jobs[job_id]
        seen = read_video(mp4)
        tally.remix_iou.append(truth.mask_iou(seen.masks[0], source.masks[0]))
        tally.remix_colour.append(seen.colour == source.scene.cls.colour)
        tally.remix_motion.append(seen.motion == target.motion)


def image_to_video(path: ServingPath, count: int, tally: Tally) -> None:
    jobs = {}
    for i, clip in enumerate(dataset(count, 4321)):
        key = path.put_image(f"i2v-{i}", clip.video[0])
        jobs[path.submit(f"i2v-{i}", clip.caption, 200 + i, Conditioning(image_key=key))] = clip
    for job_id, mp4 in path.run().items():
        frames, *_ = truth.read_mp4(mp4)
        tally.i2v_psnr.append(truth.psnr(frames[0], jobs[job_id].video[0], truth.unmarked(*frames.shape[1:3])))


def _share(hits: list[bool]) -> str:
    return f"{100 * np.mean(hits):.1f}%" if hits else "-"


def table(t: Tally, look: str | None = None) -> str:
    rows = [
        ("colour adherence (object hue = prompt colour)", ">= 90%", _share(t.colour), len(t.colour)),
        ("motion adherence (centroid path = prompt motion)", ">= 90%", _share(t.motion), len(t.motion)),
        ("audio-visual sync (contacts with a click onset within 41.7 ms)", ">= 90%",
         f"{100 * t.sync_share:.1f}%" if t.contacts else "-", t.contacts),
        ("clips with a visible contact", "-", _share([True] * t.clips_with_contacts
                                                        + [False] * (len(t.colour) - t.clips_with_contacts)),
         len(t.colour)),
        ("remix: first-frame object mask IoU with the source (mean)", ">= 0.5",
         f"{np.mean(t.remix_iou):.2f}" if t.remix_iou else "-", len(t.remix_iou)),
        ("remix: IoU >= 0.5", "-", _share([v >= 0.5 for v in t.remix_iou]), len(t.remix_iou)),
        ("remix: colour kept", "-", _share(t.remix_colour), len(t.remix_colour)),
        ("remix: the prompt's new motion shows", "-", _share(t.remix_motion), len(t.remix_motion)),
        ("image-to-video: first-frame PSNR outside the badge (mean)", ">= 25 dB",
         f"{np.mean(t.i2v_psnr):.1f} dB" if t.i2v_psnr else "-", len(t.i2v_psnr)),
        ("image-to-video: PSNR >= 25 dB", "-", _share([v >= 25 for v in t.i2v_psnr]), len(t.i2v_psnr)),
    ]
    if look is not None:
        hits = t.look(look)
        rows.insert(3, (f"{look} look (object reads {look}, prompts of the other colours)",
                        "with the adapter >= 90%, without <= 10%", _share(hits), len(hits)))
    lines = ["| measure | goal | result | n |", "| --- | --- | ---: | ---: |"]
    lines += [f"| {m} | {goal} | {result} | {n} |" for m, goal, result, n in rows]
    return "\n".join(lines)


def compare(tallies: dict[str, Tally]) -> str:
    """Colour, motion and sync of each path, with its difference in points from the first (the exact path)."""
    names = list(tallies)
    base = tallies[names[0]]

    def figures(t: Tally) -> tuple[float, float, float]:
        return 100 * float(np.mean(t.colour)), 100 * float(np.mean(t.motion)), 100 * t.sync_share

    lines = ["| path | colour | motion | sync | contacts | seconds |", "| --- | ---: | ---: | ---: | ---: | ---: |"]
    for name in names:
        t = tallies[name]
        cells = []
        for value, reference in zip(figures(t), figures(base), strict=True):
            cells.append(f"{value:.1f}%" if name == names[0] else f"{value:.1f}% ({value - reference:+.1f})")
        lines.append(f"| {name} | {' | '.join(cells)} | {t.contacts} | {sum(t.seconds.values()):.0f} |")
    return "\n".join(lines)


def measure(cfg: KinoConfig, classes: list[PromptClass], seeds: int, remixes: int, strength: float,
            images: int, loras: tuple[tuple[str, float], ...] = ()) -> Tally:
    tally = Tally()
    with tempfile.TemporaryDirectory() as tmp:
        path = ServingPath(cfg, Path(tmp), loras)
        try:
            for name, run in (("text-to-video", lambda: text_to_video(path, classes, range(seeds), tally)),
                              ("remix", lambda: remix(path, remixes, strength, tally)),
                              ("image-to-video", lambda: image_to_video(path, images, tally))):
                started = time.perf_counter()
                run()
                tally.seconds[name] = time.perf_counter() - started
        finally:
            path.close()
    return tally


def adapter_colour(lora_dir: Path, name: str) -> str | None:
    """The colour an adapter draws every object in, from its training record (`training.train_lora`), if any."""
    record = lora_dir / f"{name}.json"
    if not record.is_file():
        return None
    colour = json.loads(record.read_text()).get("colour")
    return colour[0] if colour and colour[0] in COLOURS else None


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--preset", default="demo", help="model preset (default demo)")
    ap.add_argument("--seeds", type=int, default=8, help="seeds per prompt class (default 8)")
    ap.add_argument("--classes", type=int, default=48, help="prompt classes, of the world's 48 (default all)")
    ap.add_argument("--remixes", type=int, default=16, help="remix generations (default 16)")
    ap.add_argument("--strength", type=float, default=REMIX_STRENGTH, help="remix strength (default 0.6)")
    ap.add_argument("--images", type=int, default=16, help="image-to-video generations (default 16)")
    ap.add_argument("--checkpoint-dir", type=Path, metavar="DIR",
                    help="the preset's weights from this directory instead (a training run's --out, before it ships)")
    ap.add_argument("--steps", type=int, help="denoising steps (default: the preset's)")
    ap.add_argument("--guidance", type=float, help="guidance scale of video and audio (default: the preset's)")
    ap.add_argument("--paths", default="batched",
                    help="comma-separated serving paths to run the same prompts and seeds through, the first the "
                         f"reference of the others (default batched; of: {', '.join(TRUTH_PATHS)}; 'all': every "
                         "one, exact first)")
    ap.add_argument("--lora", type=lora_option, action="append", default=[], metavar="NAME[:SCALE]",
                    help="run every path without and with this adapter on every job (repeat to combine)")
    ap.add_argument("--lora-dir", type=Path, default=DEMO_LORA_DIR, metavar="DIR",
                    help=f"where --lora's adapters live (model.lora.dir; default {DEMO_LORA_DIR})")
    ap.add_argument("--look", choices=sorted(COLOURS), metavar="COLOUR",
                    help="the adapter's look: the colour its objects read (default: the first --lora's record)")
    args = ap.parse_args()
    paths = list(TRUTH_PATHS) if args.paths == "all" else args.paths.split(",")
    unknown = [p for p in paths if p not in TRUTH_PATHS]
    if unknown:
        ap.error(f"--paths: unknown {', '.join(unknown)}; one of {', '.join(TRUTH_PATHS)}")
    config = preset(args.preset, **({"checkpoint_dir": args.checkpoint_dir} if args.checkpoint_dir else {}))
    sampling = {k: v for k, v in (("steps", args.steps), ("guidance_scale", args.guidance),
                                  ("audio_guidance_scale", args.guidance)) if v is not None}
    config = config.replace(defaults=dataclasses.replace(config.defaults, **sampling))
    look = args.look
    if args.lora:
        config = config.replace(lora=dataclasses.replace(config.lora, dir=args.lora_dir))
        look = look or adapter_colour(args.lora_dir, args.lora[0][0])
    variants = [("", ())]
    if args.lora:
        variants.append((" + " + ",".join(f"{n}:{s:g}" for n, s in args.lora), tuple(args.lora)))
    classes = prompt_classes()[: args.classes]
    tallies = {}
    for path_name in paths:
        for suffix, loras in variants:
            name = path_name + suffix
            tallies[name] = measure(truth_config(config, path_name), classes, args.seeds, args.remixes, args.strength,
                                    args.images, loras)
            print(f"{name}: " + ", ".join(f"{k} {v:.0f} s" for k, v in tallies[name].seconds.items()), flush=True)
    d = config.defaults
    print(f"\nPreset {args.preset}: {d.width}x{d.height}, {d.seconds * float(d.fps):.0f} frames at {d.fps} fps, "
          f"{d.steps} steps, guidance {d.guidance_scale:g} (audio {d.audio_guidance_scale:g}); "
          f"{args.classes} prompt classes x {args.seeds} seeds, {args.remixes} remixes at strength "
          f"{args.strength:g}, {args.images} images\n")
    for name, tally in tallies.items():
        print(f"Path {name}:\n\n{table(tally, look)}\n")
    if len(tallies) > 1:
        print(f"The paths against {paths[0]} (points):\n\n{compare(tallies)}")


if __name__ == "__main__":
    main()
