"""Two-stage generation (engines/two_stage.py) reproduces diffusers' own two-stage composition:
LTX2Pipeline at half size -> LTX2LatentUpsamplePipeline -> LTX2Pipeline refining the upsampled
latents and the stage-1 audio over the stage-2 sigmas with an unshifted scheduler.

The VAEs get non-trivial latent statistics here (the random presets' are zeros and ones), so a
normalize/denormalize out of place between the stages shows.
"""

import dataclasses

import pytest
import torch
from diffusers import FlowMatchEulerDiscreteScheduler, LTX2Pipeline
from diffusers.pipelines.ltx2.pipeline_ltx2_latent_upsample import LTX2LatentUpsamplePipeline

from engines.config import ScheduleConfig, preset
from engines.errors import InvalidParameter
from engines.model_loader import ALL_PARTS, ComponentSource
from engines.params import GenerationParams, GenerationRequest
from engines.staged_pipeline import StagedPipeline
from engines.two_stage import stage_one, stage_two

TOL = 1e-4


@pytest.fixture(scope="module")
def pipe():
    config = preset("tiny")
    comps = ComponentSource(config).load(ALL_PARTS)
    gen = torch.Generator().manual_seed(7)
    for vae in (comps.vae, comps.audio_vae):
        n = vae.latents_mean.numel()
        vae.latents_mean.copy_(0.2 * torch.randn(n, generator=gen))
        vae.latents_std.copy_(0.5 + torch.rand(n, generator=gen))
    return StagedPipeline(config, comps)


def _diffusers_two_stage(pipe: StagedPipeline, p: GenerationParams):
    comps, cfg = pipe.components, pipe.config
    one, two = stage_one(p), stage_two(p, cfg.schedule)
    common = dict(prompt=p.prompt, negative_prompt=p.negative_prompt, num_frames=p.num_frames,
                  frame_rate=float(p.fps), stg_scale=0.0, audio_stg_scale=0.0, modality_scale=1.0,
                  audio_modality_scale=1.0, max_sequence_length=cfg.tokenizer_max_length)
    stage1 = comps.pipeline()
    video, audio = stage1(**common, width=one.width, height=one.height, num_inference_steps=one.steps,
                          guidance_scale=one.guidance_scale, audio_guidance_scale=one.audio_guidance_scale,
                          guidance_rescale=one.guidance_rescale, audio_guidance_rescale=one.audio_guidance_rescale,
                          generator=torch.Generator().manual_seed(p.seed), output_type="latent", return_dict=False)
    upsample = LTX2LatentUpsamplePipeline(vae=comps.vae, latent_upsampler=comps.latent_upsampler)
    upsample.set_progress_bar_config(disable=True)
    [upsampled] = upsample(latents=video, width=one.width, height=one.height, num_frames=p.num_frames,
                           output_type="latent", return_dict=False)
    parts = comps.pipeline_parts()
    parts["scheduler"] = FlowMatchEulerDiscreteScheduler.from_config(
        comps.scheduler.config, use_dynamic_shifting=False, shift_terminal=None)
    stage2 = LTX2Pipeline(**parts)
    stage2.set_progress_bar_config(disable=True)
    sigmas = list(cfg.schedule.refine_sigmas)
    out = stage2(**common, width=p.width, height=p.height, latents=upsampled, audio_latents=audio,
                 sigmas=sigmas, noise_scale=sigmas[0], num_inference_steps=len(sigmas),
                 guidance_scale=two.guidance_scale, audio_guidance_scale=two.audio_guidance_scale,
                 guidance_rescale=0.0, audio_guidance_rescale=0.0,
                 generator=torch.Generator().manual_seed(p.seed + 1), output_type="pt")
    return out.frames[0].permute(0, 2, 3, 1), out.audio[0]


@pytest.mark.parametrize("kw", [dict(prompt="a lighthouse at dusk", negative_prompt="blurry", seed=3, steps=3),
                                dict(prompt="rain on a window", seed=8, steps=2, width=192, seconds=0.5,
                                     guidance_scale=1.0, audio_guidance_scale=1.0)],
                         ids=["cfg", "no-cfg-non-square"])
