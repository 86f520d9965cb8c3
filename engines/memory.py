"""How many latent tokens one DiT forward may hold on this device: a memory profile at start, as vLLM
sizes its KV cache from `gpu_memory_utilization`.

On a GPU: run one probe forward (a zero prompt, a moderate size), measure the activation memory it
peaked at per token, and divide what the device may still use (its share `utilization`, less what the
weights already hold) by it. On a CPU there is nothing to profile (memory is the host's): None.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from engines.denoiser import Denoiser, DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import PromptEmbedding

log = logging.getLogger(__name__)


def probe_request(denoiser: Denoiser) -> DenoiseRequest:
    """A request of the model's default size with a zero prompt: what a profile forward runs."""
    config = denoiser.config
    params = GenerationRequest(prompt="probe", seed=0, steps=2).validated(config)
    width = denoiser.transformer.config.caption_channels
    zeros = np.zeros((2, config.tokenizer_max_length, width), np.float32)
    embedding = PromptEmbedding(video=zeros, audio=zeros, mask=np.ones((2, config.tokenizer_max_length), np.float32))
    return DenoiseRequest("probe", params, embedding)


def device_token_budget(denoiser: Denoiser, utilization: float) -> int | None:
    """Tokens (rows x latent tokens) one forward may hold on the denoiser's GPU; None on a CPU."""
    if denoiser.device.type != "cuda":
        return None
    request = probe_request(denoiser)
    torch.cuda.synchronize(denoiser.device)
    torch.cuda.empty_cache()
    torch.cuda.reset_peak_memory_stats(denoiser.device)
    resident = torch.cuda.memory_allocated(denoiser.device)
    state = denoiser.prepare(request)
    tokens = state.rows * (state.shape.video_tokens + state.shape.audio_frames)
    denoiser.step([state])
    torch.cuda.synchronize(denoiser.device)
    per_token = max(1, torch.cuda.max_memory_allocated(denoiser.device) - resident) / tokens
    _free, total = torch.cuda.mem_get_info(denoiser.device)
    budget = int((total * utilization - resident) / per_token)
    log.info("memory profile: %.0f bytes per latent token in a forward, %.1f GiB resident, %d of %.1f GiB usable: "
             "%d tokens per forward", per_token, resident / 2**30, int(utilization * 100), total / 2**30, budget)
    del state
    torch.cuda.empty_cache()
    return max(budget, 1)
