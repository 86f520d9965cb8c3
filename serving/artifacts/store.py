"""Artifact stores: put a finished file, read it back in chunks, delete it."""

from __future__ import annotations

import hashlib
import os
import shutil
import uuid
from abc import ABC, abstractmethod
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import PIL.Image

from serving.errors import NotFound


@dataclass(frozen=True)
class Artifact:
    """A finished file in the artifact store: what the Decoder returns and what the job records."""

    key: str
    size_bytes: int
    sha256: str
    content_type: str = "video/mp4"


class ArtifactStore(ABC):
    @abstractmethod
    def put_file(self, key: str, source: Path) -> Artifact:
        """Move `source` into the store under `key` (atomically visible) and hash it."""

    @abstractmethod
    def read_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        """The stored bytes in chunks; NotFound if absent."""

    @abstractmethod
    def delete(self, key: str) -> None:
        """Remove `key` if present."""

    @abstractmethod
    def local_path(self, key: str) -> Path:
        """A readable local file for `key` (stages read inputs such as first frames and remix sources)."""

    @abstractmethod
    def scratch_path(self, key: str) -> Path:
        """A local path to write `key` to before `put_file` (same filesystem: the move is a rename)."""

    def put_bytes(self, key: str, data: bytes) -> Artifact:
        path = self.scratch_path(key)
        path.write_bytes(data)
        return self.put_file(key, path)

    def put_png(self, key: str, image: PIL.Image.Image) -> Artifact:
        """An image (a first frame, a cameo reference) stored as PNG."""
        path = self.scratch_path(key)
        image.save(path, format="PNG")
        return self.put_file(key, path)


class LocalArtifactStore(ArtifactStore):
    """Files under a root directory. On Kubernetes the root is a shared volume (see the Helm chart)."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).expanduser().resolve()
        (self.root / "tmp").mkdir(parents=True, exist_ok=True)

    def _path(self, key: str) -> Path:
        path = (self.root / key).resolve()
        if self.root not in path.parents:
            raise ValueError(f"artifact key {key!r} escapes the store")
        return path

    def local_path(self, key: str) -> Path:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"id: the artifact {key!r} of this video is missing", field="id")
        return path

    def scratch_path(self, key: str) -> Path:
        return self.root / "tmp" / f"{os.getpid()}-{uuid.uuid4().hex[:8]}-{key.replace('/', '_')}"

    def put_file(self, key: str, source: Path) -> Artifact:
        digest = hashlib.sha256()
        with open(source, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                digest.update(block)
        dest = self._path(key)
        dest.parent.mkdir(parents=True, exist_ok=True)
        shutil.move(str(source), dest)
        return Artifact(key=key, size_bytes=dest.stat().st_size, sha256=digest.hexdigest())

    def read_chunks(self, key: str, chunk_bytes: int) -> Iterator[bytes]:
        path = self._path(key)
        if not path.is_file():
            raise NotFound(f"id: the artifact {key!r} of this video is missing", field="id")
        with open(path, "rb") as f:
            yield from iter(lambda: f.read(chunk_bytes), b"")

    def delete(self, key: str) -> None:
        self._path(key).unlink(missing_ok=True)
