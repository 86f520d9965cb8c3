"""Where finished videos live: a local directory by default, behind an interface."""

from serving.artifacts.store import Artifact, ArtifactStore, LocalArtifactStore

__all__ = ["Artifact", "ArtifactStore", "LocalArtifactStore"]
