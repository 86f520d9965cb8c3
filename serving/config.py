"""The server's configuration: typed, frozen, validated; loaded from one mapping plus environment.

The mapping is the ``args.config`` of the Kino application in the Serve config file
(``deploy/serve/kino.yaml``), the same file the Helm chart embeds as serveConfigV2. Any key
can be overridden from the environment as ``KINO_<SECTION>__<KEY>`` (e.g.
``KINO_GRPC__PORT=6000``, ``KINO_STORAGE__DATABASE_URL=postgresql://...``); values are parsed
as YAML scalars. Errors name the key.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from engines.config import ModelConfig, from_mapping
from engines.errors import ConfigError

ENV_PREFIX = "KINO_"


@dataclass(frozen=True)
class GrpcConfig:
    host: str = "127.0.0.1"
    port: int = 50051
    max_message_bytes: int = 16 * 2**20
    download_chunk_bytes: int = 2**20
    max_workers_streams: int = 1000  # concurrent streams per server

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("grpc.port", f"{self.port} is not in [0, 65535]")
        if not 0 < self.download_chunk_bytes < self.max_message_bytes:
            raise ConfigError("grpc.download_chunk_bytes", "must be in (0, max_message_bytes)")


@dataclass(frozen=True)
class RestConfig:
    """The OpenAI-compatible Videos REST API, beside gRPC on the Frontend."""

    enabled: bool = True
    host: str = "127.0.0.1"
    port: int = 8080

    def validate(self) -> None:
        if not 0 <= self.port <= 65535:
            raise ConfigError("rest.port", f"{self.port} is not in [0, 65535]")


@dataclass(frozen=True)
class QueueConfig:
    max_queued: int = 256  # beyond it CreateVideo answers RESOURCE_EXHAUSTED
    max_in_flight: int = 32  # jobs inside the stages at once (the dispatcher's window)
    max_attempts: int = 3  # a job whose stage replica died is retried up to this many times
    default_priority: int = 5
    poll_seconds: float = 0.2  # the dispatcher looks for new work at least this often
    reconcile_seconds: float = 10.0  # how often it checks that every job it owns has a live task

    def validate(self) -> None:
        for name in ("max_queued", "max_in_flight", "max_attempts"):
            if getattr(self, name) < 1:
                raise ConfigError(f"queue.{name}", "must be >= 1")
        if not 0 <= self.default_priority <= 9:
            raise ConfigError("queue.default_priority", "must be in [0, 9]")


@dataclass(frozen=True)
class BatchingConfig:
    """Step-level batching in each Denoiser replica. max_batch_size 1 turns batching off."""

    max_batch_size: int = 8  # requests per transformer forward
    max_running: int = 32  # requests holding state in one replica (others wait to be admitted)
    policy: str = "priority"  # priority: higher priority first, preempting between steps; fifo: arrival only
    rotate_buckets: bool = False  # let latent shapes take turns instead of following the oldest request

    def validate(self) -> None:
        if self.policy not in ("priority", "fifo"):
            raise ConfigError("batching.policy", f"{self.policy!r} is not priority or fifo")
        if self.max_batch_size < 1:
            raise ConfigError("batching.max_batch_size", "must be >= 1")
        if self.max_running < self.max_batch_size:
            raise ConfigError("batching.max_running", "must be >= max_batch_size")


@dataclass(frozen=True)
class StorageConfig:
    database_url: str = "sqlite:///var/kino/jobs.db"
    artifacts_dir: str = "var/kino/artifacts"


@dataclass(frozen=True)
class AuthConfig:
    """API keys. Not required on a local machine: calls without a key run as `local_tenant`."""

    required: bool = False
    local_tenant: str = "local"
    local_priority: int = 5
    bootstrap_keys_file: str = ""  # lines "tenant:user:kino_sk_..." registered at start (a mounted Secret)


@dataclass(frozen=True)
class ModerationConfig:
    rules_file: str = ""  # empty: deploy/moderation/rules.yaml shipped with Kino


@dataclass(frozen=True)
class ProvenanceConfig:
    """C2PA signing (a chain from configuration, or a local development chain) and the visible mark."""

    cert_chain: str = ""  # PEM path; empty: a development chain is created in dev_chain_dir
    private_key: str = ""
    algorithm: str = "es256"
    dev_chain_dir: str = "var/kino/credentials"
    watermark: bool = True
    watermark_position: str = "bottom-right"
    watermark_size: float = 0.1
    watermark_opacity: float = 0.9

    def validate(self) -> None:
        if bool(self.cert_chain) != bool(self.private_key):
            raise ConfigError("provenance.private_key", "cert_chain and private_key go together")
        if self.algorithm not in ("es256", "ed25519"):
            raise ConfigError("provenance.algorithm", f"{self.algorithm!r} is not es256 or ed25519")
        try:
            self.watermark_config().validate()
        except ValueError as e:
            raise ConfigError("provenance.watermark", str(e)) from None

    def watermark_config(self):
        from engines.watermark import WatermarkConfig

        return WatermarkConfig(enabled=self.watermark, position=self.watermark_position, size=self.watermark_size,
                               opacity=self.watermark_opacity)


@dataclass(frozen=True)
class CameoConfig:
    max_recording_bytes: int = 12 * 2**20
    default_remix_strength: float = 0.6


@dataclass(frozen=True)
class KinoConfig:
    model: ModelConfig = field(default_factory=lambda: from_mapping({"preset": "tiny"}))
    grpc: GrpcConfig = field(default_factory=GrpcConfig)
    rest: RestConfig = field(default_factory=RestConfig)
    queue: QueueConfig = field(default_factory=QueueConfig)
    batching: BatchingConfig = field(default_factory=BatchingConfig)
    storage: StorageConfig = field(default_factory=StorageConfig)
    auth: AuthConfig = field(default_factory=AuthConfig)
    moderation: ModerationConfig = field(default_factory=ModerationConfig)
    provenance: ProvenanceConfig = field(default_factory=ProvenanceConfig)
    cameos: CameoConfig = field(default_factory=CameoConfig)

    def __post_init__(self) -> None:
        self.grpc.validate()
        self.rest.validate()
        self.queue.validate()
        self.batching.validate()
        self.provenance.validate()

    def to_mapping(self) -> dict[str, Any]:
        """The plain mapping `load_config` reads back (model as its preset mapping)."""
        out: dict[str, Any] = {name: dataclasses.asdict(getattr(self, name)) for name in _SECTIONS}
        m = self.model
        out["model"] = {"preset": m.name, "dtype": m.dtype, "device": m.device, "dit_backend": m.dit_backend,
                        "num_threads": m.num_threads}
        if m.checkpoint_dir is not None:
            out["model"]["checkpoint_dir"] = str(m.checkpoint_dir)
        return out


_SECTIONS = {"grpc": GrpcConfig, "rest": RestConfig, "queue": QueueConfig, "batching": BatchingConfig,
             "storage": StorageConfig,
             "auth": AuthConfig, "moderation": ModerationConfig, "provenance": ProvenanceConfig,
             "cameos": CameoConfig}


def _section(name: str, cls: type, data: Any) -> Any:
    if data is None:
        return cls()
    if not isinstance(data, Mapping):
        raise ConfigError(name, "must be a mapping")
    known = {f.name: f for f in dataclasses.fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in known:
            raise ConfigError(f"{name}.{key}", f"unknown key (known: {', '.join(sorted(known))})")
        default = known[key].default
        if default is not dataclasses.MISSING and value is not None and not isinstance(value, type(default)):
            if isinstance(default, float) and isinstance(value, int):
                value = float(value)
            else:
                raise ConfigError(f"{name}.{key}", f"{value!r} is not a {type(default).__name__}")
        kwargs[key] = value
    return cls(**kwargs)


def env_overrides(environ: Mapping[str, str] | None = None) -> dict[str, dict[str, Any]]:
    """KINO_SECTION__KEY=value -> {section: {key: value}} (values parsed as YAML scalars); deeper
    keys nest: KINO_MODEL__ENHANCER__ENABLED=true -> {model: {enhancer: {enabled: true}}}."""
    out: dict[str, dict[str, Any]] = {}
    for name, raw in (environ if environ is not None else os.environ).items():
        if not name.startswith(ENV_PREFIX) or "__" not in name:
            continue
        *path, key = name[len(ENV_PREFIX):].lower().split("__")
        node: dict[str, Any] = out
        for part in path:
            node = node.setdefault(part, {})
        node[key] = yaml.safe_load(raw) if raw != "" else ""
    return out


def _merge(base: dict[str, Any], over: Mapping[str, Any], where: str) -> dict[str, Any]:
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, Mapping):
            current = out.get(key) or {}
            if not isinstance(current, Mapping):
                raise ConfigError(f"{where}{key}", "must be a mapping")
            out[key] = _merge(dict(current), value, f"{where}{key}.")
        else:
            out[key] = value
    return out


def load_config(data: Mapping[str, Any] | None = None, *, environ: Mapping[str, str] | None = None) -> KinoConfig:
    """A validated config from a mapping, with environment overrides applied on top."""
    merged = _merge(dict(data or {}), env_overrides(environ), "")
    unknown = sorted(set(merged) - set(_SECTIONS) - {"model"})
    if unknown:
        raise ConfigError(unknown[0], f"unknown section (known: model, {', '.join(sorted(_SECTIONS))})")
    kwargs: dict[str, Any] = {name: _section(name, cls, merged.get(name)) for name, cls in _SECTIONS.items()}
    kwargs["model"] = from_mapping(merged.get("model") or {"preset": "tiny"})
    return KinoConfig(**kwargs)


def load_config_file(path: str | Path) -> KinoConfig:
    with open(path) as f:
        return load_config(yaml.safe_load(f) or {})
