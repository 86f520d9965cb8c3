"""The three stage engines chained in one process.

The cluster runs these same engines as separate Serve deployments; this in-process chain
serves the `kino run` command, the correctness tests and the engine benchmarks.
"""

from __future__ import annotations

import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from engines.config import ModelConfig
from engines.decoder import Decoder, FrameFilter
from engines.denoiser import Denoiser, DenoiseRequest, DenoiseState
from engines.dit_backend import DiTBackend
from engines.media_encoder import MediaEncoder
from engines.model_loader import ALL_PARTS, Components, ComponentSource
from engines.mp4 import MediaInfo
from engines.params import GenerationParams
from engines.stage_io import DenoisedLatents, PromptPair, VideoConditioning
from engines.text_encoder import TextEncoder

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class StageTimes:
    """Wall seconds per stage of one generation; `str()` is the line `kino run` prints and benchmarks read:
    ``stages: encode 0.01 s | denoise 1.23 s | decode 0.56 s | total 1.80 s``."""

    encode: float = 0.0
    denoise: float = 0.0
    decode: float = 0.0

    @property
    def total(self) -> float:
        return self.encode + self.denoise + self.decode

    def __str__(self) -> str:
        return (f"stages: encode {self.encode:.2f} s | denoise {self.denoise:.2f} s | decode {self.decode:.2f} s | "
                f"total {self.total:.2f} s")

    @classmethod
    def parse(cls, text: str) -> StageTimes:
        """The last stage-times line in `text` (a command's output)."""
        found = re.findall(r"stages: encode ([\d.]+) s \| denoise ([\d.]+) s \| decode ([\d.]+) s", text)
        if not found:
            raise ValueError("no 'stages: ...' line in the text")
        encode, denoise, decode = (float(v) for v in found[-1])
        return cls(encode, denoise, decode)


@dataclass(frozen=True)
class GenerationResult:
    path: Path
    params: GenerationParams
    media: MediaInfo
    times: StageTimes = field(default_factory=StageTimes)


class StagedPipeline:
    """Text encoder -> denoiser -> decoder, sharing one set of loaded components."""

    def __init__(self, config: ModelConfig, components: Components | None = None,
                 backend: DiTBackend | None = None) -> None:
        source = ComponentSource(config)
        self.config = config
        self.components = components or source.load(ALL_PARTS)
        geometry = source.geometry()
        self.text_encoder = TextEncoder(config, self.components)
        self.denoiser = Denoiser(config, self.components, geometry, backend=backend)
        self.decoder = Decoder(config, self.components, geometry)
        self.media = MediaEncoder(config, self.components, geometry)

    def denoise(self, requests: Sequence[tuple[str, GenerationParams]], on_step: StepCallback | None = None,
                conditioning: Sequence[VideoConditioning | None] | None = None,
                times: StageTimes | None = None) -> list[DenoisedLatents]:
        """Encode and denoise validated requests, batching every step across all of them (`times`:
        filled with the encode and denoise seconds)."""
        times = times if times is not None else StageTimes()
        started = time.perf_counter()
        embeddings = self.text_encoder.encode(
            [PromptPair(p.prompt, p.negative_prompt or "") for _, p in requests])
        times.encode = time.perf_counter() - started
        conds = list(conditioning) if conditioning is not None else [None] * len(requests)
        states: list[DenoiseState] = [
            self.denoiser.prepare(DenoiseRequest(rid, p, emb, cond))
            for (rid, p), emb, cond in zip(requests, embeddings, conds, strict=True)]
        total = max(s.steps_total for s in states)
        done = 0
        while running := [s for s in states if not s.done]:
            # Step-level batching: every running request of the same shape shares one forward.
            for shape in dict.fromkeys(s.shape for s in running):
                self.denoiser.step([s for s in running if s.shape == shape])
            done += 1
            if on_step is not None:
                on_step(done, total)
        results = [self.denoiser.result(s) for s in states]
        times.denoise = time.perf_counter() - started - times.encode
        return results

    def generate(self, params: GenerationParams, path: str | Path, *, on_step: StepCallback | None = None,
                 frame_filter: FrameFilter | None = None,
                 conditioning: VideoConditioning | None = None) -> GenerationResult:
        """One video with audio into `path` (params are validated here)."""
        params = params.validated(self.config)
        times = StageTimes()
        [latents] = self.denoise([("local", params)], on_step=on_step, conditioning=[conditioning], times=times)
        started = time.perf_counter()
        media = self.decoder.render_mp4(latents, params, path, frame_filter=frame_filter)
        times.decode = time.perf_counter() - started
        return GenerationResult(path=Path(path), params=params, media=media, times=times)
