"""Decoder deployment: latents -> MP4 in the artifact store."""

from __future__ import annotations

import asyncio
from typing import Any

from ray import serve

from engines.decoder import Decoder
from engines.params import GenerationParams
from serving.artifacts import LocalArtifactStore
from serving.config import load_config
from serving.dispatcher import DecodeResult


@serve.deployment(name="Decoder")
class DecoderDeployment:
    def __init__(self, config: dict[str, Any]) -> None:
        cfg = load_config(config)
        self.engine = Decoder(cfg.model)
        self.artifacts = LocalArtifactStore(cfg.storage.artifacts_dir)

    async def decode(self, job_id: str, params: GenerationParams, latents: list, key: str) -> DecodeResult:
        denoised = await latents[0]  # the Denoiser's object: fetched from the object store here
        scratch = self.artifacts.scratch_path(key)
        media = await asyncio.to_thread(self.engine.render_mp4, denoised, params, scratch)
        stored = await asyncio.to_thread(self.artifacts.put_file, key, scratch)
        return DecodeResult(key=stored.key, size_bytes=stored.size_bytes, sha256=stored.sha256,
                            summary=media.summary())
