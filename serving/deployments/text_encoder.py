"""TextEncoder deployment: batches concurrent prompts into one encoder pass (serve.batch), and
hosts the optional prompt enhancer (by default the same Gemma model; or a vLLM client)."""

from __future__ import annotations

import asyncio
from typing import TYPE_CHECKING, Any

from ray import serve

from serving.config import load_config

if TYPE_CHECKING:
    from engines.prompt_enhancer import PromptEnhancer
    from engines.stage_io import PromptEmbedding, PromptPair


@serve.deployment(name="TextEncoder")
class TextEncoderDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        from engines.model_loader import TEXT_ENCODER_PARTS, load_components  # in the replica, not at the app's build
        from engines.prompt_enhancer import create_enhancer
        from engines.text_encoder import TextEncoder

        model = load_config(config).model
        components = load_components(model, TEXT_ENCODER_PARTS)
        self.engine = TextEncoder(model, components)
        self.enhancer: PromptEnhancer | None = create_enhancer(model, components) if model.enhancer.enabled else None

    async def encode(self, prompt: PromptPair) -> PromptEmbedding:
        return await self._encode_batch(prompt)

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.002)
    async def _encode_batch(self, prompts: list[PromptPair]) -> list[PromptEmbedding]:
        return await asyncio.to_thread(self.engine.encode, prompts)

    async def enhance(self, prompt: str, seed: int) -> str:
        if self.enhancer is None:  # the front door refuses such requests; this is a config mismatch
            raise RuntimeError("this TextEncoder has no prompt enhancer (model.enhancer.enabled is false)")
        return await self._enhance_batch((prompt, seed))

    @serve.batch(max_batch_size=16, batch_wait_timeout_s=0.005)
    async def _enhance_batch(self, requests: list[tuple[str, int]]) -> list[str]:
        assert self.enhancer is not None
        prompts, seeds = zip(*requests, strict=True)
        return await asyncio.to_thread(self.enhancer.enhance, prompts, seeds)
