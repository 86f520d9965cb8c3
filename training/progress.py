"""What a training run shows while it runs (a rich progress bar per stage) and keeps (loss curves as PNG)."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn


class LossLog:
    """Every stage's losses by step, and the wall seconds each stage took."""

    def __init__(self) -> None:
        self.curves: dict[str, dict[str, list[tuple[int, float]]]] = defaultdict(lambda: defaultdict(list))
        self.seconds: dict[str, float] = {}

    def add(self, stage: str, step: int, values: dict[str, float]) -> None:
        for name, value in values.items():
            self.curves[stage][name].append((step, value))

    def to_json(self) -> dict:
        return {"curves": self.curves, "seconds": self.seconds}

    @classmethod
    def from_json(cls, saved: dict) -> LossLog:
        """What `to_json` wrote (an earlier chunk of the same run)."""
        log = cls()
        for stage, curves in saved["curves"].items():
            for name, points in curves.items():
                log.curves[stage][name] = [(int(step), float(value)) for step, value in points]
        log.seconds = dict(saved["seconds"])
        return log

    def last(self, stage: str, window: int = 50) -> dict[str, float]:
        """Mean of each loss over the stage's last `window` steps."""
        out = {}
        for name, points in self.curves[stage].items():
            tail = [v for _, v in points[-window:]]
            out[name] = sum(tail) / len(tail)
        return out

    def plot(self, path: Path) -> Path:
        """One panel per stage, each loss smoothed over a sliding window (raw values faint behind)."""
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        import numpy as np

        stages = [stage for stage, curves in self.curves.items() if curves]  # stages that reported losses
        fig, axes = plt.subplots(1, len(stages), figsize=(4.2 * len(stages), 3.4), squeeze=False)
        for ax, stage in zip(axes[0], stages, strict=True):
            for name, points in self.curves[stage].items():
                steps, values = (np.array(v) for v in zip(*points, strict=True))
                k = max(1, len(values) // 50)
                smooth = np.convolve(values, np.ones(k) / k, mode="valid")
                line, = ax.plot(steps[k - 1:], smooth, label=name)
                ax.plot(steps, values, color=line.get_color(), alpha=0.15, linewidth=0.5)
            ax.set_title(f"{stage} ({self.seconds.get(stage, 0) / 60:.1f} min)")
            ax.set_xlabel("step")
            if all(v > 0 for pts in self.curves[stage].values() for _, v in pts):
                ax.set_yscale("log")
            ax.legend(fontsize=7)
        fig.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(path, dpi=110)
        plt.close(fig)
        return path


class StageProgress:
    """A progress bar per stage that also records the stage's losses and wall time into a `LossLog`.

    Where the console is not a terminal (output to a log file), a line every 5% of a stage stands in for the
    live bar."""

    def __init__(self, log: LossLog, console: Console | None = None) -> None:
        self.log = log
        self.progress = Progress(TextColumn("[bold]{task.description:<12}"), BarColumn(), MofNCompleteColumn(),
                                 TimeElapsedColumn(), TimeRemainingColumn(), TextColumn("{task.fields[losses]}"),
                                 console=console)

    def __enter__(self) -> StageProgress:
        self.progress.start()
        return self

    def __exit__(self, *exc) -> None:
        self.progress.stop()

    @contextmanager
    def stage(self, name: str, total: int, done: int = 0) -> Iterator[Callable[[int, dict[str, float]], None]]:
        """A stage of `total` steps, `done` of them by an earlier chunk of the run (its seconds add up)."""
        task = self.progress.add_task(name, total=total, completed=done, losses="")
        started = time.perf_counter()
        reached = done

        def report(step: int, values: dict[str, float]) -> None:
            nonlocal reached
            reached = step + 1
            self.log.add(name, step, values)
            text = " ".join(f"{k} {v:.4g}" for k, v in self.log.last(name, 20).items())
            self.progress.update(task, completed=step + 1, losses=text)
            console = self.progress.console
            if not console.is_terminal and (step + 1) % max(1, total // 20) == 0:
                console.print(f"{name} {step + 1}/{total} {time.perf_counter() - started:.0f}s {text}")

        yield report
        self.log.seconds[name] = self.log.seconds.get(name, 0.0) + time.perf_counter() - started
        self.progress.update(task, completed=reached)
