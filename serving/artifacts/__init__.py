"""Where finished videos live: a local directory by default or a bucket over the S3 API, behind one interface."""

from __future__ import annotations

from typing import TYPE_CHECKING

from serving.artifacts.store import Artifact, ArtifactStore, LocalArtifactStore

if TYPE_CHECKING:
    from serving.config import StorageConfig

__all__ = ["Artifact", "ArtifactStore", "LocalArtifactStore", "open_artifact_store"]


def open_artifact_store(storage: StorageConfig) -> ArtifactStore:
    """The store the config names: an S3 bucket when storage.s3.bucket is set, else storage.artifacts_dir."""
    s3 = storage.s3
    if not s3.bucket:
        return LocalArtifactStore(storage.artifacts_dir)
    from serving.artifacts.s3 import S3ArtifactStore  # obstore only where a bucket is configured

    return S3ArtifactStore(s3.bucket, endpoint=s3.endpoint, region=s3.region, prefix=s3.prefix,
                           access_key_id=s3.access_key_id, secret_access_key=s3.secret_access_key,
                           allow_http=s3.allow_http)
