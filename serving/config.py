"""The server's configuration: one typed schema (engines/schema.py) from one mapping plus environment.

The mapping is the ``args.config`` of the Kino application in the Serve config file
(``deploy/serve/kino.yaml``), the same file the Helm chart embeds as serveConfigV2. Any key
can be overridden from the environment as ``KINO_<SECTION>__<KEY>`` (e.g.
``KINO_GRPC__PORT=6000``, ``KINO_STORAGE__DATABASE_URL=postgresql://...``); values are parsed
as YAML scalars. Errors name the key. The ``model`` section is a preset and overrides
(`engines.config.from_mapping`).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import field
from typing import Annotated, Any, Literal

from pydantic import BeforeValidator, Field

from engines.config import ModelConfig, from_mapping
from engines.errors import ConfigError
from engines.schema import env_overrides, load, merge, require, section
from engines.watermark import WatermarkConfig
from serving.data_plane.scheduler import Policy

Port = Annotated[int, Field(ge=0, le=65535)]
AtLeastOne = Annotated[int, Field(ge=1)]
SigningAlgorithm = Literal["es256", "ed25519"]
# A KINO_* value is read as a YAML scalar: a key of digits arrives as a number, and is text again here.
SecretText = Annotated[str, BeforeValidator(lambda v: str(v) if isinstance(v, int | float) and
                                            not isinstance(v, bool) else v)]


@section("grpc")
class GrpcConfig:
    """The gRPC front door."""

    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port = 50051
    """Port to listen on (0: a free one)."""
    max_message_bytes: AtLeastOne = 16 * 2**20
    """Largest message either way (an uploaded first frame or cameo recording must fit)."""
    max_concurrent_streams: AtLeastOne = 1000
    """HTTP/2 streams one connection may hold open at once (gRPC's grpc.max_concurrent_streams)."""


ModelProfile = Literal["standard", "pro"]
# OpenAI's Sora model names (and their dated snapshots), as its SDK and examples send them.
OPENAI_MODEL_ALIASES: dict[str, ModelProfile] = {
    "sora-2": "standard", "sora-2-2025-10-06": "standard", "sora-2-2025-12-08": "standard",
    "sora-2-pro": "pro", "sora-2-pro-2025-10-06": "pro"}


@section("rest.defaults")
class RestDefaults:
    """What a REST create that omits size or seconds gets (OpenAI's defaults); gRPC keeps the model's own."""

    size: str = "720x1280"
    """WIDTHxHEIGHT; empty: the model's default size."""
    seconds: Annotated[float, Field(ge=0)] = 4.0
    """Seconds; 0: the model's default duration."""


@section("rest.fetch")
class RestFetchConfig:
    """Fetching an `input_reference.image_url` given as an http(s) URL."""

    enabled: bool = True
    """Fetch http(s) URLs at all (data: URLs are always read)."""
    max_bytes: AtLeastOne = 10 * 2**20
    """Largest image fetched."""
    timeout_seconds: Annotated[float, Field(gt=0, le=60)] = 10.0
    """Whole fetch, connect to last byte."""
    allow_hosts: tuple[str, ...] = ()
    """Hosts (names or IP addresses) fetched even when they resolve to a loopback, private, link-local or
    otherwise non-public address (SSRF protection refuses those by default), e.g. an in-cluster image store."""


@section("rest")
class RestConfig:
    """The OpenAI-compatible Videos REST API, beside gRPC on the Frontend."""

    enabled: bool = True
    """Serve it."""
    host: str = "127.0.0.1"
    """Address to listen on."""
    port: Port = 8080
    """Port to listen on (0: a free one)."""
    model_aliases: dict[str, ModelProfile] = field(default_factory=lambda: dict(OPENAI_MODEL_ALIASES))
    """Other names of the served model, each with a profile: standard (the model's defaults) or pro (two
    stages where the model has a latent upsampler and the size allows, else twice the default steps). The
    model's own id is always served; a name in neither answers model_not_found. REST only: gRPC serves the
    model's id alone."""
    defaults: RestDefaults = field(default_factory=RestDefaults)
    """REST's defaults for an omitted size and seconds."""
    fetch: RestFetchConfig = field(default_factory=RestFetchConfig)
    """Fetching reference images by URL."""


@section("queue")
class QueueConfig:
    """Admission and the dispatcher."""

    max_queued: AtLeastOne = 256
    """Beyond it CreateVideo answers RESOURCE_EXHAUSTED."""
    max_in_flight: AtLeastOne = 1024
    """The most jobs inside the stages at once, in the whole cluster. Within it the window all
    dispatchers share follows the stages' capacity: running Denoiser replicas x batching.max_running
    (the rest wait in the queue, in priority order, where the autoscaler sees them)."""
    max_attempts: AtLeastOne = 3
    """A job is claimed at most this many times (a dispatcher lost with it uses one), and a stage replica
    that died under it is retried up to this many times within a claim."""
    poll_seconds: Annotated[float, Field(gt=0)] = 5.0
    """The fallback: a dispatcher looks for new work at least this often. Work is found by events (a create
    wakes a dispatcher, a finished or reaped job wakes its own), and a look at an idle queue is one read. What
    only the poll finds: a job queued by another cluster's front door (an upgrade), a wake that was lost, a
    window grown by a new Denoiser replica."""
    lease_seconds: Annotated[float, Field(ge=1.0)] = 10.0
    """How long a dispatcher's hold on a job lasts without renewal; a job whose dispatcher died is
    requeued this long after its last heartbeat."""
    heartbeat_seconds: Annotated[float, Field(gt=0)] = 2.5
    """How often a dispatcher renews its leases and requeues expired ones (well under lease_seconds)."""

    def __post_init__(self) -> None:
        require(self.heartbeat_seconds * 2 < self.lease_seconds, "heartbeat_seconds",
                "must be under half of lease_seconds (a late heartbeat must not lose the lease)")


@section("checkpoints")
class CheckpointConfig:
    """Resumable denoising: a job's denoise state kept in the artifact store, so a retried attempt (a lost
    replica or node, an expired lease, a drain) starts from it instead of step 0 (engines/denoise_checkpoint.py)."""

    enabled: bool = True
    """Checkpoint jobs' denoising; false: a retried job starts over."""
    every_seconds: Annotated[float, Field(ge=0)] = 30.0
    """A request's state is written at most this often (of its denoising time), and always when its denoising
    ends (so a lost Decoder costs no denoising, and a two-stage job keeps its first stage). A write of a 1080p,
    20 s video's latents (~70 MB) takes well under a second beside minutes of steps; 0: every step."""


@section("batching")
class BatchingConfig:
    """Step-level batching in each Denoiser replica. max_batch_size 1 turns batching off."""

    max_batch_size: AtLeastOne = 8
    """Requests per transformer forward."""
    max_running: AtLeastOne = 32
    """Requests holding state in one replica (others wait to be admitted)."""
    policy: Policy = "priority"
    """priority: higher priority first, preempting between steps; fifo: arrival order only."""
    rotate_buckets: bool = False
    """Let latent shapes take turns instead of following the oldest request."""
    max_tokens: AtLeastOne = 262144
    """Latent tokens one forward may hold: rows (2 with guidance) x (video + audio tokens). It bounds a
    batch's memory, and a request that alone needs more is refused at create. The default admits the
    longest 1080p request with guidance (about 250,000); on a GPU the Denoiser lowers it to what its
    memory profile at start allows (see gpu_memory_utilization)."""
    gpu_memory_utilization: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Share of a GPU's memory a Denoiser replica plans to use (its weights, then the largest forward
    measured at start), as vLLM sizes its KV cache; unused on a CPU."""
    measure_batches: bool = True
    """When a shape bucket first appears, time a step of it at growing batch sizes and cap its batches
    where requests x steps per second stop rising (so batching never costs throughput)."""
    measure_seconds: Annotated[float, Field(gt=0)] = 3.0
    """How long measuring one bucket may take (its first requests wait that long)."""
    min_gain: Annotated[float, Field(ge=0, le=1)] = 0.1
    """A wider batch is kept only when it raises requests x steps per second by at least this share."""

    def __post_init__(self) -> None:
        require(self.max_running >= self.max_batch_size, "max_running", "must be >= max_batch_size")


@section("autoscaling")
class AutoscalingConfig:
    """How the Denoiser pool follows the backlog (its min and max replicas are in the Serve config)."""

    drain_seconds: Annotated[float, Field(gt=0)] = 30.0
    """Run enough Denoiser replicas that the jobs queued and running, at the step time they measure,
    would all be done within this."""


@section("storage.s3")
class S3StorageConfig:
    """Artifacts in an object store over the S3 API (AWS S3, MinIO, SeaweedFS, Ceph RGW, R2, ...) instead of a
    directory. Keep the keys out of the config file: set them as KINO_STORAGE__S3__ACCESS_KEY_ID and
    KINO_STORAGE__S3__SECRET_ACCESS_KEY (the Helm chart takes them from a Secret); left empty, the usual
    AWS_* variables and instance or pod credentials are used."""

    bucket: str = ""
    """The bucket; empty: artifacts are files under storage.artifacts_dir."""
    endpoint: str = ""
    """The S3 endpoint URL, e.g. http://minio:9000; empty: AWS S3 of `region`."""
    region: str = "us-east-1"
    """The bucket's region (S3-compatible servers mostly accept any)."""
    prefix: str = ""
    """Keys go under this prefix in the bucket (e.g. kino/prod), none when empty."""
    access_key_id: SecretText = field(default="", repr=False)
    """The access key id (from the environment, see above)."""
    secret_access_key: SecretText = field(default="", repr=False)
    """The secret access key (from the environment, see above)."""
    allow_http: bool = False
    """Allow a plain http:// endpoint (a server inside the cluster); otherwise only https."""

    def __post_init__(self) -> None:
        require(bool(self.access_key_id) == bool(self.secret_access_key), "secret_access_key",
                "access_key_id and secret_access_key go together")
        require(not self.endpoint or self.endpoint.startswith(("http://", "https://")), "endpoint",
                "must be an http:// or https:// URL")
        require(self.allow_http or not self.endpoint.startswith("http://"), "allow_http",
                "must be true for a plain http:// endpoint")
        require(not self.prefix or all(part not in ("", ".", "..") for part in self.prefix.strip("/").split("/")),
                "prefix", "must be a path without empty, . or .. parts")


