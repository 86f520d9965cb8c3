"""Write the lock files from pyproject.toml (`make lock`); `--check` says whether they are current.

Five locks, each an exact version and the sha256 hashes of every file pip may install, for every
direct and transitive dependency (pip-tools' pip-compile, run by pip itself so it sees what pip sees):

- `dev.lock`: what `make demo`, `make test` and `.ci/run` install: Kino, its `dev` extra, and the
  build backend for the editable install. torch is the CPU build (`2.13.0+cpu`), which pip finds on
  this kind of machine's local disk (its `find-links`); PyPI's `torch==2.13.0` is a CUDA build.
- `runtime.lock`: Kino alone (the CPU image), at the versions of `dev.lock`.
- `build.lock`: the build backend alone (setuptools, wheel), at the versions of `dev.lock`: what an image's
  build stage installs Kino with, and removes again.
- `gpu.lock`: Kino with the `gpu` extra for NVIDIA hosts and the GPU image, resolved against the package
  index alone so torch is PyPI's CUDA build; everything else at the versions of `dev.lock`.
- `gpu-dev.lock`: the same with the `dev` extra, for a GPU host that runs the suite (`pytest -m gpu`).

  In both, TensorRT
  is the exception: its libraries are wheels on NVIDIA's own package index only (PyPI holds a stub
  that fetches them from there at install time), which this machine cannot reach. So the GPU locks leave
  `tensorrt` out unless `KINO_LOCK_NVIDIA_INDEX` names that index (set it where it is reachable and
  `make lock` pins TensorRT with its hashes too); without it the GPU host installs TensorRT after the
  lock, from NVIDIA's index (README, "GPU engines").

Each lock's header carries a fingerprint of the pyproject.toml sections it was made from; the suite
(tests/test_lock.py) fails when pyproject.toml changed and the locks did not.

    python requirements/lock.py            # regenerate all five (needs the package index), as `make lock`
    python requirements/lock.py --check    # exit 1 naming any lock whose fingerprint is stale
    python requirements/lock.py --keep --only dev --only gpu-dev   # a new dev tool, every other version kept
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
HERE = ROOT / "requirements"
FINGERPRINT = "# pyproject-sha256: "


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...]
    local_wheels: bool  # resolve with this machine's pip config (the CPU torch on disk), or the index alone
    build_deps: bool = False  # pin the build backend too (an editable install without build isolation)
    off_index: tuple[str, ...] = ()  # requirements whose files are not on the package index (see above)
    project: bool = True  # Kino's own dependencies (False: only the build backend)

    @property
    def path(self) -> Path:
        return HERE / f"{self.name}.lock"


LOCKS = (
    Lock("dev", ("dev",), local_wheels=True, build_deps=True),
    Lock("runtime", (), local_wheels=True),
    Lock("gpu", ("gpu",), local_wheels=False, off_index=("tensorrt",)),
    Lock("gpu-dev", ("gpu", "dev"), local_wheels=False, build_deps=True, off_index=("tensorrt",)),
    Lock("build", (), local_wheels=True, build_deps=True, project=False),
)


def pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def requirements_of(lock: Lock, project: dict | None = None) -> list[str]:
    """The requirement strings a lock is made from: the dependencies, its extras, the build system's."""
    project = project or pyproject()
    reqs = list(project["project"]["dependencies"]) if lock.project else []
    for extra in lock.extras:
        reqs += project["project"]["optional-dependencies"][extra]
    if lock.build_deps:
        reqs += project["build-system"]["requires"]
    return [r for r in reqs if canonical(re.split(r"[^A-Za-z0-9._-]", r, maxsplit=1)[0]) not in left_out(lock)]


def left_out(lock: Lock) -> set[str]:
    """The requirements this lock leaves out here (TensorRT without NVIDIA's index)."""
    return set() if os.environ.get("KINO_LOCK_NVIDIA_INDEX") else {canonical(n) for n in lock.off_index}


def fingerprint(lock: Lock, project: dict | None = None) -> str:
    blob = json.dumps({"requirements": requirements_of(lock, project),
                       "requires-python": (project or pyproject())["project"]["requires-python"]}, sort_keys=True)
    return hashlib.sha256(blob.encode()).hexdigest()


def written_fingerprint(lock: Lock) -> str | None:
    if not lock.path.exists():
        return None
    for line in lock.path.read_text().splitlines():
        if line.startswith(FINGERPRINT):
            return line[len(FINGERPRINT):].strip()
    return None


def pins(path: Path) -> dict[str, str]:
    """name (canonical) -> exact version, as a lock file pins them."""
    out = {}
    for line in path.read_text().splitlines():
        m = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==([^\s;\\]+)", line)
        if m:
            out[canonical(m.group(1))] = m.group(2)
    return out


