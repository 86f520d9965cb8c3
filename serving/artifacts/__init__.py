"""Where finished videos live: a local directory by default, behind an interface."""

from serving.artifacts.store import ArtifactStore, LocalArtifactStore, StoredArtifact

__all__ = ["ArtifactStore", "LocalArtifactStore", "StoredArtifact"]
