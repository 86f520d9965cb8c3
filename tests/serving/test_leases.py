"""Leases across processes: a dispatcher frozen past its lease (SIGSTOP) loses the job to another, and
when it wakes (SIGCONT) its late writes are refused; the job finishes once. Real processes, a real
SQLite database, the real engines; no Ray."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from engines.params import GenerationRequest, params_to_dict
from serving.jobs import JobStatus, NewJob, Stage, open_store
from tests.tools import migrated

WORKER = Path(__file__).with_name("lease_worker.py")
ROOT = Path(__file__).resolve().parents[2]


def _start(db_url: str, artifacts: Path, owner: str, log: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen([sys.executable, str(WORKER), db_url, str(artifacts), owner], stdout=subprocess.PIPE,
                            stderr=open(log, "w"), env=env, text=True)
    assert proc.stdout.readline().strip() == "ready", log.read_text()
    return proc


def _wait(predicate, timeout: float, what: str):
    deadline = time.monotonic() + timeout
    while not (value := predicate()):
        if time.monotonic() > deadline:
            raise TimeoutError(what)
        time.sleep(0.02)
    return value


def _freeze_outside_a_write(pid: int, db_path: Path) -> None:
    """SIGSTOP `pid` at a moment it holds no write transaction. SQLite has one writer: a process frozen inside
    a write holds the whole database's lock until it runs again, and no other dispatcher (nor this test) can
    write at all; the scenario here is a dispatcher frozen with a lease it cannot renew, not with SQLite's lock."""
    import sqlite3

    for _ in range(200):
        os.kill(pid, signal.SIGSTOP)
        probe = sqlite3.connect(db_path, timeout=0.2, isolation_level=None)
        try:
            probe.execute("BEGIN IMMEDIATE")
            probe.execute("ROLLBACK")
            return
        except sqlite3.OperationalError:  # frozen mid-write: let it finish and try again
            os.kill(pid, signal.SIGCONT)
            time.sleep(0.02)
        finally:
            probe.close()
    raise AssertionError("the dispatcher was inside a write every time it was frozen")


def test_a_dispatcher_paused_past_its_lease_is_fenced_and_the_job_finishes_once(tmp_path, tiny_config):
    db_url, artifacts = migrated(f"sqlite:///{tmp_path}/jobs.db"), tmp_path / "artifacts"
    store = open_store(db_url)
    params = GenerationRequest(prompt="a lighthouse", seed=3, steps=100).validated(tiny_config)
    store.create(NewJob(id="video_1", tenant="t", model="m", priority=5, params=params_to_dict(params),
                        request_hash="1"), max_queued=10)
    first = _start(db_url, artifacts, "first", tmp_path / "first.log")
    second = None
    try:
        _wait(lambda: store.get("video_1").stage == Stage.DENOISING, 60, "the first dispatcher to start denoising")
        _freeze_outside_a_write(first.pid, tmp_path / "jobs.db")  # frozen mid-job: a lease it cannot renew
        frozen_at = store.get("video_1")
        assert frozen_at.lease_owner == "first"
        second = _start(db_url, artifacts, "second", tmp_path / "second.log")
        done = _wait(lambda: (j := store.get("video_1")).status.terminal and j, 120, "the second to finish it")
        assert done.status == JobStatus.COMPLETED and done.attempts == 2
        os.kill(first.pid, signal.SIGCONT)  # wakes up believing it still runs the job
        _wait(lambda: "no longer" in (tmp_path / "first.log").read_text() or
              "lease lost" in (tmp_path / "first.log").read_text(), 30, "the first to notice")
        time.sleep(0.5)
        after = store.get("video_1")
        assert after.status == JobStatus.COMPLETED and after.artifact == done.artifact  # nothing overwritten
        messages = [e.message for e in store.events("video_1")]
        assert messages.count("completed") == 1
        assert "requeued: the lease of dispatcher first expired" in messages
    finally:
        for proc in (first, second):
            if proc is not None:
                os.kill(proc.pid, signal.SIGCONT)
                proc.kill()
                proc.wait(10)
        store.close()
