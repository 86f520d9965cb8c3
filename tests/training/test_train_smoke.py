"""The demo training run in miniature (every stage a few steps, training/recipe.py SMOKE): it writes a diffusers
checkpoint the normal loading path takes as the ``demo`` preset, and that checkpoint generates a video with audio."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from engines.config import preset
from engines.model_loader import ALL_PARTS, PIPELINE_PARTS, ComponentSource
from engines.params import GenerationRequest
from engines.staged_pipeline import StagedPipeline
from training import truth
from training.dit import training_sigmas
from training.recipe import SMOKE
from training.train_demo import train
from training.world import GEOMETRY

MiB = 2**20
PARTS = ("transformer", "connectors", "vae", "audio_vae", "vocoder")


def same_weights(first, second, part: str) -> bool:
    """Two checkpoints' `part` hold the same tensors, bit for bit."""
    a, b = (load_file(d / part / "diffusion_pytorch_model.safetensors") for d in (first, second))
    return a.keys() == b.keys() and all(a[k].equal(b[k]) for k in a)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    """As ``python -m training.train_demo`` runs (on shared cores, two torch threads mostly wait on each other)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def trained(tmp_path_factory, one_thread):
    root = tmp_path_factory.mktemp("demo_smoke")
    record = train(SMOKE, root / "checkpoint", root / "report")
    return root, record


def test_every_stage_ran_and_the_run_is_recorded(trained):
    root, record = trained
    ckpt = root / "checkpoint"
    assert json.loads((ckpt / "training.json").read_text()) == record
    assert set(record["final_losses"]) == {"video VAE", "audio VAE", "vocoder", "DiT"}
    losses = [v for stage in record["final_losses"].values() for v in stage.values()]
    assert losses and all(math.isfinite(v) for v in losses)
    assert record["recipe"]["dit"]["steps"] == SMOKE.dit.steps
    assert min(record["caption_separability"].values()) > 0  # the frozen encoder tells one-word changes apart
    png = root / "report" / "loss_curves.png"
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_the_checkpoint_is_small_safetensors_in_diffusers_layout(trained):
    ckpt = trained[0] / "checkpoint"
    index = json.loads((ckpt / "model_index.json").read_text())
    assert index["_class_name"] == "LTX2Pipeline"
    assert set(PIPELINE_PARTS) <= set(index) and all((ckpt / p).is_dir() for p in PIPELINE_PARTS)
    files = [f for f in ckpt.rglob("*") if f.is_file()]
    weights = [f for f in files if f.suffix in (".safetensors", ".bin", ".pt", ".pth")]
    assert weights and all(f.suffix == ".safetensors" for f in weights)
    assert max(f.stat().st_size for f in files) < 5 * MiB
    assert sum(f.stat().st_size for f in files) < 12 * MiB


def test_it_loads_as_the_demo_preset_and_generates(trained, tmp_path):
    ckpt = trained[0] / "checkpoint"
    config = preset("demo", checkpoint_dir=ckpt)
    source = ComponentSource(config)
    components = source.load(ALL_PARTS)
    assert all(getattr(components, p) is not None for p in PIPELINE_PARTS)
    g = source.geometry()
    assert (g.mel_compression, g.audio_temporal_compression) == (4, 4)  # the three-level audio VAE
    staged = StagedPipeline(config, components)
    # The sampler's grid is the training's sigma map over a uniform grid: what was trained is what is sampled.
    sigmas, _ = staged.denoiser._schedule(8, 12)
    grid = torch.linspace(1.0, 1 / 8, 8)
    assert torch.allclose(sigmas[:-1].float(), training_sigmas(components.scheduler, 12, grid), atol=1e-5)
    params = GenerationRequest(prompt="a red ball bouncing on a dark floor, a click at every bounce", seed=3, steps=2)
    result = staged.generate(params, tmp_path / "demo.mp4")
    frames, audio, rate, fps = truth.read_mp4(result.path)
    assert frames.shape == (GEOMETRY.frames, GEOMETRY.height, GEOMETRY.width, 3)
    assert (rate, fps) == (GEOMETRY.sample_rate, GEOMETRY.fps) and audio.shape[0] == 2
    assert abs(audio.shape[1] / rate - GEOMETRY.seconds) < 0.05


def test_a_warm_start_keeps_the_autoencoders_and_trains_the_dit(trained, tmp_path):
    first = trained[0] / "checkpoint"
    # Another DiT recipe over the first run's autoencoders (the same recipe would train the same DiT: seeded).
    longer = dataclasses.replace(SMOKE, dit=dataclasses.replace(SMOKE.dit, steps=SMOKE.dit.steps + 1))
    record = train(longer, tmp_path / "warm", tmp_path / "report", warm_start=first)
    assert record["warm_start"] == trained[1] and set(record["final_losses"]) == {"DiT"}

    assert all(same_weights(first, tmp_path / "warm", part) for part in ("vae", "audio_vae", "vocoder"))
    assert not same_weights(first, tmp_path / "warm", "transformer")
    StagedPipeline(preset("demo", checkpoint_dir=tmp_path / "warm"))  # loads


def test_the_run_is_deterministic(trained, tmp_path):
    again = train(SMOKE, tmp_path / "checkpoint", tmp_path / "report")
    for part in PARTS:
        assert same_weights(trained[0] / "checkpoint", tmp_path / "checkpoint", part), part
    assert again["final_losses"] == trained[1]["final_losses"]


@pytest.mark.parametrize("flag", ["--threads", "--dit-threads"])
def test_thread_counts_below_one_are_refused_by_name(flag, capsys):
    from training.train_demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", flag, "0"])
    assert exit_info.value.code == 2 and f"{flag} must be an integer >= 1, got 0" in capsys.readouterr().err


def test_a_run_in_chunks_is_the_run_in_one_go(trained, tmp_path):
    """A chunk stops after the DiT's first step (its autoencoders and the DiT's whole training state saved); the
    next one resumes there: the weights and losses are the one-go run's, to the last bit."""
    from training.train_demo import Chunks

    state = tmp_path / "state"
    stopped = train(SMOKE, tmp_path / "checkpoint", tmp_path / "report", chunks=Chunks(state, stop=lambda n: n == 1))
    assert stopped == {"finished": False, "dit_step": 1, "dit_steps": SMOKE.dit.steps, "state_dir": str(state)}
    assert not (tmp_path / "checkpoint").exists() and (state / "autoencoders" / "model_index.json").is_file()
    record = train(SMOKE, tmp_path / "checkpoint", tmp_path / "report", chunks=Chunks(state))
    assert [c["dit_steps"] for c in record["chunks"]] == [[0, 1], [1, SMOKE.dit.steps]]
    for part in PARTS:
        assert same_weights(trained[0] / "checkpoint", tmp_path / "checkpoint", part), part
    assert record["final_losses"] == trained[1]["final_losses"]
    assert record["seconds"]["total"] == sum(c["seconds"] for c in record["chunks"])


