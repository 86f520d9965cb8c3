"""Kino across nodes: the Helm chart's own serveConfigV2 on a head plus one Ray node per worker group (Ray's
multi-node harness on this machine), MP4s in a real S3 object store (SeaweedFS), worker nodes lost as a
machine is lost and replaced as KubeRay replaces a pod.

The cluster runs in its own process (`python -m loadtests.node_loss --checks`, the short version of the
node-loss script): a process is the driver of one Ray cluster, and this session's other tests share theirs.
What it saw comes back as JSON and the MP4s it downloaded; the bucket is this test's.
"""

from __future__ import annotations

import json
import subprocess
import sys

import av
import obstore
import pytest
import yaml
from obstore.store import S3Store

from tests.tools import ROOT, helm

STAGE_POOLS = {"Frontend": ["head"], "Dispatcher": ["head", "head"], "ProgressHub": ["head"],
               "TextEncoder": ["text-encoder"], "Denoiser": ["dit"], "Decoder": ["decoder"]}


@pytest.fixture(scope="module")
def nodes_run(tmp_path_factory, s3_server):
    work = tmp_path_factory.mktemp("nodes")
    rendered = subprocess.run([helm(), "template", "kino", str(ROOT / "deploy" / "helm" / "kino")],
                              capture_output=True, text=True, check=True).stdout
    (work / "chart.yaml").write_text(rendered)
    s3 = {**s3_server.storage_settings(), "prefix": "nodes-test"}
    out = work / "out"
    run = subprocess.run([sys.executable, "-m", "loadtests.node_loss", "--checks", "--serve-config",
                          str(work / "chart.yaml"), "--s3", json.dumps(s3), "--out", str(out)],
                         cwd=ROOT, capture_output=True, text=True, timeout=1200)
    assert run.returncode == 0, run.stderr[-6000:]
    return json.loads((out / "report.json").read_text()), out, rendered


def _check_mp4(path):
    with av.open(str(path)) as f:
        kinds = {s.type for s in f.streams}
        frames = sum(1 for _ in f.decode(video=0))
    assert kinds == {"video", "audio"} and frames > 0, (kinds, frames)


def test_every_stage_runs_on_its_node_pool_from_the_charts_own_serve_config(nodes_run):
    report, _, rendered = nodes_run
    [service] = [d for d in yaml.safe_load_all(rendered) if d and d.get("kind") == "RayService"]
    deployments = yaml.safe_load(service["spec"]["serveConfigV2"])["applications"][0]["deployments"]
    assert {d["name"]: d["ray_actor_options"]["resources"] for d in deployments}["Denoiser"] == {"kino_dit": 1}
    assert report["placement"] == STAGE_POOLS
    assert report["placement_after"] == STAGE_POOLS  # after the DiT and Decoder nodes were replaced


def test_a_video_denoised_on_one_node_is_decoded_on_another(nodes_run):
    report, out, _ = nodes_run
    assert report["first"]["completed"] == 1, report["first"]
    _check_mp4(out / "first.mp4")


def test_the_dit_node_lost_mid_denoise_costs_no_job(nodes_run):
    report, _, _ = nodes_run
    assert report["dit_mid_denoise"], "the DiT node was removed only after the jobs had left it"
    loss = report["dit_loss"]
    assert (loss["completed"], loss["lost"], loss["finished_twice"]) == (2, 0, 0), loss
    assert loss["retried"] >= 1, loss["retries"]  # the loss hit a running job, which went through the stages again
    # ... from its checkpoint (the object store's): fewer steps computed than twice the work.
    assert loss["resumed"] >= 1 and loss["steps_run"] < loss["steps_needed"] * 1.5, loss


def test_the_decoder_node_lost_mid_decode_costs_no_job(nodes_run):
    report, _, _ = nodes_run
    assert report["decoder_mid_decode"], "the Decoder node was removed only after the jobs had left it"
    loss = report["decoder_loss"]
    assert (loss["completed"], loss["lost"], loss["finished_twice"]) == (2, 0, 0), loss
    assert loss["retried"] >= 1, loss
    # Their denoising ended with a checkpoint: the retry decodes again without denoising again.
    assert loss["steps_run"] == loss["steps_needed"], loss


def test_a_video_whose_decoder_node_has_gone_downloads_from_the_object_store(nodes_run, s3_server):
    report, out, _ = nodes_run
    _check_mp4(out / "after_node_gone.mp4")
    store = S3Store(s3_server.bucket, endpoint=s3_server.url, access_key_id=s3_server.access_key,
                    secret_access_key=s3_server.secret_key, region=s3_server.region,
                    client_options={"allow_http": True})
    stored = bytes(obstore.get(store, f"nodes-test/local/{report['after_node_gone']}.mp4").bytes())
    assert stored == (out / "after_node_gone.mp4").read_bytes()  # gRPC's DownloadVideo
    assert stored == (out / "after_node_gone_rest.mp4").read_bytes()  # REST's /v1/videos/{id}/content
