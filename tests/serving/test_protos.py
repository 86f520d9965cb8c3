"""Generated code matches protos/: regenerated here with the locked grpcio-tools and compared byte for byte
(`make protos`); tests/test_lock.py holds the venv to the lock, so this is the lock's generator."""

import filecmp
import importlib.metadata
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_generated_code_is_up_to_date(tmp_path):
    protos = sorted(str(p.relative_to(ROOT / "protos")) for p in (ROOT / "protos").rglob("*.proto"))
    subprocess.run([sys.executable, "-m", "grpc_tools.protoc", "-I", "protos", f"--python_out={tmp_path}",
                    f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos], cwd=ROOT, check=True)
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py*"))
    assert generated, "protoc produced nothing"
    for rel in generated:
        assert filecmp.cmp(tmp_path / rel, ROOT / rel, shallow=False), (
            f"{rel} differs from what grpcio-tools {importlib.metadata.version('grpcio-tools')} generates: "
            "run `make protos`")