@section("storage")
class StorageConfig:
    """Where jobs and videos are kept."""

    database_url: str = "sqlite:///var/kino/jobs.db"
    """The job database: sqlite:///path (one machine) or postgresql+psycopg://... (a cluster)."""
    artifacts_dir: str = "var/kino/artifacts"
    """The artifact directory (a shared volume on Kubernetes); unused when s3.bucket is set."""
    s3: S3StorageConfig = field(default_factory=S3StorageConfig)
    """An S3 bucket for artifacts instead of artifacts_dir."""
    download_chunk_bytes: AtLeastOne = 2**20
    """Downloads stream in chunks of this size, whatever the protocol."""
    events_retention_days: Annotated[float, Field(gt=0)] = 30.0
    """A finished job's progress events (job_events) are deleted this long after it ended; the job's own
    record, its final state, stays. Dispatchers prune once an hour, a bounded batch at a time."""


@section("auth")
class AuthConfig:
    """API keys. Not required on a local machine: calls without a key run as `local_tenant`."""

    required: bool = False
    """Refuse calls without a known key. When false, calls with no key, or with a key this server
    does not know, run as the local tenant (a known key still selects its tenant)."""
    local_tenant: str = "local"
    """The tenant of calls without a known key when keys are not required."""
    local_priority: Annotated[int, Field(ge=0, le=9)] = 5
    """That tenant's priority."""
    bootstrap_keys_file: str = ""
    """Lines "tenant:user:kino_sk_..." registered at start (a mounted Secret)."""
    key_cache_seconds: Annotated[float, Field(ge=0, le=300)] = 10.0
    """A front door remembers a known API key this long instead of reading the database on every call: a
    revoked key stops working within it. 0: read on every call."""


