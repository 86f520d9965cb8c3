"""Drive a running server with a workload, closed or open loop, and record every job.

A `Target` knows how to run one request end to end (Kino over gRPC, or the naive baseline over
HTTP); the harness decides when requests start and stops itself after `max_videos` or
`max_seconds`. Nothing here talks to anything but the addresses it is given (loopback).
"""

from __future__ import annotations

import random
import statistics
import tempfile
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path

from loadtests.workload import RequestClass, Workload


@dataclass
class JobRecord:
    cls: str
    video_seconds: float
    priority: int
    submitted: float  # client clock (time.time), like the server's event timestamps
    accepted: float | None = None
    started: float | None = None
    first_step: float | None = None
    decoding: float | None = None
    done: float | None = None
    status: str = "pending"
    error: str = ""
    batch_sizes: list[int] = field(default_factory=list)

    @property
    def latency(self) -> float | None:
        return None if self.done is None else self.done - self.submitted

    def stage(self, name: str) -> float | None:
        a, b = {"queue": (self.accepted, self.started), "encode": (self.started, self.first_step),
                "denoise": (self.first_step, self.decoding), "decode": (self.decoding, self.done)}[name]
        return None if a is None or b is None else max(0.0, b - a)


class Target(ABC):
    name: str

    @abstractmethod
    def run_one(self, cls: RequestClass, prompt: str, seed: int, record: JobRecord) -> None:
        """Run one request to its end, filling `record` (never raises for a failed request)."""

    def close(self) -> None:  # noqa: B027 - most targets hold nothing to release
        """Release the target's connections."""


class KinoTarget(Target):
    """Kino over gRPC: create, watch (stage timestamps, batch sizes), download."""

    def __init__(self, address: str, api_key: str | None = None, name: str = "kino") -> None:
        from kino.client import KinoClient

        self.name = name
        self.client = KinoClient(address, api_key=api_key, timeout=600)
        self.tmp = Path(tempfile.mkdtemp(prefix="kino-loadtest-"))

    def run_one(self, cls: RequestClass, prompt: str, seed: int, record: JobRecord) -> None:
        from kino.client import ClientError
        from kino_api.v1 import video_service_pb2 as pb

        req = pb.CreateVideoRequest(prompt=prompt, size=cls.size, seconds=cls.seconds, seed=seed,
                                    priority=cls.priority)
        if cls.steps:
            req.steps = cls.steps
        if cls.cache:
            req.cache = pb.StepCache.Value(f"STEP_CACHE_{cls.cache.upper()}")
        try:
            video = self.client.create(req)
            record.accepted = time.time()
            for ev in self.client.watch(video.id, timeout=3600):
                at = ev.at.ToNanoseconds() / 1e9 if ev.at.seconds else time.time()
                if ev.status == pb.VIDEO_STATUS_IN_PROGRESS and record.started is None:
                    record.started = at
                if ev.stage == pb.STAGE_DENOISING and ev.message != "snapshot":
                    record.first_step = record.first_step or at
                    record.batch_sizes.append(ev.batch_size)
                if ev.stage == pb.STAGE_DECODING and record.decoding is None:
                    record.decoding = at
                if ev.terminal:
                    break
            final = self.client.get(video.id)
            if final.status != pb.VIDEO_STATUS_COMPLETED:
                record.status, record.error = "failed", final.error.code or "failed"
                record.done = time.time()
                return
            path = self.tmp / f"{video.id}.mp4"
            self.client.download(video.id, path)
            path.unlink(missing_ok=True)
            record.done, record.status = time.time(), "completed"
        except ClientError as e:
            record.done, record.status, record.error = time.time(), "failed", e.code.name

    def close(self) -> None:
        self.client.close()


