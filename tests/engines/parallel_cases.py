"""The requests a parallel engine must get right, shared by the CPU (gloo) and GPU (NCCL) tests."""

from __future__ import annotations

import numpy as np
import PIL.Image
import torch

from engines.config import ModelConfig
from engines.denoiser import DenoiseRequest
from engines.params import GenerationRequest
from engines.stage_io import DenoisedLatents, LatentShape, PromptPair
from engines.staged_pipeline import StagedPipeline


def run_batched_requests(pipe: StagedPipeline, config: ModelConfig) -> tuple[list[DenoisedLatents], int]:
    """Step-level batching as the denoise loop does it: request a (CFG, first frame given: a per-token
    video timestep) runs one step alone, then b (CFG, another prompt and seed), c (no CFG: one row)
    and d (another size: its own shape bucket) join it; each step is one forward per shape bucket.
    Returns the results and the number of forwards."""
    den = pipe.denoiser
    image = PIL.Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    pa = GenerationRequest(prompt="a lighthouse at dusk", seed=1, steps=4).validated(config)
    pb = GenerationRequest(prompt="rain on a window", seed=2, steps=3).validated(config)
    pc = GenerationRequest(prompt="a lighthouse at dusk", seed=3, steps=3, guidance_scale=1.0,
                          audio_guidance_scale=1.0).validated(config)
    pd = GenerationRequest(prompt="rain on a window", seed=4, steps=2, width=96).validated(config)
    assert not pc.use_cfg
    embs = pipe.text_encoder.encode([PromptPair(p.prompt) for p in (pa, pb, pc, pd)])
    a = den.prepare(DenoiseRequest("a", pa, embs[0], pipe.media.encode_image(image, pa)))
    den.step([a])
    forwards = 1
    states = [a] + [den.prepare(DenoiseRequest(rid, p, e))
                    for rid, p, e in zip("bcd", (pb, pc, pd), embs[1:], strict=True)]
    while running := [s for s in states if not s.done]:
        for shape in dict.fromkeys(s.shape for s in running):
            den.step([s for s in running if s.shape == shape])
            forwards += 1
    return [den.result(s) for s in states], forwards


def media(pipe: StagedPipeline, results: list[DenoisedLatents]) -> list[tuple[torch.Tensor, np.ndarray]]:
    """(frames, waveform) of each result, decoded on this rank alone."""
    return [(pipe.decoder.decode_video(r).cpu(), pipe.decoder.decode_audio(r).samples) for r in results]


def assert_same_media(got: list[tuple[torch.Tensor, np.ndarray]], expected: list[tuple[torch.Tensor, np.ndarray]],
                      tol: float) -> None:
    """Frames and waveforms of each request agree with one rank's within `tol`."""
    for (frames, audio), (ref_frames, ref_audio) in zip(got, expected, strict=True):
        assert frames.shape == ref_frames.shape
        assert (frames - ref_frames).abs().max().item() <= tol
        assert np.abs(audio - ref_audio).max() <= tol


def tiled_latents(latent_channels: int, audio_channels: int, frames: int = 5, height: int = 3,
                  width: int = 5) -> DenoisedLatents:
    """Random latents whose decode is chunked and tiled under a small DecodeConfig."""
    gen = torch.Generator().manual_seed(0)
    shape = LatentShape(frames=frames, height=height, width=width, audio_frames=4)
    video = torch.randn(frames * height * width, latent_channels, generator=gen).numpy()
    return DenoisedLatents("t", shape, video, np.zeros((4, audio_channels), np.float32))