@section("moderation")
class ModerationConfig:
    """Prompt moderation."""

    rules_file: str = ""
    """The rules; empty: deploy/moderation/rules.yaml shipped with Kino."""


@section("provenance")
class ProvenanceConfig:
    """C2PA signing (a chain from configuration, or a local development chain) and the visible mark."""

    cert_chain: str = ""
    """PEM path of the signing chain; empty: a development chain is created in dev_chain_dir."""
    private_key: str = ""
    """PEM path of its key."""
    algorithm: SigningAlgorithm = "es256"
    """The signature algorithm."""
    dev_chain_dir: str = "var/kino/credentials"
    """Where the development chain lives."""
    watermark: WatermarkConfig = field(default_factory=WatermarkConfig)
    """The visible mark."""

    def __post_init__(self) -> None:
        require(bool(self.cert_chain) == bool(self.private_key), "private_key",
                "cert_chain and private_key go together")


@section("cameos")
class CameoConfig:
    """Cameos and remix."""

    max_recording_bytes: AtLeastOne = 12 * 2**20
    """Largest cameo recording."""
    default_remix_strength: Annotated[float, Field(ge=0.1, le=1.0)] = 0.6
    """How much of a remix source is re-noised when a request does not say."""


@section("")
class KinoConfig:
    """Everything a Kino server reads at start."""

    model: ModelConfig = field(default_factory=lambda: from_mapping({"preset": "tiny"}))
    """The model (a preset and overrides)."""
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    """The gRPC front door."""
    rest: RestConfig = field(default_factory=RestConfig)
    """The REST API."""
    queue: QueueConfig = field(default_factory=QueueConfig)
    """Admission and the dispatcher."""
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    """Step-level batching."""
    checkpoints: CheckpointConfig = field(default_factory=CheckpointConfig)
    """Resumable denoising."""
    autoscaling: AutoscalingConfig = field(default_factory=AutoscalingConfig)
    """Scaling the Denoiser pool on the backlog."""
    storage: StorageConfig = field(default_factory=StorageConfig)
    """Jobs and videos."""
    auth: AuthConfig = field(default_factory=AuthConfig)
    """API keys."""
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    """Prompt moderation."""
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    """Content credentials and the watermark."""
    cameos: CameoConfig = field(default_factory=CameoConfig)
    """Cameos and remix."""

    def __post_init__(self) -> None:
        require(self.storage.download_chunk_bytes < self.grpc.max_message_bytes, "storage.download_chunk_bytes",
                "must be below grpc.max_message_bytes (a chunk is one message)")


def load_config(data: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> KinoConfig:
    """A validated config from a mapping, with environment overrides applied on top."""
    merged = merge(dict(data or {}), env_overrides(environ))
    model = merged.pop("model", None) or {"preset": "tiny"}
    if not isinstance(model, Mapping):
        raise ConfigError("model", "must be a mapping")
    return load(KinoConfig, {**merged, "model": from_mapping(model)})
