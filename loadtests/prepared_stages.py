"""`PreparedMp4Stages`: a benchmark tool, never used by the server. Stages that compute nothing: each denoise
request pushes its steps and each decode returns one MP4 prepared before the run.

As vLLM benchmarks its scheduler with dummy weights, loadtests/bench_control_plane.py runs the server's own control
plane (VideoService, Dispatcher and JobRunner, ProgressHub, the SQL job store) over these stages, so what it
measures is the control plane alone: no model, no tensors, no encoder. The server never imports loadtests
(tests/test_layers.py holds that rule), so these stages cannot end up serving a client.

The MP4 is made once, by the project's own writer (engines/mp4.py: a few frames of a colour ramp, no audio), and put
in the artifact store once; every job's decode returns that artifact's record (its key, size and SHA-256), so a job
completes as a real one does, without an MP4 written per job.
"""

from __future__ import annotations

import asyncio
import tempfile
from collections.abc import AsyncIterator
from fractions import Fraction
from pathlib import Path
from typing import Any

import numpy as np

from engines.mp4 import write_mp4
from engines.params import GenerationParams
from serving.artifacts import Artifact, ArtifactStore
from serving.data_plane.stages import Checkpointing, Denoised, DenoiseEvent, DenoiseItem, StageClient
from serving.jobs import Conditioning
from serving.provenance.claim import Claim

PREPARED_KEY = "bench/prepared.mp4"


def prepared_mp4(artifacts: ArtifactStore, key: str = PREPARED_KEY, *, frames: int = 8, side: int = 64) -> Artifact:
    """Encode `frames` frames of `side` x `side` (a moving colour ramp, H.264, no audio) and put the MP4 in
    `artifacts` under `key`; its record."""
    ramp = np.linspace(0, 255, side, dtype=np.float32)
    video = np.stack([np.stack([np.roll(ramp, 4 * f)[None, :].repeat(side, 0),
                                ramp[:, None].repeat(side, 1),
                                np.full((side, side), 32.0 * (f % 8), np.float32)], axis=-1)
                      for f in range(frames)]).astype(np.uint8)
    with tempfile.TemporaryDirectory(prefix="kino-prepared-") as tmp:
        path = Path(tmp) / "prepared.mp4"
        write_mp4(path, [video], width=side, height=side, fps=Fraction(24), num_frames=frames, audio=None)
        return artifacts.put_file(key, path)


class PreparedMp4Stages(StageClient):
    """A `StageClient` for benchmarks only: `denoise` streams the request's steps (one `DenoiseEvent` each, after
    `step_seconds`; 0 still lets the event loop run between two steps, as a stream from a replica does), then
    `Denoised`; `decode` returns `artifact`, the MP4 prepared once (`prepared_mp4`). Encode, condition and upsample
    return placeholders at once; enhance returns the prompt as written. Checkpointing is ignored (no state)."""

    def __init__(self, artifact: Artifact, *, step_seconds: float = 0.0) -> None:
        self.artifact = artifact
        self.step_seconds = step_seconds
        self.requests = 0  # denoise requests served (a check for the benchmark: one per claimed job)

    @classmethod
    def prepare(cls, artifacts: ArtifactStore, *, step_seconds: float = 0.0) -> PreparedMp4Stages:
        return cls(prepared_mp4(artifacts), step_seconds=step_seconds)

    async def enhance(self, job_id: str, params: GenerationParams) -> str:
        return params.prompt

    def encode(self, job_id: str, params: GenerationParams) -> Any:
        return job_id  # an opaque reference, as a real encode returns; denoise ignores it

    def condition(self, job_id: str, params: GenerationParams, conditioning: Conditioning) -> Any:
        return None

    async def denoise(self, request_id: str, params: GenerationParams, embedding: Any, priority: int,
                      conditioning: Any = None, checkpointing: Checkpointing | None = None
                      ) -> AsyncIterator[DenoiseItem]:
        self.requests += 1
        for step in range(1, params.steps + 1):
            await asyncio.sleep(self.step_seconds)
            yield DenoiseEvent(step=step, total_steps=params.steps, batch_size=1)
        yield Denoised(latents=request_id)  # a handle the decode below ignores

    def upsample(self, job_id: str, latents: Any) -> Any:
        return latents

    async def decode(self, job_id: str, params: GenerationParams, latents: Any, artifact_key: str,
                     claim: Claim, parent_key: str | None = None) -> Artifact:
        return self.artifact
