"""The three stage engines chained in one process: the reference chain.

The engines live here together, loaded once (`kino run` and the tests take them from here). The
lock-step `denoise` below is the reference the equivalence and parallelism tests and the engine
benchmarks compare against: it has no scheduler, token budget or OOM split. Serving, `kino run`
included, drives the engines through one driver: the Denoiser's `DenoiseLoop` under the dispatcher
(serving/local_engine.py in one process, the Serve deployments in a cluster).
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
from engines.errors import InvalidParameter
from engines.media_encoder import MediaEncoder
from engines.model_loader import ALL_PARTS, Components, ComponentSource
from engines.mp4 import MediaInfo
from engines.params import GenerationParams
from engines.stage_io import DenoisedLatents, PromptEmbedding, PromptPair, VideoConditioning
from engines.text_encoder import TextEncoder
from engines.two_stage import stage_one, stage_two
from engines.upsampler import LatentUpsampler

StepCallback = Callable[[int, int], None]  # (steps done, total steps)


@dataclass
class StageTimes:
    """Wall seconds per stage of one generation; `str()` is the line `kino run` prints and benchmarks read:
    ``stages: encode 0.01 s | denoise 1.23 s | decode 0.56 s | total 1.80 s``."""

    encode: float = 0.0
    denoise: float = 0.0  # a two-stage request's: stage 1 + upsampling + stage 2
    decode: float = 0.0
    two_stage: tuple[float, float, float] | None = None  # (stage 1, upsampling, stage 2) seconds

    def two_stage_line(self) -> str | None:
        """``two-stage: stage 1 0.40 s | upsample 0.02 s | stage 2 0.31 s``, for a two-stage generation."""
        if self.two_stage is None:
            return None
        one, up, two = self.two_stage
        return f"two-stage: stage 1 {one:.2f} s | upsample {up:.2f} s | stage 2 {two:.2f} s"

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
        self.upsampler = LatentUpsampler(config, self.components, geometry)

    def denoise(self, requests: Sequence[tuple[str, GenerationParams]], on_step: StepCallback | None = None,
                conditioning: Sequence[VideoConditioning | None] | None = None,
                times: StageTimes | None = None,
                embeddings: Sequence[PromptEmbedding] | None = None) -> list[DenoisedLatents]:
        """Encode (unless `embeddings` are given) and denoise validated one-stage requests, batching every
        step across all of them (`times`: filled with the encode and denoise seconds)."""
        times = times if times is not None else StageTimes()
        started = time.perf_counter()
        if embeddings is None:
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

    def denoise_two_stage(self, params: GenerationParams, on_step: StepCallback | None = None,
                          times: StageTimes | None = None) -> DenoisedLatents:
        """A validated two-stage request (engines/two_stage.py): stage 1 at half size, the latents upsampled,
        the refine at full size; `on_step` counts the steps of both stages."""
        times = times if times is not None else StageTimes()
        one, two = stage_one(params), stage_two(params, self.config.schedule)
        total = one.steps + two.steps
        first, second = StageTimes(), StageTimes()
        started = time.perf_counter()
        embedding = self.text_encoder.encode([PromptPair(params.prompt, params.negative_prompt or "")])
        times.encode = time.perf_counter() - started
        [low] = self.denoise([("stage-1", one)], None if on_step is None else
                             (lambda done, _n: on_step(done, total)), times=first, embeddings=embedding)
        started = time.perf_counter()
        refine = self.upsampler.upsample(low)
        upsample = time.perf_counter() - started
        [full] = self.denoise([("stage-2", two)], None if on_step is None else
                              (lambda done, _n: on_step(one.steps + done, total)),
                              conditioning=[refine], times=second, embeddings=embedding)
        times.denoise = first.denoise + upsample + second.denoise
        times.two_stage = (first.denoise, upsample, second.denoise)
        return full

    def generate(self, params: GenerationParams, path: str | Path, *, on_step: StepCallback | None = None,
                 frame_filter: FrameFilter | None = None,
                 conditioning: VideoConditioning | None = None) -> GenerationResult:
        """One video with audio into `path` (params are validated here)."""
        params = params.validated(self.config)
        times = StageTimes()
        if params.two_stage:
            if conditioning is not None:
                raise InvalidParameter("two_stage", True, "false with an input image or a source video "
                                                          "(the refine would not see it)")
            latents = self.denoise_two_stage(params, on_step, times)
        else:
            [latents] = self.denoise([("local", params)], on_step=on_step, conditioning=[conditioning],
                                     times=times)
        started = time.perf_counter()
        media = self.decoder.render_mp4(latents, params, path, frame_filter=frame_filter)
        times.decode = time.perf_counter() - started
        return GenerationResult(path=Path(path), params=params, media=media, times=times)
