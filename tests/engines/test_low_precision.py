"""The int8 DiT backend (CPU) against float32 eager on tiny, with the step cache on top, and its fallback.

Bounds, from tiny at 8 steps over seeds 1-8: int8's latents are 43.8-45.3 dB (video) and 40.3-46.4 dB
(audio) SNR from float32's and its decoded frames 52-58 dB PSNR; int8 with balanced caching is
42.4-47.5 dB PSNR from float32 off. FP8 needs a GPU: tests/engines/test_gpu_backends.py.
"""

from __future__ import annotations

import dataclasses
import logging
import math

import numpy as np
import pytest
import torch

from engines.config import preset
from engines.model_loader import load_components
from engines.params import GenerationRequest
from engines.staged_pipeline import StagedPipeline
from loadtests.quality import psnr, snr

LATENT_SNR_DB = 35.0
FRAMES_PSNR_DB = 45.0
WITH_CACHE_PSNR_DB = 38.0


@pytest.fixture(scope="module")
def int8(staged, tiny_config):
    """A pipeline on the int8 backend, over a transformer of its own (int8 quantizes in place)."""
    own = dataclasses.replace(staged.components, transformer=load_components(tiny_config, ["transformer"]).transformer)
    return StagedPipeline(tiny_config.replace(dit_backend="int8"), own)


def test_int8_quantizes_the_block_linears_and_tracks_float32(staged, int8, tiny_config):
    backend = int8.denoiser.backend
    assert backend.name == "int8"
    blocks = staged.components.transformer.transformer_blocks
    assert backend.quantized_linears == sum(isinstance(m, torch.nn.Linear) for m in blocks.modules())
    assert not any(isinstance(m, torch.nn.Linear) for m in int8.components.transformer.transformer_blocks.modules())
    for seed in (1, 2):
        p = GenerationRequest(prompt="a lighthouse at dusk", seed=seed, steps=8).validated(tiny_config)
        [exact], [quantized] = staged.denoise([("a", p)]), int8.denoise([("a", p)])
        assert LATENT_SNR_DB <= snr(quantized.video, exact.video) < math.inf
        assert LATENT_SNR_DB <= snr(quantized.audio, exact.audio) < math.inf
        frames = psnr(staged.decoder.decode_video(quantized), staged.decoder.decode_video(exact))
        assert FRAMES_PSNR_DB <= frames


def test_the_step_cache_works_on_int8(staged, int8, tiny_config):
    from engines.denoiser import DenoiseRequest
    from engines.stage_io import PromptPair

    p = GenerationRequest(prompt="a lighthouse at dusk", seed=1, steps=8).validated(tiny_config)
    [exact] = staged.denoise([("a", p)])
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt)])
    state = int8.denoiser.prepare(DenoiseRequest("a", dataclasses.replace(p, cache="balanced"), emb))
    while not state.done:
        int8.denoiser.step([state])
    assert state.steps_skipped > 0
    cached = int8.denoiser.result(state)
    assert WITH_CACHE_PSNR_DB <= psnr(staged.decoder.decode_video(cached), staged.decoder.decode_video(exact))


def test_int8_needs_float32_weights_and_falls_back_to_eager_saying_so(caplog):
    from engines.dit_backend import create_backend

    config = preset("tiny", dtype="bfloat16")
    transformer = load_components(config, ["transformer"]).transformer
    with caplog.at_level(logging.WARNING, logger="engines.dit_backend"):
        backend = create_backend("int8", transformer, config)
    assert backend.name == "eager"
    [record] = [r for r in caplog.records if r.name == "engines.dit_backend"]
    assert record.message == ("DiT backend int8 unavailable (int8 dynamic quantization takes float32 weights; the "
                              "model is bfloat16 (set model.dtype: float32)); falling back to eager")
    assert any(isinstance(m, torch.nn.Linear) for m in transformer.transformer_blocks.modules())  # left as it was


def test_an_int8_request_checkpoints_and_resumes_bit_identical(staged, int8, tiny_config):
    """The quantized linears keep packed parameters (a dtype, a tuple) beside tensors: the checkpoint's weights
    fingerprint reads them (it raised on the dtype, and the serving loop died with the request in it), and it
    tells the int8 model from the float32 one (a checkpoint resumes only on the numerics that wrote it)."""
    from engines.denoise_checkpoint import CheckpointMismatch
    from engines.denoiser import DenoiseRequest
    from engines.stage_io import PromptPair

    p = GenerationRequest(prompt="a lighthouse at dusk", seed=3, steps=6).validated(tiny_config)
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt, p.negative_prompt)])
    request = DenoiseRequest("a", p, emb)
    assert int8.denoiser.fingerprint != staged.denoiser.fingerprint
    state = int8.denoiser.prepare(request)
    for _ in range(3):
        int8.denoiser.step([state])
    data = int8.denoiser.checkpoint(state)
    with pytest.raises(CheckpointMismatch):
        staged.denoiser.resume(staged.denoiser.prepare(request), data)
    resumed = int8.denoiser.prepare(request)
    assert int8.denoiser.resume(resumed, data) == 3
    while not state.done:
        int8.denoiser.step([state])
    while not resumed.done:
        int8.denoiser.step([resumed])
    a, b = int8.denoiser.result(state), int8.denoiser.result(resumed)
    assert np.array_equal(a.video, b.video) and np.array_equal(a.audio, b.audio)
