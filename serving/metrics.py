"""What Kino measures, in one place. Sinks implement `Metrics`: Ray's metrics API inside Serve
replicas (exported on the node's Prometheus port), or nothing where no exporter runs.

Every metric is exported with Ray's `ray_` prefix, e.g. `ray_kino_denoise_step_seconds`.
"""

from __future__ import annotations

from abc import ABC, abstractmethod

# Buckets, in seconds or counts, sized for CPU tiny runs up to GPU real-checkpoint runs.
LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600)
STEP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64)


class Metrics(ABC):
    @abstractmethod
    def job_created(self, tenant: str) -> None: ...

    @abstractmethod
    def job_finished(self, tenant: str, status: str, seconds: float) -> None:
        """A job reached completed | failed | cancelled after `seconds` from creation."""

    @abstractmethod
    def queue_wait(self, seconds: float) -> None: ...

    @abstractmethod
    def stage_seconds(self, stage: str, seconds: float) -> None: ...

    @abstractmethod
    def job_counts(self, queued: int, in_progress: int) -> None: ...

    @abstractmethod
    def denoise_step(self, seconds: float, batch_size: int, tokens: int) -> None: ...

    @abstractmethod
    def step_cache(self, computed: int, skipped: int) -> None:
        """Request-steps of one forward that ran every DiT block, and that reused their step cache."""

    @abstractmethod
    def batch_measured(self, bucket: str, step_seconds: dict[int, float], cap: int) -> None:
        """A Denoiser replica timed a step of `bucket` at these batch sizes and capped it at `cap`."""

    @abstractmethod
    def artifact_written(self, size_bytes: int) -> None: ...

    @abstractmethod
    def checkpoint_written(self, size_bytes: int, seconds: float) -> None:
        """A request's denoise checkpoint of `size_bytes` was taken and written in `seconds`."""

    @abstractmethod
    def api_call(self, protocol: str, method: str, code: str) -> None: ...

    @abstractmethod
    def lora_loaded(self, held: int, seconds: float) -> None:
        """A Denoiser replica loaded a LoRA adapter in `seconds`; it holds `held` now."""

    @abstractmethod
    def lora_evicted(self) -> None:
        """A Denoiser replica dropped its least recently used adapter (to load another: `lora_loaded` follows)."""


class NoMetrics(Metrics):
    """For in-process use, where nothing scrapes."""

    def job_created(self, tenant: str) -> None: pass
    def job_finished(self, tenant: str, status: str, seconds: float) -> None: pass
    def queue_wait(self, seconds: float) -> None: pass
    def stage_seconds(self, stage: str, seconds: float) -> None: pass
    def job_counts(self, queued: int, in_progress: int) -> None: pass
    def denoise_step(self, seconds: float, batch_size: int, tokens: int) -> None: pass
    def step_cache(self, computed: int, skipped: int) -> None: pass
    def batch_measured(self, bucket: str, step_seconds: dict[int, float], cap: int) -> None: pass
    def artifact_written(self, size_bytes: int) -> None: pass
    def checkpoint_written(self, size_bytes: int, seconds: float) -> None: pass
    def api_call(self, protocol: str, method: str, code: str) -> None: pass
    def lora_loaded(self, held: int, seconds: float) -> None: pass
    def lora_evicted(self) -> None: pass
