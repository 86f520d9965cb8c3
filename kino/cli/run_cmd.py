"""`kino run`: one generation in this process, no cluster (quick checks and debugging).

It drives the server's own pieces in this process (serving/local_engine.py): the front door's validation,
moderation and token budget, the dispatcher, the Denoiser's loop and scheduler, the renderer. So it keeps
the product's promises as the cluster does: the prompt is moderated, every frame carries the visible mark,
and the MP4 is signed with the configured (or local development) C2PA chain.
"""

from __future__ import annotations

import argparse
import contextlib
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from kino.cli.options import (
    add_generation_options,
    add_lora_options,
    add_model_options,
    model_mapping_from_args,
    request_from_args,
)

if TYPE_CHECKING:
    from serving.config import KinoConfig
    from serving.control_plane.progress import Progress as ProgressEvent
    from serving.local_engine import LoadedModel


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "run", help="generate one video in this process, without a cluster",
        description="Load the model in this process and generate one video with audio, without starting a "
                    "cluster. Useful to check a checkpoint or a preset; `kino generate` goes through a server.")
    add_generation_options(p)
    add_lora_options(p)
    add_model_options(p)
    p.add_argument("-o", "--output", default="kino.mp4", type=Path, help="where to write the MP4 (default: kino.mp4)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses

    from engines.config import from_mapping
    from serving.config import load_config
    from serving.local_engine import LoadedModel

    console = Console()
    settings = load_config()  # batching, queue, provenance and moderation settings, with KINO_* overrides
    cfg = dataclasses.replace(settings, model=from_mapping(model_mapping_from_args(args)))
    config = cfg.model
    with contextlib.ExitStack() as stack:
        with console.status(f"loading model {config.model_id}"):
            model = stack.enter_context(LoadedModel.load(config))
        if model.lead is not None and model.ranks is not None:
            p = config.parallel
            console.print(f"  one engine over {p.world_size} ranks (cfg {p.cfg} x ulysses {p.ulysses}, "
                          f"{model.lead.leader.groups.device.type}); followers: pids "
                          f"{', '.join(str(proc.pid) for proc in model.ranks.processes)}")
        return _generate(args, cfg, console, model)


def _generate(args: argparse.Namespace, cfg: KinoConfig, console: Console, model: LoadedModel) -> int:
    from engines.mp4 import probe
    from serving.errors import KinoError
    from serving.jobs import JobStatus
    from serving.local_engine import LocalEngine

    config = cfg.model
    columns = (TextColumn("[bold]{task.description}"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
               TimeElapsedColumn())
    with LocalEngine.open(cfg, model.pipeline, decoder=model.decoder) as engine:
        try:
            job = engine.submit(request_from_args(args))
        except KinoError as e:  # what the server answers: INVALID_ARGUMENT, FAILED_PRECONDITION (moderation)
            print(f"kino: error: {e.code.name}: {e.message}", file=sys.stderr)
            return 2
        with Progress(*columns, console=console) as bar:
            task = bar.add_task("queued", total=job.generation.steps)

            def on_progress(event: ProgressEvent) -> None:
                bar.update(task, description=event.stage.value, completed=event.step,
                           total=event.total_steps or None)

            job = engine.wait(job, on_progress)
        if job.status != JobStatus.COMPLETED:
            console.print(f"[red]{job.status.value}: {job.error_code}: {job.error_message}")
            return 1
        engine.save(job, args.output)
        times = engine.times(job)
    params = job.generation
    console.print(f"wrote [bold]{args.output.resolve()}[/bold] (watermarked, C2PA-signed)")
    console.print(f"  {probe(args.output).summary()}")
    console.print(f"  seed {params.seed}, {params.steps} steps, model {config.model_id}")
    if params.loras:
        console.print("  LoRA adapters: " + ", ".join(f"{name} at {scale:g}" for name, scale in params.loras))
    if times.two_stage_line():
        print(times.two_stage_line(), flush=True)
    print(times, flush=True)
    return 0