@pytest.mark.parametrize(("argv", "message"), [
    (["--resume", "/nonexistent/state"], "--resume /nonexistent/state: no run's state there"),
    (["--warm-dit"], "--warm-dit needs --warm-start DIR"),
    (["--chunk-minutes", "0"], "--chunk-minutes must be a number > 0, got 0.0"),
])
def test_chunk_flags_are_checked_by_name(argv, message, capsys):
    from training.train_demo import main

    with pytest.raises(SystemExit) as exit_info:
        main(["--smoke", *argv])
    assert exit_info.value.code == 2 and message in capsys.readouterr().err


def test_the_cli_keeps_a_chunked_runs_arguments_and_refuses_to_resume_a_finished_one(tmp_path, capsys):
    from training.train_demo import main

    state, out = tmp_path / "state", tmp_path / "checkpoint"
    main(["--smoke", "--chunk-minutes", "30", "--state", str(state), "--out", str(out),
          "--report", str(tmp_path / "report")])
    assert "(1 chunk(s))" in capsys.readouterr().out and (out / "training.json").is_file()
    arguments = json.loads((state / "arguments.json").read_text())
    assert arguments["finished"] is True and arguments["out"] == str(out) and arguments["smoke"] is True
    assert not (state / "dit_state.pt").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["--resume", str(state)])
    assert exit_info.value.code == 2 and f"that run finished; its checkpoint is {out}" in capsys.readouterr().err
    with pytest.raises(SystemExit):  # a new run over the same state directory is refused, not mixed in
        main(["--smoke", "--chunk-minutes", "30", "--state", str(state), "--out", str(out)])
    assert "holds another run's state" in capsys.readouterr().err