def canonical(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _compile(lock: Lock, constraints: Path | None) -> None:
    env = dict(os.environ)
    if not lock.local_wheels:
        # The package index alone: no machine config, so no local wheels and no CPU torch.
        env.update(PIP_CONFIG_FILE=os.devnull)
        for key in ("PIP_FIND_LINKS", "PIP_EXTRA_INDEX_URL", "PIP_CONSTRAINT"):
            env.pop(key, None)
        if lock.off_index and os.environ.get("KINO_LOCK_NVIDIA_INDEX"):
            env["PIP_EXTRA_INDEX_URL"] = os.environ["KINO_LOCK_NVIDIA_INDEX"]
    with tempfile.TemporaryDirectory() as tmp:
        source = Path(tmp) / "requirements.in"
        lines = requirements_of(lock)
        if constraints is not None:
            lines = [f"-c {constraints}", *lines]
        source.write_text("\n".join(lines) + "\n")
        cmd = [sys.executable, "-m", "piptools", "compile", "--quiet", "--generate-hashes", "--allow-unsafe",
               "--strip-extras", "--no-emit-find-links", "--no-emit-index-url", "--no-emit-trusted-host",
               "--no-header", "--rebuild", "-o", str(lock.path), str(source)]
        subprocess.run(cmd, check=True, env=env, cwd=ROOT)
    body = lock.path.read_text()
    body = re.sub(r"^#\s+-c .*\n|^\s+#\s+-c .*\n", "", body, flags=re.M)
    # A "via" left with one source once the constraints' line is gone reads as pip-compile writes one: on one line.
    body = re.sub(r"^(\s+)# via\n\1#   (.+)\n(?!\1#   )", r"\1# via \2\n", body, flags=re.M)
    body = body.replace(str(source), "pyproject.toml")
    header = (f"# {lock.name}.lock: written by `make lock` (requirements/lock.py) from pyproject.toml;\n"
              f"# extras: {', '.join(lock.extras) or 'none'}. Do not edit by hand.\n")
    if left_out(lock):
        header += (f"# Not in this lock: {', '.join(sorted(left_out(lock)))} (wheels on NVIDIA's index only; "
                   "see requirements/lock.py).\n")
    header += f"{FINGERPRINT}{fingerprint(lock)}\n"
    lock.path.write_text(header + body)


def _constraints_from(path: Path, drop: set[str]) -> Path:
    """The versions of a lock as a constraints file (no hashes; `drop` left free)."""
    out = Path(tempfile.mkstemp(suffix=".txt")[1])
    out.write_text("".join(f"{n}=={v}\n" for n, v in sorted(pins(path).items()) if n not in drop))
    return out


def write_all(only: set[str] | None = None, keep: bool = False) -> None:
    dev, runtime, gpu, gpu_dev, build = LOCKS
    if not only or "dev" in only:
        # keep: at dev.lock's versions, so only what pyproject.toml newly asks for is resolved (no upgrade rides in)
        _compile(dev, _constraints_from(dev.path, drop=set()) if keep and dev.path.exists() else None)
    if not only or "runtime" in only:
        _compile(runtime, _constraints_from(dev.path, drop=set()))
    if not only or "gpu-dev" in only:  # CUDA torch brings its own nvidia-* and triton; the rest follows dev.lock
        _compile(gpu_dev, _constraints_from(dev.path, drop={"torch"}))
    if not only or "gpu" in only:
        _compile(gpu, _constraints_from(gpu_dev.path, drop=set()))
    if not only or "build" in only:
        _compile(build, _constraints_from(dev.path, drop=set()))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="requirements/lock.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--check", action="store_true", help="only say whether every lock matches pyproject.toml")
    ap.add_argument("--only", action="append", choices=[lk.name for lk in LOCKS],
                    help="rewrite only this lock (repeatable; the others follow dev.lock's versions)")
    ap.add_argument("--keep", action="store_true",
                    help="keep every version dev.lock pins (the other locks follow it anyway): resolve only what "
                         "pyproject.toml added since, e.g. a new test tool, without upgrading the rest")
    args = ap.parse_args(argv)
    if args.check:
        stale = [lk.path.name for lk in LOCKS if written_fingerprint(lk) != fingerprint(lk)]
        if stale:
            print(f"stale: {', '.join(stale)} (pyproject.toml changed since `make lock`)", file=sys.stderr)
            return 1
        print("locks match pyproject.toml")
        return 0
    write_all(set(args.only or ()), keep=args.keep)
    return 0


if __name__ == "__main__":
    sys.exit(main())
