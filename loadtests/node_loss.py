"""Kino across nodes: a head and one node per worker group on this machine (Ray's multi-node harness), worker
nodes lost and replaced as KubeRay replaces a pod, and a count of what that cost.

    .venv/bin/python -m loadtests.node_loss --jobs 24 --losses 4          # the long scenario (~10 min here)
    .venv/bin/python -m loadtests.node_loss --checks --out /tmp/nodes     # the short checks `make test` runs

The long scenario runs `--jobs` jobs with no loss (the baseline), then the same jobs again while worker nodes
(text encoder, DiT, decoder, chosen at random) are removed at random moments and a fresh one added at once, and
prints the jobs completed, lost and finished twice, and both wall times. `--checks` (tests/cluster_lifecycle/
test_nodes.py) checks where each stage runs, loses the DiT node mid-denoise and the Decoder node mid-decode, and
downloads a video whose Decoder node has gone; it writes what it saw as JSON (`report.json` in `--out`).

`--serve-config` takes a Serve config file or the Helm chart rendered (`helm template kino deploy/helm/kino`):
the test deploys the chart's own serveConfigV2. `--object-store seaweedfs` keeps the MP4s in an S3 object store
(SeaweedFS on loopback) instead of the state directory; nodes then share nothing but Ray and the store.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import random
import shutil
import tempfile
import threading
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from serving.on_ray.cluster import DEFAULT_SERVE_CONFIG, LocalCluster

WORKER_GROUPS = ("text-encoder", "dit", "decoder")


@dataclass
class Outcome:
    """What became of a set of jobs, read from the job store (the head's)."""

    jobs: int
    completed: int
    lost: int  # accepted and not completed
    finished_twice: int  # more than one terminal event
    retried: int  # jobs a lost stage replica sent through the stages again
    steps_run: int = 0  # denoising steps the jobs' attempts computed
    steps_needed: int = 0  # the steps the jobs asked for (steps_run / steps_needed: the cost of the losses)
    resumed: int = 0  # jobs an attempt resumed from their checkpoint
    retries: list[str] = field(default_factory=list)  # what the job store says of each retry and resume
    not_completed: dict[str, int] = field(default_factory=dict)  # "status: code: message" -> jobs


@dataclass
class Run:
    outcome: Outcome
    wall_s: float
    losses: list[str] = field(default_factory=list)  # "dit at 12.3 s"


def start(state: Path, serve_config: Path, *, object_store: dict[str, Any] | None = None,
          num_cpus: int = 2, checkpoints: bool = True, checkpoint_seconds: float = 2.0) -> LocalCluster:
    """A head plus a node per worker group, Kino deployed from `serve_config` with local ports and paths (and
    keys not required: the chart requires them)."""
    from serving.on_ray.cluster import start_local_cluster

    storage = {"s3": object_store} if object_store else {}
    overrides = {"auth": {"required": False}, "queue": {"lease_seconds": 3, "heartbeat_seconds": 1},
                 "batching": {"measure_batches": False}, "storage": storage,
                 # A checkpoint every `checkpoint_seconds` of a job's denoising (the default's 30 s is sized for
                 # GPU steps).
                 "checkpoints": {"enabled": checkpoints, "every_seconds": checkpoint_seconds},
                 "model": {"tensorrt": {"engine_cache_dir": str(state / "engines")}}}
    return start_local_cluster(state_dir=state, serve_config=serve_config, overrides=overrides, nodes=True,
                               num_cpus=num_cpus, deploy_timeout_s=600)


def outcome(cluster: LocalCluster, ids: list[str], timeout_s: float = 900.0) -> Outcome:
    """Wait until every job in `ids` has ended, then count."""
    from serving.jobs import JobStatus, open_store

    store = open_store(f"sqlite:///{cluster.state_dir / 'jobs.db'}")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline and any(not store.get(i).status.terminal for i in ids):
            time.sleep(0.5)
        finals = [store.get(i) for i in ids]
        events = {i: store.events(i) for i in ids}
    finally:
        store.close()
    return Outcome(
        jobs=len(ids), completed=sum(j.status == JobStatus.COMPLETED for j in finals),
        lost=sum(j.status != JobStatus.COMPLETED for j in finals),
        finished_twice=sum(sum(e.status.terminal for e in ev) > 1 for ev in events.values()),
        retried=sum(any(e.message.startswith("retrying after") for e in ev) for ev in events.values()),
        steps_run=sum(j.denoise_steps_run for j in finals), steps_needed=sum(j.generation.steps for j in finals),
        resumed=sum(any(e.message.startswith("resumed at step") for e in ev) for ev in events.values()),
        retries=[f"{i}: {e.message}" for i, ev in events.items() for e in ev
                 if e.message.startswith(("retrying after", "resumed at step"))],
        not_completed=dict(Counter(f"{j.status.value}: {j.error_code}: {j.error_message}" for j in finals
                                   if j.status != JobStatus.COMPLETED)))


def submit(client: Any, n: int, *, size: str = "256x256", seconds: float = 1.0, steps: int = 12,
           tag: str = "job") -> list[str]:
    from kino_api.v1 import video_service_pb2 as pb

    return [client.create(pb.CreateVideoRequest(prompt=f"a red ball bouncing ({tag} {i})", size=size,
                                                seconds=seconds, steps=steps, seed=i)).id for i in range(n)]


def wait_for_stage(client: Any, video_id: str, stage: int, min_step: int = 0, timeout_s: float = 300.0) -> bool:
    """Watch `video_id` until it reaches `stage` (at `min_step` or later); False if it ended first."""
    for ev in client.watch(video_id, timeout=timeout_s):
        if ev.terminal:
            return False
        if ev.stage == stage and ev.step >= min_step:
            return True
    return False


def wait_for_checkpoint(cluster: LocalCluster, video_id: str, timeout_s: float = 300.0) -> bool:
    """Until the job store records a checkpoint of `video_id` (the head's record, as its dispatcher wrote it);
    False if the job ended first."""
    from serving.jobs import open_store

    store = open_store(f"sqlite:///{cluster.state_dir / 'jobs.db'}")
    try:
        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            job = store.get(video_id)
            if job.status.terminal:
                return False
            if job.checkpoint_step is not None and job.checkpoint_step < job.generation.steps:
                return True
            time.sleep(0.1)
        return False
    finally:
        store.close()


# -- the short checks ------------------------------------------------------------------------------------------
def checks(cluster: LocalCluster, out: Path) -> dict[str, Any]:
    import urllib.request

    from kino.client import KinoClient
    from kino_api.v1 import video_service_pb2 as pb

    assert cluster.nodes is not None
    report: dict[str, Any] = {"placement": cluster.placement()}
    with KinoClient(cluster.grpc_address, timeout=60) as client:
        # One video across nodes: encoded on the text-encoder node, denoised on the DiT node, its latents
        # fetched by the Decoder node, the MP4 stored and streamed back by the head.
        [first] = submit(client, 1, size="256x256", steps=4, tag="first")
        report["first"] = asdict(outcome(cluster, [first]))
        client.download(first, out / "first.mp4")

        # The DiT node lost mid-denoise (steps of ~0.25 s: the loss lands while the jobs denoise), a fresh one added.
        ids = submit(client, 2, size="512x512", steps=40, tag="dit")
        # Once its first checkpoint (every 0.5 s of denoising) is recorded, and while it still denoises.
        report["dit_mid_denoise"] = wait_for_checkpoint(cluster, ids[0])
        cluster.nodes.replace("dit")
        report["dit_loss"] = asdict(outcome(cluster, ids))

        # The Decoder node lost mid-decode (a large frame: a decode of seconds), a fresh one added.
        ids = submit(client, 2, size="768x512", seconds=2.0, steps=2, tag="decoder")
        report["decoder_mid_decode"] = wait_for_stage(client, ids[0], pb.STAGE_DECODING)
        cluster.nodes.replace("decoder")
        report["decoder_loss"] = asdict(outcome(cluster, ids))

        # A video decoded on a node that has gone since (the first one's Decoder node, just lost): the head
        # streams it from the store.
        client.download(first, out / "after_node_gone.mp4")
        report["after_node_gone"] = first
        with urllib.request.urlopen(f"{cluster.rest_url}/videos/{first}/content", timeout=60) as rest:
            (out / "after_node_gone_rest.mp4").write_bytes(rest.read())  # the other protocol
        report["placement_after"] = cluster.placement()
    return report


# -- the long scenario -----------------------------------------------------------------------------------------
def run_jobs(cluster: LocalCluster, jobs: int, loss_at: list[float], rng: random.Random, tag: str, *,
             size: str, steps: int) -> Run:
    """`jobs` jobs; a worker node (of a group chosen at random) removed and replaced at each of `loss_at`
    (seconds from the first submit) while they run."""
    from kino.client import KinoClient

    assert cluster.nodes is not None
    with KinoClient(cluster.grpc_address, timeout=60) as client:
        started = time.monotonic()
        ids = submit(client, jobs, size=size, steps=steps, tag=tag)
        lost: list[str] = []
        done = threading.Event()
        result: list[Outcome] = []
        waiter = threading.Thread(target=lambda: (result.append(outcome(cluster, ids)), done.set()))
        waiter.start()
        for at in sorted(loss_at):
            if done.wait(max(0.0, at - (time.monotonic() - started))):
                break
            group = rng.choice(WORKER_GROUPS)
            cluster.nodes.replace(group)
            lost.append(f"{group} at {time.monotonic() - started:.1f} s")
        waiter.join()
        return Run(result[0], time.monotonic() - started, lost)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--jobs", type=int, default=24, help="jobs per run (default 24)")
    ap.add_argument("--losses", type=int, default=4, help="worker nodes lost during the second run (default 4)")
    ap.add_argument("--size", default="512x512", help="each job's size (default 512x512)")
    ap.add_argument("--steps", type=int, default=24, help="each job's denoising steps (default 24)")
    ap.add_argument("--seed", type=int, default=0, help="where and when nodes are lost (default 0)")
    ap.add_argument("--serve-config", type=Path, default=DEFAULT_SERVE_CONFIG,
                    help="a Serve config or a rendered Helm chart (default: deploy/serve/kino.yaml)")
    ap.add_argument("--object-store", choices=("directory", "seaweedfs"), default="directory",
                    help="where MP4s go: the state directory, or a SeaweedFS S3 server started here")
    ap.add_argument("--checkpoints", choices=("on", "off"), default="on",
                    help="resumable denoising (a checkpoint every 2 s of a job's denoising), or off: a lost node's "
                         "jobs start over (default on)")
    ap.add_argument("--s3", help="storage.s3 settings as JSON (a running S3 server: the tests pass theirs)")
    ap.add_argument("--checks", action="store_true", help="the short checks instead of the long scenario")
    ap.add_argument("--out", type=Path, help="where --checks writes report.json and the MP4s it downloads")
    ap.add_argument("--cpus", type=int, default=2, help="logical CPUs of each node (default 2)")
    args = ap.parse_args()

    base = Path(tempfile.mkdtemp(prefix="kino-nodes-"))
    with contextlib.ExitStack() as stack:
        object_store = json.loads(args.s3) if args.s3 else None
        if args.object_store == "seaweedfs" and object_store is None:
            from loadtests.local_servers import seaweedfs

            object_store = stack.enter_context(seaweedfs(base / "seaweedfs", bucket="kino-videos")).storage_settings()
        stack.callback(shutil.rmtree, base, ignore_errors=True)
        cluster = start(base / "state", args.serve_config, object_store=object_store, num_cpus=args.cpus,
                        checkpoints=args.checkpoints == "on",
                        # The checks' jobs are short: a checkpoint every half second lands well before their end.
                        checkpoint_seconds=0.5 if args.checks else 2.0)
        stack.callback(cluster.shutdown)
        if args.checks:
            out = args.out or base / "out"
            out.mkdir(parents=True, exist_ok=True)
            report = checks(cluster, out)
            (out / "report.json").write_text(json.dumps(report, indent=2))
            print(json.dumps(report, indent=2))
            return
        rng = random.Random(args.seed)
        baseline = run_jobs(cluster, args.jobs, [], rng, "baseline", size=args.size, steps=args.steps)
        # The losses at random moments within the time the same jobs took without any.
        loss_at = [rng.uniform(0.1, 0.8) * baseline.wall_s for _ in range(args.losses)]
        lossy = run_jobs(cluster, args.jobs, loss_at, rng, "losses", size=args.size, steps=args.steps)
        print(f"checkpoints: {'every 2 s of denoising' if args.checkpoints == 'on' else 'off'}")
        print("| run | jobs | completed | lost | finished twice | sent through again | resumed | denoise steps run "
              "/ needed | nodes lost | wall s |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |")
        for name, run in (("no loss", baseline), ("losses", lossy)):
            o = run.outcome
            print(f"| {name} | {o.jobs} | {o.completed} | {o.lost} | {o.finished_twice} | {o.retried} | "
                  f"{o.resumed} | {o.steps_run} / {o.steps_needed} = {o.steps_run / max(1, o.steps_needed):.3f} | "
                  f"{', '.join(run.losses) or '-'} | {run.wall_s:.1f} |")
            for why, n in o.not_completed.items():
                print(f"- {n} x {why}")
        print(f"wall time with losses / without: {lossy.wall_s / baseline.wall_s:.2f}x")


if __name__ == "__main__":
    main()
