"""The start-up memory profile of the DiT on a GPU (gpu-marked: deselected in CI)."""

import pytest
import torch

pytestmark = pytest.mark.gpu


def test_the_memory_profile_gives_a_token_budget_that_runs():
    assert torch.cuda.is_available(), "these tests need an NVIDIA GPU (CI deselects them: -m 'not gpu')"
    from engines.config import preset
    from engines.denoiser import Denoiser
    from engines.memory import device_token_budget, probe_request

    denoiser = Denoiser(preset("tiny", device="cuda"))
    budget = device_token_budget(denoiser, utilization=0.5)
    state = denoiser.prepare(probe_request(denoiser))
    assert budget is not None and budget > state.rows * (state.shape.video_tokens + state.shape.audio_frames)
    assert device_token_budget(Denoiser(preset("tiny")), 0.5) is None  # a CPU has nothing to profile
