"""Correctness anchors: the staged engines reproduce diffusers' LTX2Pipeline.

Same modules, seed and parameters; frames and audio must agree within 1e-4. A drift in any
stage (tokenization, connectors, noise draws, schedule, guidance, Euler update, VAE decode,
vocoder) breaks these tests.
"""

from fractions import Fraction

import pytest
import torch

from engines.params import GenerationRequest

TOL = 1e-4


def _reference(pipe, cfg, p):
    out = pipe(prompt=p.prompt, negative_prompt=p.negative_prompt, height=p.height, width=p.width,
               num_frames=p.num_frames, frame_rate=float(p.fps), num_inference_steps=p.steps,
               guidance_scale=p.guidance_scale, audio_guidance_scale=p.audio_guidance_scale,
               guidance_rescale=p.guidance_rescale, audio_guidance_rescale=p.audio_guidance_rescale,
               stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0,
               max_sequence_length=cfg.tokenizer_max_length, generator=torch.Generator().manual_seed(p.seed),
               output_type="pt")
    return out.frames[0].permute(0, 2, 3, 1), out.audio[0]  # [F, H, W, 3], [C, N]


@pytest.mark.parametrize(
    "kw",
    [
        dict(prompt="a robot dancing on the beach", negative_prompt="blurry", seed=3),
        dict(prompt="rain on a tin roof", seed=11, width=96, height=64, seconds=2.0, steps=5,
             guidance_scale=4.0, audio_guidance_scale=2.5, guidance_rescale=0.0),
        dict(prompt="no guidance at all", seed=5, guidance_scale=1.0, audio_guidance_scale=1.0),
        dict(prompt="ntsc rate", seed=9, fps=Fraction(30000, 1001), seconds=1.2, width=64, height=96),
    ],
    ids=["cfg+rescale", "non-square-5-steps", "no-cfg", "ntsc-fps"],
)
def test_staged_path_reproduces_ltx2_pipeline(staged, reference_pipeline, tiny_config, kw):
    p = GenerationRequest(**kw).validated(tiny_config)
    ref_frames, ref_audio = _reference(reference_pipeline, tiny_config, p)
    [latents] = staged.denoise([("r", p)])
    frames = staged.decoder.decode_video(latents, chunked=False)
    wave = staged.decoder.decode_audio(latents)
    assert frames.shape == ref_frames.shape
    assert wave.samples.shape == tuple(ref_audio.shape)
    assert (frames - ref_frames).abs().max().item() <= TOL
    assert (torch.from_numpy(wave.samples) - ref_audio).abs().max().item() <= TOL
    # The outputs are not trivially equal to something constant: the video really varies.
    assert frames.std().item() > 0.01 and abs(wave.samples).max() > 0.0
