"""TextEncoder deployment: batches concurrent prompts into one encoder pass (serve.batch)."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from engines.stage_io import PromptEmbedding, PromptPair
from engines.text_encoder import TextEncoder
from serving.config import load_config


@serve.deployment(name="TextEncoder")
class TextEncoderDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        self.engine = TextEncoder(load_config(config).model)

    async def encode(self, prompt: PromptPair) -> PromptEmbedding:
        return await self._encode_batch(prompt)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _encode_batch(self, prompts: list[PromptPair]) -> list[PromptEmbedding]:
        return await asyncio.to_thread(self.engine.encode, prompts)
