"""The layering rules of docs/architecture.md, as tests: each fails naming the file and the import that breaks it.

Floors, bottom up: engines (models and tensors) < serving (the server; Ray only in its deployments) <
kino.client, loadtests, training < kino.cli (the top floor). Imports are read from the source (every
`import`, lazy ones inside functions too; `if TYPE_CHECKING:` blocks are not imports at run time).
"""

from __future__ import annotations

import ast
import re
from functools import cache
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("engines", "serving", "kino", "kino_api", "loadtests", "training")


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST, package: str) -> set[str]:
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:  # relative: resolve against the importing package
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                found.add(".".join(base + ([node.module] if node.module else [])))
            elif node.module:
                found.add(node.module)
                found.update(f"{node.module}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


@cache
def sources() -> dict[str, tuple[set[str], str]]:
    """repository path -> (modules it imports, its text), for every Python file of the packages."""
    out = {}
    for pkg in PACKAGES:
        for path in sorted((ROOT / pkg).rglob("*.py")):
            rel = path.relative_to(ROOT).as_posix()
            if rel.startswith("kino_api/v1/"):
                continue  # generated
            text = path.read_text()
            package = ".".join(path.relative_to(ROOT).with_suffix("").parts[:-1])
            out[rel] = (_imports(ast.parse(text, rel), package), text)
    return out


def _breaks(files: list[str], forbidden: tuple[str, ...]) -> list[str]:
    return [f"{f} imports {m}" for f in files for m in sorted(sources()[f][0])
            if any(m == b or m.startswith(b + ".") for b in forbidden)]


def _files(prefix: str = "", *, but: tuple[str, ...] = ()) -> list[str]:
    return [f for f in sources() if f.startswith(prefix) and not f.startswith(but)]


TRANSPORT = ("ray", "grpc", "grpc_health", "grpc_reflection", "google.protobuf", "fastapi", "starlette", "uvicorn")


@pytest.mark.parametrize("rule, files, forbidden", [
    ("engines know models and tensors: no Ray, no transport, nothing above them",
     _files("engines/"), (*TRANSPORT, "serving", "kino", "loadtests", "training")),
    ("only the front door and the API clients speak the generated protocol",
     _files("", but=("serving/frontend/", "kino/client.py", "kino/cli/", "loadtests/")), ("kino_api",)),
    ("training stands on the engines alone: no server, no Ray, no CLI or client, no transport",
     _files("training/"), (*TRANSPORT, "serving", "kino", "loadtests")),
    ("the server is below its clients, the load tests and the CLI",
     _files("serving/"), ("loadtests", "kino.cli", "kino.client", "training")),
    ("only protocol adapters import protocol types",
     _files("serving/", but=("serving/frontend/",)), tuple(t for t in TRANSPORT if t != "ray")),
    ("Ray stays in the deployments and the local cluster",
     _files("serving/", but=("serving/deployments/", "serving/on_ray/", "serving/app.py")),
     ("ray",)),
    ("the scheduler and the denoise loop import no Ray and no torch",
     ["serving/data_plane/scheduler.py", "serving/data_plane/denoise_loop.py"], ("ray", "torch", "engines.denoiser")),
    ("the control plane moves jobs and events, never tensors: no torch, no Ray, no model engine, no data plane "
     "beyond the stage contract",
     _files("serving/control_plane/"),
     ("ray", "torch", "engines.denoiser", "engines.decoder", "engines.model_loader", "engines.text_encoder",
      "serving.data_plane.denoise_loop", "serving.data_plane.scheduler", "serving.data_plane.rendering",
      "serving.data_plane.local_stages", "serving.frontend")),
    ("the data plane takes requests and gives latents and MP4s: it knows no dispatcher, progress feed, job store "
     "or protocol",
     _files("serving/data_plane/"),
     ("ray", "serving.control_plane", "serving.jobs.sql_store", "serving.db", "serving.frontend", "serving.videos")),
])
def test_layer(rule, files, forbidden):
    assert files, f"no files for rule {rule!r}"
    assert not _breaks(files, forbidden), f"{rule}:\n  " + "\n  ".join(_breaks(files, forbidden))


def test_the_benchmark_stages_never_reach_the_server():
    """PreparedMp4Stages (loadtests/prepared_stages.py: stages that push steps and return one prepared MP4, the
    control-plane benchmark's dummy weights) is named nowhere in the server, not even in a string (an import by
    name): the import rule above covers `import`, this covers the rest."""
    offenders = [f for f in _files("serving/") if re.search(r"prepared_stages|PreparedMp4Stages", sources()[f][1])]
    assert not offenders, offenders


def test_rays_private_apis_live_in_one_module():
    private = re.compile(r"ray(\.serve)?\._private|_to_object_ref_gen|\b_temp_dir=|\b_metrics_export_port=")
    offenders = [f"{f}: {m.group()}" for f, (_mods, text) in sources().items() if f != "serving/on_ray/compat.py"
                 for m in private.finditer(text)]
    assert not offenders, offenders


def test_deployments_are_thin_wrappers():
    sizes = {f: len(sources()[f][1].splitlines()) for f in _files("serving/deployments/")}
    assert sizes and not {f: n for f, n in sizes.items() if n > 60}, sizes


@pytest.mark.parametrize("module", ["serving.deployments.dispatcher", "serving.deployments.progress_hub"])
def test_control_plane_replicas_load_no_model_libraries(module):
    """A Dispatcher or ProgressHub replica holds no model: importing torch, diffusers or transformers there
    would cost every replica seconds of start-up and a CPU pod the size of a model image."""
    import subprocess
    import sys

    probe = (f"import sys, {module}; print(sorted(m for m in ('torch', 'diffusers', 'transformers', 'accelerate')"
             " if m in sys.modules))")
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    assert loaded.stdout.strip() == "[]", f"{module} loads {loaded.stdout.strip()}"


def test_a_frontend_replica_loads_no_model_libraries(tmp_path):
    """A Frontend replica checks requests against the model (sizes, the token budget of one forward) from the
    config alone (engines/geometry.py): opening its domain and front door imports no torch or model classes."""
    import subprocess
    import sys

    probe = f"""
import asyncio, sys
import serving.deployments.frontend
from serving.config import load_config
from serving.frontend.front_door import FrontDoor
from serving.metrics import NoMetrics
from serving.migrations import upgrade
from serving.services import DomainServices
from serving.videos import CreateVideo, DispatcherLink

class Link(DispatcherLink):
    async def wake(self): pass
    async def cancel(self, job_id): pass

async def main():
    cfg = load_config({{"grpc": {{"port": 0}}, "rest": {{"port": 0}},
                        "storage": {{"database_url": "sqlite:///{tmp_path}/jobs.db",
                                    "artifacts_dir": "{tmp_path}/artifacts"}}}}, environ={{}})
    upgrade(cfg.storage.database_url)
    services = DomainServices.open(cfg, Link(), NoMetrics())
    door = await FrontDoor.start(cfg, services, NoMetrics())
    job, _ = await services.videos.create(services.accounts.local_principal(), CreateVideo(prompt="a cat"))
    await door.stop()
    print(job.generation.num_frames, sorted(m for m in ("torch", "diffusers", "transformers", "accelerate")
                                            if m in sys.modules))

asyncio.run(main())
"""
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.split(maxsplit=1)[1].strip() == "[]", f"a Frontend loads {loaded.stdout.strip()}"


def test_building_the_app_loads_no_model_libraries():
    """Serve builds the app (serving/app.py) in a process of its own at every deploy and upgrade, and the
    Frontend, Dispatcher and ProgressHub replicas import their deployment's module: the model libraries load
    only in the replicas that run a model, when they start."""
    import subprocess
    import sys

    probe = """
import sys
from serving.app import build_app
build_app({"config": {}})
print(sorted(m for m in ("torch", "diffusers", "transformers", "accelerate") if m in sys.modules))
"""
    loaded = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert loaded.returncode == 0, loaded.stderr
    assert loaded.stdout.strip() == "[]", f"building the app loads {loaded.stdout.strip()}"


def test_no_replica_outside_the_head_group_opens_the_job_database(tmp_path, monkeypatch):
    """Worker nodes (text encoder, DiT, decoder pools) never touch the control plane's state: their replicas start,
    serve and report their autoscaling figures with the database refused (`KINO_NODE_GROUP`, as the chart and
    `kino serve --nodes` set it on worker nodes). The backlog comes from the head through a Serve handle (here a
    stand-in for the ProgressHub's handle: this test is about what the worker replica opens, not about Serve)."""
    import asyncio

    from serving.db import NODE_GROUP_ENV, Database, WorkerNodeDatabase
    from serving.deployments.decoder import DecoderDeployment
    from serving.deployments.denoiser import DenoiserDeployment
    from serving.deployments.text_encoder import TextEncoderDeployment

    class HubHandleStandIn:  # the one call a Denoiser makes to the head
        class backlog:  # noqa: N801 - a handle's method
            @staticmethod
            async def remote() -> dict[str, int]:
                return {"queued": 3, "in_progress": 1}

    config = {"storage": {"database_url": f"sqlite:///{tmp_path}/jobs.db", "artifacts_dir": f"{tmp_path}/a"}}
    monkeypatch.setenv(NODE_GROUP_ENV, "dit")
    with pytest.raises(WorkerNodeDatabase, match="only the head's replicas"):
        Database(config["storage"]["database_url"])
    denoiser = DenoiserDeployment.func_or_class(config, HubHandleStandIn())
    stats = asyncio.run(denoiser.record_autoscaling_stats())
    assert (stats["queued"], stats["in_progress"], stats["per_replica"]) == (3, 1, 32)
    assert asyncio.run(denoiser.max_tokens()) == denoiser.loop.scheduler.max_tokens
    monkeypatch.setenv(NODE_GROUP_ENV, "decoder")
    DecoderDeployment.func_or_class(config)
    monkeypatch.setenv(NODE_GROUP_ENV, "text-encoder")
    TextEncoderDeployment.func_or_class(config)
    assert not (tmp_path / "jobs.db").exists()
