"""Conditioning paths reproduce diffusers: image-to-video (LTX2ImageToVideoPipeline) and remix
(LTX2Pipeline given source latents, a noise scale and the rest of the schedule)."""

import numpy as np
import PIL.Image
import pytest
import torch

from engines.denoiser import DenoiseRequest
from engines.media_encoder import _read_frames
from engines.params import GenerationRequest
from engines.stage_io import PromptPair

TOL = 1e-4
COMMON = dict(stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0, audio_modality_scale=1.0, output_type="pt")


def _pipe_kwargs(p, cfg):
    return dict(prompt=p.prompt, negative_prompt=p.negative_prompt, height=p.height, width=p.width,
                num_frames=p.num_frames, frame_rate=float(p.fps), guidance_scale=p.guidance_scale,
                audio_guidance_scale=p.audio_guidance_scale, guidance_rescale=p.guidance_rescale,
                audio_guidance_rescale=p.audio_guidance_rescale, max_sequence_length=cfg.tokenizer_max_length,
                generator=torch.Generator().manual_seed(p.seed), **COMMON)


def _check(staged, latents, ref):
    frames = staged.decoder.decode_video(latents, chunked=False)
    wave = staged.decoder.decode_audio(latents)
    assert (frames - ref.frames[0].permute(0, 2, 3, 1)).abs().max().item() <= TOL
    assert (torch.from_numpy(wave.samples) - ref.audio[0]).abs().max().item() <= TOL
    return frames


def test_image_to_video_reproduces_ltx2_image_to_video_pipeline(staged, tiny_config):
    from diffusers import LTX2ImageToVideoPipeline

    pipe = LTX2ImageToVideoPipeline(**staged.components.pipeline_parts())
    pipe.set_progress_bar_config(disable=True)
    rng = np.random.default_rng(0)
    image = PIL.Image.fromarray(rng.integers(0, 255, (80, 112, 3), dtype=np.uint8))  # resized to the request
    p = GenerationRequest(prompt="the photo comes alive", seed=4, width=96, height=64,
                         seconds=1.5).validated(tiny_config)
    ref = pipe(image=image, num_inference_steps=p.steps, **_pipe_kwargs(p, tiny_config))
    cond = staged.media.encode_image(image, p)
    [latents] = staged.denoise([("i2v", p)], conditioning=[cond])
    frames = _check(staged, latents, ref)
    # And it is not the unconditioned video.
    [plain] = staged.denoise([("t2v", p)])
    assert (frames - staged.decoder.decode_video(plain, chunked=False)).abs().max().item() > 0.05


def test_conditioned_and_plain_requests_share_a_batch(staged, tiny_config):
    """A first-frame request and a text-only one in the same forward equal their solo runs."""
    rng = np.random.default_rng(1)
    image = PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8))
    p1 = GenerationRequest(prompt="first", seed=1, steps=3).validated(tiny_config)
    p2 = GenerationRequest(prompt="second", seed=2, steps=3).validated(tiny_config)
    cond = staged.media.encode_image(image, p1)
    embs = staged.text_encoder.encode([PromptPair(p1.prompt), PromptPair(p2.prompt)])
    states = [staged.denoiser.prepare(DenoiseRequest("a", p1, embs[0], cond)),
              staged.denoiser.prepare(DenoiseRequest("b", p2, embs[1]))]
    while not all(s.done for s in states):
        staged.denoiser.step(states)
    solo = staged.denoise([("a", p1), ("b", p2)], conditioning=[cond, None])
    for s, alone in zip(states, solo, strict=True):
        assert np.abs(staged.denoiser.result(s).video - alone.video).max() <= TOL


@pytest.mark.parametrize("strength", [0.5, 0.8])
def test_remix_reproduces_ltx2_pipeline_on_source_latents(staged, tiny_config, tmp_path, strength):
    parent = GenerationRequest(prompt="a red ball bouncing", seed=3, seconds=1.0, steps=6).validated(tiny_config)
    src = staged.generate(parent, tmp_path / "parent.mp4").path
    p = GenerationRequest(prompt="a blue ball bouncing", seed=8, seconds=1.0, steps=6).validated(tiny_config)
    cond = staged.media.encode_video(src, p, strength)
    [emb] = staged.text_encoder.encode([PromptPair(p.prompt)])
    state = staged.denoiser.prepare(DenoiseRequest("remix", p, emb, cond))
    k = state.start_index
    assert 0 < k < p.steps and state.steps_total == p.steps - k
    # The library path: the source's VAE latents, noised to sigma_k, denoised over sigmas[k:].
    frames = _read_frames(src, p.num_frames)
    video = staged.media.processor.preprocess_video(frames, height=p.height, width=p.width)
    source_latents = staged.media.vae.encode(video).latent_dist.mode()
    pipe = staged.components.pipeline()
    kw = _pipe_kwargs(p, tiny_config)
    ref = pipe(latents=source_latents, noise_scale=float(state.sigmas[k]), sigmas=state.sigmas[k:-1].tolist(),
               num_inference_steps=p.steps - k, **kw)
    [latents] = staged.denoise([("remix", p)], conditioning=[cond])
    _check(staged, latents, ref)
