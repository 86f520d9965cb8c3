"""`kino run --lora-dir DIR --lora NAME[:SCALE]`, in this process (LocalEngine: no cluster): the adapter changes
the video and the signed manifest names it; an unknown name is refused as the server refuses it."""

from __future__ import annotations

import av
import numpy as np
import pytest

from kino.cli.main import main
from kino.cli.options import lora_option
from serving.provenance.credentials import ASSERTION, verify


@pytest.fixture(scope="module")
def lora_dir(tmp_path_factory):
    """A tiny adapter `a` for the tiny preset's DiT (tests/engines/lora_cases.py), written diffusers' way."""
    from engines.config import preset
    from engines.model_loader import load_components
    from tests.engines.lora_cases import write_adapters

    transformer = load_components(preset("tiny"), ["transformer"]).transformer
    return write_adapters(tmp_path_factory.mktemp("loras"), transformer, ("a",))


def _frames(path):
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]).astype(np.int16)


def test_lora_option_parses_a_name_and_an_optional_scale():
    assert lora_option("a") == ("a", 1.0)
    assert lora_option("watercolor:0.8") == ("watercolor", 0.8)
    assert lora_option("x:-1") == ("x", -1.0)


def test_run_applies_an_adapter_and_refuses_an_unknown_one(lora_dir, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("KINO_PROVENANCE__DEV_CHAIN_DIR", str(tmp_path / "credentials"))
    common = ["a kite over dunes", "--seconds", "0.5", "--size", "64x64", "--steps", "2", "--seed", "7",
              "--lora-dir", str(lora_dir)]
    assert main(["run", *common, "--lora", "a:0.8", "-o", str(tmp_path / "lora.mp4")]) == 0
    assert "LoRA adapters: a at 0.8" in capsys.readouterr().out
    root = (tmp_path / "credentials" / "root.pem").read_bytes()
    signed = verify(tmp_path / "lora.mp4", root)
    assert signed.state == "Trusted" and signed.assertion(ASSERTION)["loras"] == [{"name": "a", "scale": 0.8}]
    assert main(["run", *common, "-o", str(tmp_path / "plain.mp4")]) == 0
    capsys.readouterr()
    with_lora, plain = _frames(tmp_path / "lora.mp4"), _frames(tmp_path / "plain.mp4")
    assert verify(tmp_path / "plain.mp4", root).assertion(ASSERTION)["loras"] == []
    assert with_lora.shape == plain.shape and np.abs(with_lora - plain).max() > 8  # the adapter changed the video

    assert main(["run", *common, "--lora", "zz", "-o", str(tmp_path / "no.mp4")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == f"kino: error: INVALID_ARGUMENT: loras[0].name='zz' is not allowed: one of a (the adapters in " \
                  f"{lora_dir})"
    assert not (tmp_path / "no.mp4").exists()
