"""Servers the load tests and the test suite start for themselves on a fresh machine: PostgreSQL (the
Debian package), on loopback, in a private directory. An install that fails raises."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path


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


def postgres_bin(name: str) -> str:
    versions = sorted(Path("/usr/lib/postgresql").glob("*/bin"), reverse=True) if Path("/usr/lib/postgresql").is_dir() \
        else []
    search = tuple(str(v / name) for v in versions)
    path = ensure_binary(name, "postgresql", search)
    if path == shutil.which(name) and search:  # prefer the versioned server binaries over wrappers
        return next((p for p in search if Path(p).is_file()), path)
    return path


class PostgresServer:
    """A private PostgreSQL cluster on loopback for the tests (initdb in a temp dir, a free port)."""

    def __init__(self, base: Path, port: int) -> None:
        self.base, self.port = base, port
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
        self._run(self.pg_ctl, "-D", str(self.data), "-l", str(self.base / "server.log"), "-w", "-o",
                  f"-p {self.port} -k {self.socket_dir} -c listen_addresses=127.0.0.1 -c fsync=off", "start")
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
