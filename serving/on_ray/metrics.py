"""`Metrics` on Ray Serve's metrics API: exported by Ray on each node's metrics port, with the
deployment, replica and application as labels so a multi-replica cluster aggregates them."""

from __future__ import annotations

from ray.serve import metrics as m

from serving.metrics import BATCH_BUCKETS, LATENCY_BUCKETS, STEP_BUCKETS, Metrics


class RayMetrics(Metrics):
    def __init__(self) -> None:
        self._created = m.Counter("kino_jobs_created_total", "Jobs accepted, by tenant", tag_keys=("tenant",))
        self._finished = m.Counter("kino_jobs_finished_total", "Jobs that reached a terminal state",
                                   tag_keys=("tenant", "status"))
        self._e2e = m.Histogram("kino_job_seconds", "Creation to terminal state", boundaries=list(LATENCY_BUCKETS),
                                tag_keys=("status",))
        self._wait = m.Histogram("kino_queue_wait_seconds", "Time a job waited in the queue",
                                 boundaries=list(LATENCY_BUCKETS))
        self._stage = m.Histogram("kino_stage_seconds", "Time in a stage (encode, denoise, decode)",
                                  boundaries=list(LATENCY_BUCKETS), tag_keys=("stage",))
        self._queued = m.Gauge("kino_queue_depth", "Jobs waiting to start")
        self._running = m.Gauge("kino_jobs_in_progress", "Jobs inside the stages")
        self._step = m.Histogram("kino_denoise_step_seconds", "One batched transformer step",
                                 boundaries=list(STEP_BUCKETS))
        self._batch = m.Histogram("kino_denoise_batch_size", "Requests in one denoising step",
                                  boundaries=list(BATCH_BUCKETS))
        self._tokens = m.Counter("kino_denoise_tokens_total", "Latent tokens (video + audio) processed by steps")
        # Exact, unlike a histogram's _sum (Ray derives that one from bucket boundaries).
        self._request_steps = m.Counter("kino_denoise_request_steps_total", "Requests advanced by one step, summed")
        self._cache = m.Counter("kino_denoise_cached_request_steps_total", "Request-steps by whether they ran every "
                                "DiT block (computed) or reused the request's step cache (skipped)",
                                tag_keys=("result",))
        self._cap = m.Gauge("kino_denoise_batch_cap", "Measured batch cap of a shape bucket", tag_keys=("bucket",))
        self._measured = m.Gauge("kino_denoise_measured_step_seconds", "One step of a bucket at a batch size, "
                                 "measured when the bucket appeared", tag_keys=("bucket", "batch_size"))
        self._artifact = m.Counter("kino_artifact_bytes_total", "Bytes of MP4 written to the artifact store")
        self._checkpoint = m.Histogram("kino_checkpoint_seconds", "A denoise checkpoint taken and written",
                                       boundaries=list(STEP_BUCKETS))
        self._checkpoint_bytes = m.Counter("kino_checkpoint_bytes_total", "Bytes of denoise checkpoints written")
        self._lora_held = m.Gauge("kino_lora_adapters_loaded", "LoRA adapters a Denoiser replica holds in memory")
        self._lora_loads = m.Counter("kino_lora_loads_total", "LoRA adapters loaded from their files")
        self._lora_evictions = m.Counter("kino_lora_evictions_total", "LoRA adapters dropped, least recently used "
                                         "first, to stay within model.lora.max_loaded")
        self._lora_load = m.Histogram("kino_lora_load_seconds", "One LoRA adapter read and checked",
                                      boundaries=list(STEP_BUCKETS))
        self._api = m.Counter("kino_api_requests_total", "API calls by protocol, method and result code",
                              tag_keys=("protocol", "method", "code"))

    def job_created(self, tenant: str) -> None:
        self._created.inc(1, tags={"tenant": tenant})

    def job_finished(self, tenant: str, status: str, seconds: float) -> None:
        self._finished.inc(1, tags={"tenant": tenant, "status": status})
        self._e2e.observe(seconds, tags={"status": status})

    def queue_wait(self, seconds: float) -> None:
        self._wait.observe(seconds)

    def stage_seconds(self, stage: str, seconds: float) -> None:
        self._stage.observe(seconds, tags={"stage": stage})

    def job_counts(self, queued: int, in_progress: int) -> None:
        self._queued.set(queued)
        self._running.set(in_progress)

    def denoise_step(self, seconds: float, batch_size: int, tokens: int) -> None:
        self._step.observe(seconds)
        self._batch.observe(batch_size)
        self._request_steps.inc(batch_size)
        self._tokens.inc(tokens)

    def step_cache(self, computed: int, skipped: int) -> None:
        if computed:
            self._cache.inc(computed, tags={"result": "computed"})
        if skipped:
            self._cache.inc(skipped, tags={"result": "skipped"})

    def batch_measured(self, bucket: str, step_seconds: dict[int, float], cap: int) -> None:
        self._cap.set(cap, tags={"bucket": bucket})
        for size, seconds in step_seconds.items():
            self._measured.set(seconds, tags={"bucket": bucket, "batch_size": str(size)})

    def artifact_written(self, size_bytes: int) -> None:
        self._artifact.inc(size_bytes)

    def checkpoint_written(self, size_bytes: int, seconds: float) -> None:
        self._checkpoint.observe(seconds)
        self._checkpoint_bytes.inc(size_bytes)

    def api_call(self, protocol: str, method: str, code: str) -> None:
        self._api.inc(1, tags={"protocol": protocol, "method": method, "code": code})

    def lora_loaded(self, held: int, seconds: float) -> None:
        self._lora_held.set(held)
        self._lora_loads.inc(1)
        self._lora_load.observe(seconds)

    def lora_evicted(self) -> None:
        self._lora_evictions.inc(1)
