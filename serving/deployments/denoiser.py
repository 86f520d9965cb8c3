"""Denoiser deployment: one `DenoiseLoop` per replica (serving/data_plane/denoise_loop.py); this file is transport.
A call streams the loop's items in their wire form (serving/on_ray/stages.py `to_wire`): the latents go as an
item of their own, which the caller hands to the Decoder by reference without fetching it."""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, Any

from ray import serve
from ray.serve.handle import DeploymentHandle

from engines.stage_io import DenoiseRequest
from serving.config import load_config
from serving.data_plane.stages import Checkpointing
from serving.on_ray.metrics import RayMetrics
from serving.on_ray.stages import to_wire
from serving.services import denoise_figures, open_denoise_loop

if TYPE_CHECKING:
    from engines.params import GenerationParams
    from engines.stage_io import PromptEmbedding, VideoConditioning


@serve.deployment(name="Denoiser")
class DenoiserDeployment:
    def __init__(self, config: dict[str, Any], hub: DeploymentHandle) -> None:
        from serving.on_ray.parallel import RayRanks  # model libraries load in the replica, not at the app's build
        cfg = self.cfg = load_config(config)
        self.ranks = RayRanks(cfg.model) if cfg.model.parallel.world_size > 1 else None  # rank 0 of model.parallel
        self.loop = open_denoise_loop(cfg, RayMetrics(), lead=self.ranks.lead if self.ranks else None)
        self.hub = hub  # on the head: the job store's backlog comes from there (this node never opens the database)

    async def denoise(self, request_id: str, params: GenerationParams, embedding: PromptEmbedding,
                      priority: int, conditioning: VideoConditioning | None = None,
                      checkpointing: Checkpointing | None = None) -> AsyncIterator[Any]:
        async with contextlib.aclosing(to_wire(self.loop.denoise(
                DenoiseRequest(request_id, params, embedding, conditioning), priority, checkpointing))) as items:
            async for item in items:
                yield item

    async def check_health(self) -> None:  # on the replica's loop: no thread hop every period
        self.loop.check()
        if self.ranks is not None:
            self.ranks.check_health()

    async def __del__(self) -> None:
        """Stopping (a downscale, an upgrade): what still runs is checkpointed and handed back, not restarted."""
        await self.loop.drain()
        if self.ranks is not None:
            self.ranks.close()

    async def max_tokens(self) -> int:
        """The token budget of one forward here, for the front doors' check at create."""
        return self.loop.max_tokens

    async def record_autoscaling_stats(self) -> dict[str, float]:
        """For the backlog policy (serving/on_ray/autoscaling.py): this replica's figures, the head's backlog."""
        return {**denoise_figures(self.cfg, self.loop), **await self.hub.backlog.remote()}
