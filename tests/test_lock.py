"""The lock files agree with pyproject.toml, and the environment under test is the one dev.lock pins.

`make lock` (requirements/lock.py) writes the locks; a change to pyproject.toml's dependencies without it
fails here, naming the stale lock and the requirement a lock does not satisfy.
"""

from __future__ import annotations

import importlib.metadata
import importlib.util
import re
import sys
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

ROOT = Path(__file__).resolve().parent.parent


def _lock_module():
    spec = importlib.util.spec_from_file_location("kino_requirements_lock", ROOT / "requirements" / "lock.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


lock = _lock_module()


@pytest.mark.parametrize("which", lock.LOCKS, ids=lambda lk: lk.name)
def test_each_lock_was_made_from_this_pyproject(which):
    assert which.path.exists(), f"{which.path.name} is missing: run `make lock`"
    assert lock.written_fingerprint(which) == lock.fingerprint(which), (
        f"{which.path.name} was made from another pyproject.toml: run `make lock`")


@pytest.mark.parametrize("which", lock.LOCKS, ids=lambda lk: lk.name)
def test_each_lock_pins_every_requirement_exactly_and_satisfies_it(which):
    pinned = lock.pins(which.path)
    body = which.path.read_text()
    for text in lock.requirements_of(which):
        req = Requirement(text)
        name = lock.canonical(req.name)
        assert name in pinned, f"{which.path.name} does not pin {req.name} ({text})"
        version = Version(pinned[name])
        assert req.specifier.contains(version, prereleases=True), (
            f"{which.path.name} pins {req.name}=={version}, outside {text!r}")
    # every pin carries hashes (pip's --require-hashes installs nothing unhashed)
    entries = re.split(r"\n(?=[A-Za-z0-9])", body[body.index("\n", body.index(lock.FINGERPRINT)) + 1:])
    for entry in entries:
        if "==" in entry.split("\n", 1)[0]:
            assert "--hash=sha256:" in entry, f"{which.path.name}: {entry.splitlines()[0]} has no hash"


def test_the_locks_agree_with_each_other():
    """The image (runtime.lock) and the GPU hosts (gpu.lock) run the versions the suite tested."""
    dev = lock.pins(lock.HERE / "dev.lock")
    assert dev["torch"].endswith("+cpu"), "dev.lock must pin the CPU torch that lies on this machine's disk"
    for other, free in (("runtime.lock", set()), ("build.lock", set()), ("gpu.lock", {"torch"}),
                        ("gpu-dev.lock", {"torch"})):
        for name, version in lock.pins(lock.HERE / other).items():
            if name in dev and name not in free:
                assert version == dev[name], f"{other} pins {name}=={version}, dev.lock {dev[name]}"
    gpu, gpu_dev = lock.pins(lock.HERE / "gpu.lock"), lock.pins(lock.HERE / "gpu-dev.lock")
    assert Version(gpu["torch"]).public == Version(dev["torch"]).public and "+cpu" not in gpu["torch"]
    assert {n: v for n, v in gpu_dev.items() if n in gpu} == gpu, "gpu.lock and gpu-dev.lock differ"


def test_the_environment_under_test_is_dev_lock():
    """`make test` ran in a venv installed from dev.lock: every locked package at its locked version."""
    wrong = []
    for name, version in lock.pins(lock.HERE / "dev.lock").items():
        try:
            have = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            wrong.append(f"{name} (missing, locked {version})")
            continue
        if Version(have) != Version(version):
            wrong.append(f"{name} {have} (locked {version})")
    assert not wrong, "the venv differs from dev.lock: " + ", ".join(wrong) + " (rm -rf .venv && make test)"
