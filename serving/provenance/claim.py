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
    # The LoRA adapters the model ran with, as (name, scale): what shaped the output beside the named model.
    loras: tuple[tuple[str, float], ...] = ()


def prompt_sha256(prompt: str) -> str:
    return hashlib.sha256(prompt.encode()).hexdigest()
