"""The kino CLI against the running cluster: generate with progress, list, get, download, errors, --help."""

from __future__ import annotations

import os
import subprocess
import sys

import av
import pytest

from engines.mp4 import probe
from engines.watermark import detect
from serving.provenance.credentials import verify

KINO = [sys.executable, "-m", "kino.cli.main"]


def kino(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    result = subprocess.run(KINO + list(args), capture_output=True, text=True, timeout=300)
    if check:
        assert result.returncode == 0, result.stdout + result.stderr
    return result


def test_the_installed_command_explains_itself():
    """One process: the console entry point starts and lists every command (each command's own --help is
    checked in-process, tests/serving/test_cli_help.py)."""
    out = kino("--help").stdout
    assert "usage: kino" in out and all(c in out for c in ("serve", "run", "generate", "admin"))


def test_demo_runs_the_trained_model_on_a_prompt_of_its_world():
    """`make demo` is `kino demo`: the demo preset (not tiny's noise) and a prompt the demo model was trained on."""
    from kino.cli.main import build_parser
    from training.world import PromptClass, prompt_classes

    args = build_parser().parse_args(["demo"])
    assert args.preset == "demo" and args.seconds is None  # the model's own length
    assert PromptClass.parse(args.prompt) in prompt_classes()
    assert build_parser().parse_args(["run", "x"]).preset == "tiny"


def test_generate_list_get_download_delete(cluster, tmp_path):
    addr = ["--address", cluster.grpc_address]
    out = tmp_path / "cli.mp4"
    gen = kino("generate", "a bell tower at noon", "--seconds", "1", "--size", "96x64", "--seed", "4", "-o", str(out),
               *addr)
    assert "queued video_" in gen.stdout and "completed" in gen.stdout and str(out) in gen.stdout
    info = probe(out)
    assert (info.width, info.height, info.video_codec, info.audio_codec) == (96, 64, "h264", "aac")
    video_id = gen.stdout.split("queued ")[1].split()[0]

    assert video_id in kino("list", "--page-size", "100", *addr).stdout
    shown = kino("get", video_id, *addr).stdout
    assert "completed" in shown and "96x64" in shown and "sha256" in shown
    again = tmp_path / "again.mp4"
    assert "bytes" in kino("download", video_id, "-o", str(again), *addr).stdout
    assert again.read_bytes() == out.read_bytes()

    refused = kino("cancel", video_id, *addr, check=False)
    assert refused.returncode == 2 and "FAILED_PRECONDITION" in refused.stderr
    kino("delete", video_id, *addr)
    gone = kino("get", video_id, *addr, check=False)
    assert gone.returncode == 2 and "NOT_FOUND" in gone.stderr


def test_bad_options_give_clear_errors(cluster):
    bad = kino("generate", "x", "--size", "100x64", "--address", cluster.grpc_address, check=False)
    assert bad.returncode == 2 and "INVALID_ARGUMENT" in bad.stderr and "size" in bad.stderr
    malformed = kino("generate", "x", "--size", "big", check=False)
    assert malformed.returncode == 2 and "WIDTHxHEIGHT" in malformed.stderr


def test_admin_tenants_keys_and_audit(tmp_path):
    state = ["--state-dir", str(tmp_path)]
    unmigrated = kino("admin", *state, "tenant", "list", check=False)
    assert unmigrated.returncode == 2 and "has no Kino schema" in unmigrated.stderr
    assert "kino admin migrate --database-url sqlite:///" in unmigrated.stderr
    assert "upgraded from an empty database to revision" in kino("admin", *state, "migrate").stdout
    assert "nothing to do" in kino("admin", *state, "migrate").stdout
    out = kino("admin", *state, "tenant", "create", "acme", "--priority", "7", "--max-queued", "4").stdout
    assert "acme" in out and "priority 7" in out and "max_queued 4" in out
    created = kino("admin", *state, "key", "create", "acme", "--user", "ann", "--label", "ci").stdout
    key_id, secret = created.split()[0], created.splitlines()[1]
    assert key_id.startswith("key_") and secret.startswith("kino_sk_")
    listed = kino("admin", *state, "key", "list").stdout
    assert key_id in listed and secret not in listed and "active" in listed
    kino("admin", *state, "key", "revoke", key_id)
    assert "revoked" in kino("admin", *state, "key", "list").stdout
    dup = kino("admin", *state, "tenant", "create", "acme", check=False)
    assert dup.returncode == 2 and "already exists" in dup.stderr


def test_run_in_process_moderates_marks_and_signs(tmp_path, capsys, monkeypatch):
    """`kino run` (no cluster) keeps the cluster's promises: moderated, watermarked, signed. The first run is the
    installed command in a process of its own; the others call the same `main` in this one (no second torch
    import per run)."""
    from kino.cli.main import main

    monkeypatch.setenv("KINO_PROVENANCE__DEV_CHAIN_DIR", str(tmp_path / "credentials"))
    out = tmp_path / "run.mp4"
    ran = subprocess.run(KINO + ["run", "a kite over dunes", "--seconds", "1", "--size", "64x64", "--steps", "2",
                                 "-o", str(out)], capture_output=True, text=True, timeout=300, env=dict(os.environ))
    assert ran.returncode == 0, ran.stdout + ran.stderr
    from engines.staged_pipeline import StageTimes

    times = StageTimes.parse(ran.stdout)  # "stages: encode 0.01 s | denoise ... | total ... s", the last line
    assert ran.stdout.strip().splitlines()[-1].startswith("stages: encode ")
    assert times.denoise > 0 and times.decode > 0 and not list(tmp_path.glob(".*unsigned*"))
    with av.open(str(out)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    assert frames and all(detect(f)[0] for f in frames)
    root = (tmp_path / "credentials" / "root.pem").read_bytes()
    assert verify(out, root).state == "Trusted"
    capsys.readouterr()
    assert main(["run", "a kite over dunes", "--seconds", "1", "--size", "64x64", "--steps", "6",
                 "--cache", "balanced", "-o", str(tmp_path / "cached.mp4")]) == 0
    cached = capsys.readouterr()
    assert StageTimes.parse(cached.out).denoise > 0, cached.out + cached.err
    assert main(["run", "a kite over dunes", "--seconds", "0.5", "--size", "128x128", "--steps", "2",
                 "--two-stage", "-o", str(tmp_path / "two.mp4")]) == 0
    two = capsys.readouterr()
    assert "two-stage: stage 1 " in two.out, two.out + two.err
    assert (probe(tmp_path / "two.mp4").width, probe(tmp_path / "two.mp4").height) == (128, 128)
    assert main(["run", "a gory decapitation scene", "-o", str(tmp_path / "no.mp4")]) == 2
    refused = capsys.readouterr().err
    assert "FAILED_PRECONDITION" in refused and "graphic_violence" in refused, refused
    assert not (tmp_path / "no.mp4").exists()


def test_run_and_serve_refuse_a_request_over_the_token_budget_alike(cluster, stub, tmp_path, capsys, monkeypatch):
    """`kino run` drives the server's own front door, dispatcher and denoise loop (serving/local_engine.py): a
    request no forward can hold (1080p, 20 s, 30 fps with guidance: ~311,000 latent tokens against the default
    budget of 262,144) is refused by both with the same status and message, before any job exists."""
    import grpc

    from kino.cli.main import main
    from kino_api.v1 import video_service_pb2 as pb

    with pytest.raises(grpc.RpcError) as served:
        stub.CreateVideo(pb.CreateVideoRequest(prompt="x", size="1920x1088", seconds=20, fps="30"), timeout=30)
    assert served.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    message = served.value.details()
    assert "(batching.max_tokens)" in message and message.startswith("size: 1920x1088 for 20 s needs")
    out = tmp_path / "big.mp4"
    monkeypatch.setenv("KINO_PROVENANCE__DEV_CHAIN_DIR", str(tmp_path / "credentials"))
    assert main(["run", "x", "--size", "1920x1088", "--seconds", "20", "--fps", "30", "-o", str(out)]) == 2
    assert capsys.readouterr().err.strip() == f"kino: error: INVALID_ARGUMENT: {message}"
    assert not out.exists()
