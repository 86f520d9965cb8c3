"""The README's picture of a demo video: a strip of its frames over its waveform, clicks and contacts marked.

    python -m training.readme_strip                     # generate with the demo preset (its default prompt)
    python -m training.readme_strip out/demo.mp4        # or draw an MP4 `make demo` wrote

Frames are drawn every other frame, each above the instant it shows; the waveform below carries the click onsets
heard in the audio (`training.truth.click_onsets`) and the contacts seen in the video
(`training.truth.video_contacts`), so the picture shows the sync the truth benchmark measures.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from training import truth
from training.world import EXAMPLE_PROMPT


def generate(prompt: str, seed: int, path: Path) -> Path:
    """One video with the demo preset through the engines (`StagedPipeline.generate`)."""
    from engines.config import preset
    from engines.params import GenerationRequest
    from engines.staged_pipeline import StagedPipeline

    StagedPipeline(preset("demo")).generate(GenerationRequest(prompt=prompt, seed=seed), path)
    return path


def draw(mp4: Path, out: Path, title: str, every: int = 2) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    frames, audio, rate, fps = truth.read_mp4(mp4)
    seen = truth.read(frames, audio, rate, fps)
    shown = list(range(0, len(frames), every))
    fig = plt.figure(figsize=(1.1 * len(shown), 3.0))
    grid = fig.add_gridspec(2, len(shown), height_ratios=(1.0, 1.1), hspace=0.25, wspace=0.05)
    for col, t in enumerate(shown):
        ax = fig.add_subplot(grid[0, col])
        ax.imshow(frames[t], interpolation="nearest")
        ax.set_xticks([])
        ax.set_yticks([])
        ax.set_title(f"{t / fps * 1000:.0f} ms", fontsize=7, color="C3" if t in seen.contacts else "black")
    wave = fig.add_subplot(grid[1, :])
    mono = audio.mean(axis=0)
    seconds = np.arange(len(mono)) / rate
    wave.plot(seconds, mono, color="0.25", linewidth=0.5)
    for i, t in enumerate(seen.contacts):
        wave.axvline(t / fps, color="C3", linewidth=2, alpha=0.35,
                     label="contact seen in the video" if i == 0 else None)
    for i, onset in enumerate(seen.onsets):
        wave.axvline(onset, color="C0", linestyle="--", linewidth=1,
                     label="click heard in the audio" if i == 0 else None)
    wave.set_xlim(0, len(frames) / fps)
    wave.set_xlabel("seconds")
    wave.set_yticks([])
    if seen.contacts or seen.onsets:
        wave.legend(fontsize=7, loc="upper right")
    fig.suptitle(f"\"{title}\" (demo preset): seen {seen.colour}, {seen.motion}", fontsize=9)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return out


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(prog="python -m training.readme_strip", description=__doc__.split("\n\n")[0])
    ap.add_argument("mp4", nargs="?", type=Path, help="a video to draw (default: generate one)")
    ap.add_argument("--prompt", default=EXAMPLE_PROMPT, help="what to generate (without an MP4)")
    ap.add_argument("--seed", type=int, default=7, help="noise seed (default 7)")
    ap.add_argument("--out", type=Path, default=Path("docs/demo_strip.png"), help="default: docs/demo_strip.png")
    args = ap.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        mp4 = args.mp4 or generate(args.prompt, args.seed, Path(tmp) / "demo.mp4")
        print(f"wrote {draw(mp4, args.out, args.prompt if args.mp4 is None else mp4.name)}")


if __name__ == "__main__":
    main()
