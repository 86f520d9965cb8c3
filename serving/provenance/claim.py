"""What a video's content credentials state about it (built by the dispatcher, signed by the decoder)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass


@dataclass(frozen=True)
class Claim:
    video_id: str
    model: str
    prompt_sha256: str  # a hash of the prompt, never the prompt
    parent_video_id: str | None = None


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()
