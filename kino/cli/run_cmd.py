"""`kino run`: one generation in this process, no cluster (quick checks and debugging).

It keeps the product's promises as the cluster does: the prompt is moderated, every frame carries
the visible mark, and the MP4 is signed with the configured (or local development) C2PA chain.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kino.cli.options import add_generation_options, add_model_options, model_mapping_from_args, params_from_args

if TYPE_CHECKING:
    from engines.config import ModelConfig
    from engines.parallel.world import LocalRanks
    from engines.params import GenerationParams
    from serving.config import KinoConfig


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="generate one video in this process, without a cluster",
        description="Load the model in this process and generate one video with audio, without starting a "
                    "cluster. Useful to check a checkpoint or a preset; `kino generate` goes through a server.")
    add_generation_options(p)
    add_model_options(p)
    p.add_argument("-o", "--output", default="kino.mp4", type=Path, help="where to write the MP4 (default: kino.mp4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from engines.config import from_mapping
    from engines.parallel.world import LocalRanks
    from serving.config import load_config
    from serving.moderation import RuleModerator

    console = Console()
    settings = load_config()  # provenance and moderation settings, with KINO_* overrides
    config = from_mapping(model_mapping_from_args(args))
    params = params_from_args(args).validated(config)
    verdict = RuleModerator.from_file(settings.moderation.rules_file).check(params.prompt)
    if not verdict.allowed:  # (a negative prompt steers away from what it names: not moderated)
        console.print(f"[red]prompt rejected by moderation: category {verdict.category}: {verdict.reason}")
        return 2
    # An engine over several ranks: its followers start loading now, in processes of their own.
    ranks = LocalRanks(config) if config.parallel.world_size > 1 else None
    try:
        return _generate(args, config, params, settings, console, ranks)
    finally:
        if ranks is not None:
            ranks.close()


def _generate(args: argparse.Namespace, config: ModelConfig, params: GenerationParams, settings: KinoConfig,
              console: Console, ranks: LocalRanks | None) -> int:
    import uuid

    from engines.decoder import Decoder
    from engines.model_loader import ALL_PARTS, ComponentSource
    from engines.staged_pipeline import StagedPipeline, StageTimes
    from serving.provenance.claim import Claim, prompt_sha256
    from serving.provenance.credentials import ContentCredentials
    from serving.rendering import Renderer

    with console.status(f"loading model {config.model_id}"):
        components = ComponentSource(config).load(ALL_PARTS)
        lead = ranks.lead() if ranks is not None else None  # waits for the followers to load and join
        pipeline = StagedPipeline(config, components, backend=lead.backend(components.transformer) if lead else None)
        decoder = Decoder(config, components, runner=lead.runner()) if lead else pipeline.decoder
    if lead is not None:
        p = config.parallel
        console.print(f"  one engine over {p.world_size} ranks (cfg {p.cfg} x ulysses {p.ulysses}, "
                      f"{lead.leader.groups.device.type}); followers: pids "
                      f"{', '.join(str(proc.pid) for proc in ranks.processes)}")
    renderer = Renderer(decoder, pipeline.media, None, ContentCredentials(settings.provenance),
                        settings.provenance.watermark)
    times = StageTimes()
    with Progress(TextColumn("[bold]denoising"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("denoise", total=params.steps)

        def on_step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        if params.two_stage:  # stage 1 at half size, upsampling, the refine: one bar over both stages
            latents = pipeline.denoise_two_stage(params, on_step=on_step, times=times)
        else:
            [latents] = pipeline.denoise([("run", params)], times=times, on_step=on_step)
    started = time.perf_counter()
    claim = Claim(video_id=f"run_{uuid.uuid4().hex}", model=config.model_id, prompt_sha256=prompt_sha256(params.prompt))
    media = renderer.render_file(latents, params, args.output, claim)
    times.decode = time.perf_counter() - started
    console.print(f"wrote [bold]{args.output.resolve()}[/bold] (watermarked, C2PA-signed)")
    console.print(f"  {media.summary()}")
    console.print(f"  seed {params.seed}, {params.steps} steps, model {config.model_id}")
    if times.two_stage_line():
        print(times.two_stage_line(), flush=True)
    print(times, flush=True)
    return 0