@dataclass
class RunResult:
    target: str
    level: float  # clients (closed) or arrivals per second (open)
    mode: str
    wall_seconds: float
    records: list[JobRecord]
    samples: list[tuple[float, int, int]]  # (t, outstanding, waiting to start)

    @property
    def completed(self) -> list[JobRecord]:
        return [r for r in self.records if r.status == "completed"]

    def summary(self, slo_seconds: float) -> dict:
        done = self.completed
        lat = sorted(r.latency for r in done)
        out = {
            "target": self.target, "mode": self.mode, "level": self.level, "submitted": len(self.records),
            "completed": len(done), "wall_seconds": self.wall_seconds,
            "videos_per_min": 60 * len(done) / self.wall_seconds if self.wall_seconds else 0.0,
            "video_seconds_per_min": 60 * sum(r.video_seconds for r in done) / self.wall_seconds
            if self.wall_seconds else 0.0,
            "latency": _percentiles(lat),
            "stages": {s: _percentiles(sorted(x for r in done if (x := r.stage(s)) is not None))
                       for s in ("queue", "encode", "denoise", "decode")},
            "batch_size": {"mean": statistics.fmean(b) if (b := [x for r in done for x in r.batch_sizes]) else 0.0,
                           "max": max(b) if b else 0},
            "errors": _count(r.error for r in self.records if r.status == "failed"),
            "slo_attainment": (sum(1 for r in done if r.latency <= slo_seconds) / len(self.records)
                               if self.records else 0.0),
        }
        return out


def _percentiles(values: list[float]) -> dict[str, float]:
    if not values:
        return {"p50": 0.0, "p95": 0.0, "p99": 0.0, "mean": 0.0}

    def pick(q: float) -> float:
        return values[min(len(values) - 1, int(q * len(values)))]
    return {"p50": pick(0.5), "p95": pick(0.95), "p99": pick(0.99), "mean": statistics.fmean(values)}


def _count(items) -> dict[str, int]:
    out: dict[str, int] = {}
    for i in items:
        out[i] = out.get(i, 0) + 1
    return out


def run(target: Target, workload: Workload, level: float, *, seed: int = 0,
        on_done: Callable[[JobRecord], None] | None = None) -> RunResult:
    """One run at one level (clients or rate), bounded by the workload's count and time."""
    sampler = workload.sampler(seed)
    lock = threading.Lock()
    records: list[JobRecord] = []
    deadline = time.monotonic() + workload.max_seconds
    stop = threading.Event()

    def next_job() -> tuple[RequestClass, str, int, JobRecord] | None:
        with lock:
            if len(records) >= workload.max_videos or time.monotonic() > deadline:
                return None
            cls, prompt, s = next(sampler)
            rec = JobRecord(cls=cls.label, video_seconds=cls.seconds, priority=cls.priority, submitted=time.time())
            records.append(rec)
            return cls, prompt, s, rec

    def execute(job) -> None:
        cls, prompt, s, rec = job
        target.run_one(cls, prompt, s, rec)
        if on_done is not None:
            on_done(rec)

    samples: list[tuple[float, int, int]] = []

    def sample() -> None:
        t0 = time.time()
        while not stop.wait(0.5):
            with lock:
                outstanding = sum(1 for r in records if r.done is None)
                waiting = sum(1 for r in records if r.done is None and r.started is None)
            samples.append((time.time() - t0, outstanding, waiting))

    sampler_thread = threading.Thread(target=sample, daemon=True)
    sampler_thread.start()
    t0 = time.monotonic()
    if workload.mode == "closed":
        def client_loop() -> None:
            while (job := next_job()) is not None:
                execute(job)
        threads = [threading.Thread(target=client_loop) for _ in range(int(level))]
        for th in threads:
            th.start()
        for th in threads:
            th.join()
    else:
        rng = random.Random(seed)
        with ThreadPoolExecutor(max_workers=256) as pool:
            while (job := next_job()) is not None:
                pool.submit(execute, job)
                time.sleep(rng.expovariate(level))
    wall = time.monotonic() - t0
    stop.set()
    sampler_thread.join()
    return RunResult(target=target.name, level=level, mode=workload.mode, wall_seconds=wall, records=records,
                     samples=samples)


def as_json(result: RunResult, slo_seconds: float) -> dict:
    return {"summary": result.summary(slo_seconds), "records": [asdict(r) for r in result.records],
            "samples": result.samples}
