"""Cameo records: the person, their consent, who may use them, and what happened with them."""

from __future__ import annotations

from dataclasses import dataclass

ANY_USER = "*"


@dataclass(frozen=True)
class Cameo:
    id: str
    owner_tenant: str
    owner_user: str
    name: str
    require_approval: bool
    consent_statement: str
    consent_at: float
    consent_key_id: str  # the API key that registered it ("local" without keys)
    reference_key: str  # the reference frame (PNG) in the artifact store
    voice_key: str | None  # the voice clip (WAV) in the artifact store, if the recording had audio
    created_at: float


@dataclass(frozen=True)
class Grant:
    cameo_id: str
    tenant: str
    user: str  # ANY_USER: every user of the tenant
    granted_at: float
    revoked_at: float | None = None

    @property
    def live(self) -> bool:
        return self.revoked_at is None


@dataclass(frozen=True)
class Notification:
    id: int
    cameo_id: str
    at: float
    kind: str  # used | held | approved | rejected | deleted | stopped
    video_id: str
    creator_tenant: str
    message: str


def owner_topic(tenant: str) -> str:
    """The nudge topic of a cameo owner's notification watchers (serving/control_plane/progress.py)."""
    return f"cameo-notifications/{tenant}"
