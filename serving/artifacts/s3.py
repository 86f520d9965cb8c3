"""Artifacts in an object store over the S3 API (AWS S3, MinIO, SeaweedFS, Ceph RGW, Cloudflare R2, ...).

The client is obstore (Python bindings of the Rust `object_store` crate): one small wheel with streaming
gets, multipart puts and presigned URLs, and no botocore (whose import alone costs a front door hundreds of
milliseconds and tens of MB). A cluster with a bucket needs no ReadWriteMany volume: every replica reads and
writes the bucket, and a stage that needs a stored input as a file (a first frame, a remix source, a cameo
reference) downloads it once into a per-process cache.
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import uuid
import weakref
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import obstore
from obstore.exceptions import NotFoundError
from obstore.store import S3Store

from serving.artifacts.store import Artifact, ArtifactStore
from serving.errors import NotFound

PART_BYTES = 8 * 2**20
"""Files larger than this are uploaded in parts of this size (S3's smallest part is 5 MiB)."""


def check_key(key: str) -> str:
    """`key` if it is a plain relative key (no empty, `.` or `..` parts, no leading `/`); else ValueError, the
    message the local store gives for a key that escapes it."""
    if not key or key.startswith("/") or "\\" in key or any(part in ("", ".", "..") for part in key.split("/")):
        raise ValueError(f"artifact key {key!r} escapes the store")
    return key


class S3ArtifactStore(ArtifactStore):
    """Objects in one bucket, under an optional key prefix; keys are used as given (callers scope them by
    tenant: ``{tenant}/{job_id}.mp4``). Scratch files and downloaded inputs live in a private temporary
    directory of this process (`cache_dir`), removed when the store is collected or the process exits."""

    def __init__(self, bucket: str, *, endpoint: str = "", region: str = "us-east-1", prefix: str = "",
                 access_key_id: str = "", secret_access_key: str = "", allow_http: bool = False,
                 cache_dir: str | Path | None = None) -> None:
        """Empty `access_key_id`/`secret_access_key`: the credentials of the environment (AWS_* variables, a
        web identity token, the instance's role), as AWS' own clients find them."""
        config: dict[str, Any] = {"region": region}
        if endpoint:
            config["endpoint"] = endpoint
        if access_key_id:
            config["access_key_id"] = access_key_id
            config["secret_access_key"] = secret_access_key
        self.bucket, self.prefix = bucket, prefix.strip("/")
        self.store = S3Store(bucket, prefix=self.prefix or None, config=config,
                             client_options={"allow_http": allow_http, "connect_timeout": "10s", "timeout": "300s"},
                             retry_config={"max_retries": 5, "retry_timeout": timedelta(minutes=3),
                                           "backoff": {"init_backoff": timedelta(milliseconds=100),
                                                       "max_backoff": timedelta(seconds=15), "base": 2}})
        if cache_dir is None:
            self.cache_dir = Path(tempfile.mkdtemp(prefix=f"kino-artifacts-{os.getpid()}-"))
            self._cleanup = weakref.finalize(self, shutil.rmtree, str(self.cache_dir), ignore_errors=True)
        else:
            self.cache_dir = Path(cache_dir)
        (self.cache_dir / "scratch").mkdir(parents=True, exist_ok=True)
        (self.cache_dir / "objects").mkdir(parents=True, exist_ok=True)

    def __repr__(self) -> str:
        return f"S3ArtifactStore(bucket={self.bucket!r}, prefix={self.prefix!r})"

    @staticmethod
    def _missing(key: str) -> NotFound:
        return NotFound(f"id: the artifact {key!r} of this video is missing", field="id")

    def scratch_path(self, key: str) -> Path:
        # the key's name ends the file's: PyAV and c2pa pick the container by the suffix
        return self.cache_dir / "scratch" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{check_key(key).replace('/', '_')}"

    def put_file(self, key: str, source: Path) -> Artifact:
        """Upload `source` (in parts when large: the object appears whole or not at all), hashing it as it
        is read, then remove it."""
        check_key(key)
        digest = hashlib.sha256()
        size = 0

        def blocks() -> Iterator[bytes]:
            nonlocal size
            with open(source, "rb") as f:
                while block := f.read(PART_BYTES):
                    digest.update(block)
                    size += len(block)
                    yield block

        if source.stat().st_size > PART_BYTES:
            obstore.put(self.store, key, blocks(), chunk_size=PART_BYTES, max_concurrency=4)
        else:
            obstore.put(self.store, key, b"".join(blocks()), use_multipart=False)
        source.unlink(missing_ok=True)
        return Artifact(key=key, size_bytes=size, sha256=digest.hexdigest())

    def read_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        """The object streamed in chunks of exactly `chunk_bytes` (the last one shorter)."""
        check_key(key)
        try:
            result = obstore.get(self.store, key)
        except (NotFoundError, FileNotFoundError):
            raise self._missing(key) from None
        pending = bytearray()
        for block in result.stream(min_chunk_size=chunk_bytes):
            pending += memoryview(block)
            while len(pending) >= chunk_bytes:
                yield bytes(pending[:chunk_bytes])
                del pending[:chunk_bytes]
        if pending:
            yield bytes(pending)

    def delete(self, key: str) -> None:
        check_key(key)
        try:
            obstore.delete(self.store, key)
        except (NotFoundError, FileNotFoundError):
            pass
        (self.cache_dir / "objects" / key).unlink(missing_ok=True)

    def local_path(self, key: str) -> Path:
        """The object downloaded into this process' cache (once: artifacts are never rewritten under a key),
        written to a temporary name and renamed so a reader never sees a partial file."""
        path = self.cache_dir / "objects" / check_key(key)
        if path.is_file():
            return path
        path.parent.mkdir(parents=True, exist_ok=True)
        partial = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.partial")
        try:
            with open(partial, "wb") as f:
                for block in self.read_chunks(key, PART_BYTES):
                    f.write(block)
            os.replace(partial, path)
        finally:
            partial.unlink(missing_ok=True)
        return path

    def presigned_url(self, key: str, expires_s: float = 3600, method: str = "GET") -> str:
        """A URL that lets its holder `method` the object for `expires_s` seconds without credentials (a
        download straight from the bucket). It needs explicit or environment credentials."""
        return obstore.sign(self.store, method, check_key(key), timedelta(seconds=expires_s))  # type: ignore[call-overload]
