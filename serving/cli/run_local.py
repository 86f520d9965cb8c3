"""`kino run`: one generation in this process, no cluster (quick checks and debugging)."""

from __future__ import annotations

import argparse
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from serving.cli.options import add_generation_options, add_model_options, model_mapping_from_args, params_from_args


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
    from engines.staged_pipeline import StagedPipeline

    console = Console()
    config = from_mapping(model_mapping_from_args(args))
    params = params_from_args(args).validated(config)
    with console.status(f"loading model {config.model_id}"):
        pipeline = StagedPipeline(config)
    with Progress(TextColumn("[bold]denoising"), BarColumn(), TextColumn("step {task.completed}/{task.total}"),
                  TimeElapsedColumn(), console=console) as bar:
        task = bar.add_task("denoise", total=params.steps)
        result = pipeline.generate(params, args.output, on_step=lambda done, total: bar.update(task, completed=done))
    console.print(f"wrote [bold]{result.path.resolve()}[/bold]")
    console.print(f"  {result.media.summary()}")
    console.print(f"  seed {params.seed}, {params.steps} steps, model {config.model_id}")
    return 0
