"""What one denoising forward can hold, checked at create: a request that could never run is refused
then, naming what it asked for and the largest that fits, never accepted and failed later.

A request's weight in a forward is its rows (2 with classifier-free guidance) x (video + audio
latent tokens). The bound is the Denoiser replicas' token budget: `batching.max_tokens`, or lower on
a GPU where a replica's memory profile at start says so (a replica reports what it measured through Serve;
the front door caches it, serving/deployments/frontend.py).
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable

from engines.config import ModelConfig
from engines.params import GenerationParams, frames_for, model_frames_for
from engines.stage_io import LatentGeometry, LatentShape
from serving.errors import InvalidArgument


def tokens_per_forward(params: GenerationParams, geometry: LatentGeometry) -> int:
    shape = LatentShape.for_params(params, geometry)
    return (2 if params.use_cfg else 1) * (shape.video_tokens + shape.audio_frames)


class DenoiseCapacity:
    """The token budget of one forward: what a Denoiser replica reported (`reported`: None until one has), else
    the config's."""

    def __init__(self, model: ModelConfig, geometry: LatentGeometry, configured: int,
                 reported: Callable[[], int | None]) -> None:
        self.model, self.geometry, self.configured, self.reported = model, geometry, configured, reported

    def budget(self) -> int:
        return self.reported() or self.configured

    def check(self, params: GenerationParams) -> None:
        """InvalidArgument (field `size`) if `params` alone exceed one forward."""
        budget = self.budget()
        needed = tokens_per_forward(params, self.geometry)
        if needed <= budget:
            return
        guidance = " with guidance" if params.use_cfg else ""
        raise InvalidArgument(
            f"size: {params.size} for {params.seconds:g} s needs {needed} latent tokens per forward{guidance}; "
            f"this server's denoiser holds at most {budget} (batching.max_tokens): the largest that fits is "
            f"{self._fit_seconds(params, budget)} or {self._fit_size(params, budget)}", field="size")

    def _fits(self, params: GenerationParams, budget: int) -> bool:
        return tokens_per_forward(params, self.geometry) <= budget

    def _lasting(self, params: GenerationParams, frames: int) -> GenerationParams:
        """`params` delivering `frames` frames (and generating the frames the model's layout needs for them)."""
        return dataclasses.replace(params, seconds=float(frames / params.fps),
                                   num_frames=model_frames_for(frames, self.geometry.temporal_compression))

    def _fit_seconds(self, params: GenerationParams, budget: int) -> str:
        """The longest duration at this size that fits."""
        lim = self.model.limits
        lo, hi = frames_for(lim.min_seconds, params.fps), params.output_frames
        if not self._fits(self._lasting(params, lo), budget):
            return f"nothing at {params.size}"
        while lo < hi:  # the most frames that fit
            mid = (lo + hi + 1) // 2
            lo, hi = (mid, hi) if self._fits(self._lasting(params, mid), budget) else (lo, mid - 1)
        return f"{params.size} for {math.floor(lo / params.fps * 10) / 10:g} s"

    def _fit_size(self, params: GenerationParams, budget: int) -> str:
        """The largest size of this aspect at this duration that fits."""
        m = self.model.limits.side_multiple
        for scale in (s / 100 for s in range(99, 0, -1)):
            w = max(self.model.limits.min_side, int(params.width * scale) // m * m)
            h = max(self.model.limits.min_side, int(params.height * scale) // m * m)
            if self._fits(dataclasses.replace(params, width=w, height=h), budget):
                return f"{w}x{h} for {params.seconds:g} s"
        return f"nothing for {params.seconds:g} s"
