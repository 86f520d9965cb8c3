"""Load-test workloads: a mix of requests, how they arrive, when to stop, and the SLO.

    name: mixed
    mode: closed                 # closed: N clients, each waits for its video before the next
    clients: [1, 4, 16]          #   one run per level
    # mode: open                 # open: Poisson arrivals
    # rates: [0.2, 0.5]          #   videos per second, one run per rate
    max_videos: 32               # per run, whichever limit comes first
    max_seconds: 300
    mix:
      - {weight: 3, size: 256x256, seconds: 1.375, priority: 5}
      - {weight: 1, size: 128x128, seconds: 1.0, priority: 9, steps: 4, cache: balanced}
    slo:
      latency_seconds: 20        # a video meets the SLO when it is done within this
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import yaml


@dataclass(frozen=True)
class RequestClass:
    size: str
    seconds: float
    weight: float = 1.0
    priority: int = 5
    steps: int | None = None
    cache: str | None = None  # step caching asked of Kino (off, balanced, fast; None: the server's default)

    @property
    def label(self) -> str:
        return f"{self.size}/{self.seconds:g}s/p{self.priority}"


@dataclass(frozen=True)
class Workload:
    name: str
    mix: tuple[RequestClass, ...]
    mode: Literal["closed", "open"] = "closed"
    clients: tuple[int, ...] = (1, 4, 16)
    rates: tuple[float, ...] = ()
    max_videos: int = 32
    max_seconds: float = 300.0
    slo_latency_seconds: float = 60.0
    prompts: tuple[str, ...] = field(default_factory=lambda: (
        "a robot dancing on the beach, waves and a steel drum", "rain on a tin roof at night",
        "a choir singing in a stone church", "a busy market street, voices and music",
        "a thunderstorm over the sea", "a cat playing piano, soft jazz"))

    @property
    def levels(self) -> tuple[float, ...]:
        return tuple(self.clients) if self.mode == "closed" else tuple(self.rates)

    def sampler(self, seed: int = 0):
        """A deterministic stream of (request class, prompt, seed): runs compare like for like."""
        rng = random.Random(seed)
        weights = [c.weight for c in self.mix]
        n = 0
        while True:
            cls = rng.choices(self.mix, weights)[0]
            yield cls, self.prompts[n % len(self.prompts)], 1000 + n
            n += 1


def load_workload(path: str | Path) -> Workload:
    doc = yaml.safe_load(Path(path).read_text())
    try:
        mix = tuple(RequestClass(**m) for m in doc["mix"])
        mode = doc.get("mode", "closed")
        if mode not in ("closed", "open"):
            raise ValueError(f"mode {mode!r} is not closed or open")
        wl = Workload(name=doc.get("name", Path(path).stem), mix=mix, mode=mode,
                      clients=tuple(doc.get("clients", (1, 4, 16))), rates=tuple(doc.get("rates", ())),
                      max_videos=int(doc.get("max_videos", 32)), max_seconds=float(doc.get("max_seconds", 300)),
                      slo_latency_seconds=float((doc.get("slo") or {}).get("latency_seconds", 60)))
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"{path}: not a workload ({e}); see loadtests/workload.py for the format") from None
    if not wl.mix or not wl.levels:
        raise ValueError(f"{path}: needs a non-empty mix and clients (closed) or rates (open)")
    return wl