def test_two_stage_reproduces_the_diffusers_composition(pipe, kw):
    p = GenerationRequest(**{"width": 128, "height": 128, **kw}, two_stage=True).validated(pipe.config)
    ref_frames, ref_audio = _diffusers_two_stage(pipe, p)
    steps: list[tuple[int, int]] = []
    latents = pipe.denoise_two_stage(p, on_step=lambda done, total: steps.append((done, total)))
    frames = pipe.decoder.decode_video(latents, chunked=False)
    wave = pipe.decoder.decode_audio(latents)
    assert frames.shape == ref_frames.shape and frames.shape[1:3] == (p.height, p.width)
    assert (frames - ref_frames).abs().max().item() <= TOL
    assert (torch.from_numpy(wave.samples) - ref_audio).abs().max().item() <= TOL
    assert frames.std().item() > 0.01
    total = p.steps + len(pipe.config.schedule.refine_sigmas)
    assert steps == [(i, total) for i in range(1, total + 1)]  # one count across both stages


def test_the_stages_of_a_request():
    config = preset("tiny")
    p = GenerationRequest(prompt="x", width=256, height=128, steps=6, seed=4, two_stage=True).validated(config)
    one, two = stage_one(p), stage_two(p, config.schedule)
    assert (one.width, one.height, one.steps, one.guidance_scale) == (128, 64, 6, p.guidance_scale)
    assert (two.width, two.height, two.steps, two.use_cfg, two.cache) == (256, 128, 3, False, "off")
    assert not one.two_stage and not two.two_stage and one.seed == two.seed == p.seed


def test_two_stage_is_checked_and_defaults_by_size():
    tiny = preset("tiny")
    with pytest.raises(InvalidParameter, match=r"size=.*multiples of 64 and at least 128"):
        GenerationRequest(prompt="x", width=96, height=128, two_stage=True).validated(tiny)
    with pytest.raises(InvalidParameter, match="two_stage"):
        GenerationRequest(prompt="x", two_stage="yes").validated(tiny)  # type: ignore[arg-type]
    assert GenerationRequest(prompt="x", width=1920, height=1088).validated(tiny).two_stage is False  # no threshold
    by_size = tiny.replace(two_stage=dataclasses.replace(tiny.two_stage, min_pixels=1280 * 720))
    assert GenerationRequest(prompt="x", width=1920, height=1088).validated(by_size).two_stage is True
    assert GenerationRequest(prompt="x", width=640, height=384).validated(by_size).two_stage is False
    assert GenerationRequest(prompt="x", width=1920, height=1088, two_stage=False).validated(by_size).two_stage is False


def test_a_checkpoint_without_an_upsampler_refuses_two_stage(tmp_path):
    from engines.config import checkpoint
    from engines.model_loader import save_checkpoint

    comps = ComponentSource(preset("tiny")).load(ALL_PARTS)
    comps.latent_upsampler = None
    config = checkpoint(save_checkpoint(comps, tmp_path / "ckpt"))
    assert not config.has_latent_upsampler
    with pytest.raises(InvalidParameter, match="two_stage=True.*no latent upsampler"):
        GenerationRequest(prompt="x", width=128, height=128, two_stage=True).validated(config)


def test_a_fixed_schedule_from_the_checkpoint(tmp_path):
    """A distilled checkpoint's scheduler config carries its sigma lists; requests then take that many steps."""
    import json

    from engines.config import DISTILLED_SIGMAS, checkpoint
    from engines.model_loader import save_checkpoint

    path = save_checkpoint(ComponentSource(preset("tiny")).load(ALL_PARTS), tmp_path / "ckpt")
    conf_path = path / "scheduler" / "scheduler_config.json"
    conf = json.loads(conf_path.read_text())
    conf_path.write_text(json.dumps({**conf, "sigmas": list(DISTILLED_SIGMAS), "stage_2_sigmas": [0.8, 0.4]}))
    config = checkpoint(path)
    assert config.schedule == ScheduleConfig(sigmas=DISTILLED_SIGMAS, refine_sigmas=(0.8, 0.4))
    assert config.defaults.steps == 8
    with pytest.raises(InvalidParameter, match=r"steps=4.*8: this model runs a fixed schedule"):
        GenerationRequest(prompt="x", steps=4).validated(config)
    conf_path.write_text(json.dumps({**conf, "stage_2_sigmas": [0.4, 0.8]}))
    with pytest.raises(Exception, match=r"model\.schedule\.refine_sigmas"):
        checkpoint(path)
