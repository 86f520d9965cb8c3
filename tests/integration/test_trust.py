"""Trust features through gRPC on a real cluster with API keys required.

Covers: content credentials on every path (create, remix, cameo, image-to-video) read back by
c2pa-python and by an independent reader (c2pa-rs as wasm, installed by this module's set-up);
the visible watermark on every decoded frame; tenant isolation; API keys; cameo consent;
moderation with its audit list; quotas and priorities.
"""

from __future__ import annotations

import hashlib
import io
import json
import shutil
import subprocess
from pathlib import Path

import av
import grpc
import numpy as np
import PIL.Image
import pytest

from engines.params import GenerationRequest
from engines.watermark import WatermarkConfig, detect
from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.accounts.store import AccountStore
from serving.db import Database
from serving.jobs.models import Quota
from serving.on_ray.cluster import free_port, local_serve_config
from serving.provenance.credentials import TRAINED_ALGORITHMIC_MEDIA, verify

ROOT = Path(__file__).resolve().parents[2]
WASM_READER_VERSION = "0.13.3"


class Client:
    """The generated stubs with one tenant's API key attached."""

    def __init__(self, channel: grpc.Channel, key: str | None) -> None:
        self.videos = pb_grpc.VideoServiceStub(channel)
        self.cameos = pb_grpc.CameoServiceStub(channel)
        self.audit = pb_grpc.AuditServiceStub(channel)
        self.md = (("authorization", f"Bearer {key}"),) if key else ()

    def __call__(self, method, request, **kw):
        return method(request, metadata=self.md, timeout=kw.get("timeout", 30))

    def stream(self, method, request, timeout=120):
        return method(request, metadata=self.md, timeout=timeout)

    def wait(self, video_id: str, timeout: float = 180) -> pb.Video:
        for ev in self.stream(self.videos.WatchVideo, pb.WatchVideoRequest(id=video_id), timeout=timeout):
            if ev.terminal:
                break
        return self(self.videos.GetVideo, pb.GetVideoRequest(id=video_id))

    def download(self, video_id: str) -> bytes:
        data = b""
        for part in self.stream(self.videos.DownloadVideo, pb.DownloadVideoRequest(id=video_id)):
            data += part.chunk
        return data


@pytest.fixture(scope="module")
def trust(cluster, tmp_path_factory):
    """A Kino app that requires API keys, runs one job at a time, with tenants made via the database."""
    state = tmp_path_factory.mktemp("trust")
    port = free_port()
    cluster.deploy(local_serve_config(state_dir=state, grpc_port=port, app_name="kino-trust",
                                      overrides={"auth": {"required": True},
                                                 "queue": {"max_in_flight": 1, "max_attempts": 2}},
                                      deployments={"Dispatcher": {"num_replicas": 1}}))
    accounts = AccountStore(Database(f"sqlite:///{state / 'jobs.db'}"))
    keys = {}
    for tenant, priority, quota in (("alice", 5, Quota()), ("bob", 5, Quota()), ("low", 1, Quota()),
                                    ("high", 9, Quota()), ("tight", 5, Quota(max_queued=1, seconds_per_day=3.0))):
        accounts.create_tenant(tenant, priority=priority, quota=quota)
        keys[tenant] = accounts.create_key(tenant)[1]
    revoked_key = accounts.create_key("alice", label="to revoke")
    accounts.revoke_key(revoked_key[0].id)
    channel = grpc.insecure_channel(f"127.0.0.1:{port}", options=[("grpc.max_send_message_length", 16 * 2**20)])
    grpc.channel_ready_future(channel).result(timeout=30)
    yield {"channel": channel, "keys": keys, "revoked": revoked_key[1], "state": state,
           "root": (state / "credentials" / "root.pem").read_bytes(), "accounts": accounts,
           **{t: Client(channel, k) for t, k in keys.items()}}
    channel.close()
    cluster.delete("kino-trust")


@pytest.fixture(scope="module")
def wasm_reader(tmp_path_factory):
    """Install the independent reader from npm into a cache; failing to install fails the test."""
    cache = ROOT / ".cache" / f"c2pa-wasm-{WASM_READER_VERSION}"
    if not (cache / "node_modules" / "@contentauth" / "c2pa-wasm").is_dir():
        cache.mkdir(parents=True, exist_ok=True)
        subprocess.run(["npm", "install", "--silent", "--no-audit", "--no-fund", "--prefix", str(cache),
                        f"@contentauth/c2pa-wasm@{WASM_READER_VERSION}"], check=True, timeout=300)
    shutil.copy(Path(__file__).with_name("c2pa_wasm_read.mjs"), cache / "read.mjs")

    def read(path: Path, root: Path) -> dict:
        out = subprocess.run(["node", str(cache / "read.mjs"), str(path), str(root)], capture_output=True, text=True,
                             timeout=60, check=True)
        return json.loads(out.stdout.strip().splitlines()[-1])
    return read


def _recording(staged, tmp_path) -> bytes:
    """A short video-with-audio recording (the cameo owner's selfie clip)."""
    from engines.params import GenerationRequest

    path = staged.generate(GenerationRequest(prompt="me, talking", seed=77, seconds=1.0), tmp_path / "me.mp4").path
    return path.read_bytes()


def _png(seed: int = 0) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(seed).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _frames(data: bytes) -> list[np.ndarray]:
    with av.open(io.BytesIO(data)) as c:
        return [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]


def _expect(code, fn, *args, **kw) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as err:
        result = fn(*args, **kw)
        if hasattr(result, "__iter__") and not isinstance(result, (bytes, pb.Video)):
            list(result)
    assert err.value.code() == code, (err.value.code(), err.value.details())
    return err.value


# -- content credentials and watermark on every path --------------------------------------------

@pytest.fixture(scope="module")
def outputs(trust, staged, tmp_path_factory):
    """One completed video from each path: create, image-to-video, cameo, remix."""
    a, b = trust["alice"], trust["bob"]
    made = {}
    made["create"] = a.wait(a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="a harbour at dawn", seed=1)).id)
    made["image"] = a.wait(a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="the painting moves", seed=2,
                                                                         image=_png())).id)
    cameo = b(b.cameos.CreateCameo, pb.CreateCameoRequest(
        recording=_recording(staged, tmp_path_factory.mktemp("rec")), name="Bob", consent=True,
        consent_statement="I, Bob, let alice put me in videos until I revoke it."))
    b(b.cameos.GrantCameo, pb.GrantCameoRequest(cameo_id=cameo.id, tenant="alice"))
    made["cameo"] = a.wait(a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bob waves hello", seed=3,
                                                                         cameo_id=cameo.id)).id)
    made["remix"] = a.wait(a(a.videos.RemixVideo, pb.RemixVideoRequest(video_id=made["create"].id,
                                                                       prompt="the harbour at night", seed=4)).id)
    for v in made.values():
        assert v.status == pb.VIDEO_STATUS_COMPLETED, v
    return {k: (v, a.download(v.id)) for k, v in made.items()}


@pytest.mark.parametrize("path", ["create", "image", "cameo", "remix"])
def test_credentials_trusted_and_tamper_evident(outputs, trust, path):
    video, data = outputs[path]
    check = verify(data, trust["root"])
    assert check.state == "Trusted", check.failures
    assert verify(data).state == "Valid"  # without our root: intact, but not trusted
    actions = check.assertion("c2pa.actions.v2")["actions"]
    assert actions[0]["action"] == "c2pa.created" and actions[0]["digitalSourceType"] == TRAINED_ALGORITHMIC_MEDIA
    assert check.manifest["claim_generator_info"][0]["name"] == "Kino"
    gen = check.assertion("org.kino.generation")
    assert gen["model"] == "ltx2-tiny" and gen["video_id"] == video.id
    assert gen["prompt_sha256"] == hashlib.sha256(video.prompt.encode()).hexdigest()
    assert video.prompt not in json.dumps(check.manifest)  # the hash, never the prompt
    assert gen["parent_video_id"] == (outputs["create"][0].id if path == "remix" else None)
    tampered = bytearray(data)
    tampered[data.find(b"mdat") + 64] ^= 0x01  # one byte of the media
    assert verify(bytes(tampered), trust["root"]).state == "Invalid"


def test_remix_carries_its_parent_as_an_ingredient(outputs, trust):
    check = verify(outputs["remix"][1], trust["root"])
    assert [i.get("relationship") for i in check.manifest.get("ingredients", [])] == ["parentOf"]
    assert outputs["remix"][0].parent_id == outputs["create"][0].id


def test_independent_reader_agrees(outputs, trust, wasm_reader, tmp_path):
    root = tmp_path / "root.pem"
    root.write_bytes(trust["root"])
    for path, (_video, data) in outputs.items():
        f = tmp_path / f"{path}.mp4"
        f.write_bytes(data)
        result = wasm_reader(f, root)
        assert result["state"] == "Trusted", (path, result)
        assert "org.kino.generation" in result["assertions"]
        bad = bytearray(data)
        bad[data.find(b"mdat") + 64] ^= 0x01
        f.write_bytes(bytes(bad))
        assert wasm_reader(f, root)["state"] == "Invalid"


def test_watermark_on_every_frame_and_not_on_unmarked_video(outputs, staged, tmp_path):
    for path, (_video, data) in outputs.items():
        frames = _frames(data)
        hits = [detect(f)[0] for f in frames]
        assert frames and all(hits), (path, sum(hits), len(frames))

    plain = staged.generate(GenerationRequest(prompt="unmarked", seed=5), tmp_path / "plain.mp4").path
    assert not any(detect(f, WatermarkConfig())[0] for f in _frames(plain.read_bytes()))


# -- tenants and keys ---------------------------------------------------------------------------

def test_api_keys(trust):
    channel = trust["channel"]
    stub = pb_grpc.VideoServiceStub(channel)
    err = _expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListVideos, pb.ListVideosRequest())
    assert "API key" in err.details()
    _expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListVideos, pb.ListVideosRequest(),
            metadata=(("authorization", "Bearer kino_sk_wrong"),))
    _expect(grpc.StatusCode.UNAUTHENTICATED, stub.ListVideos, pb.ListVideosRequest(),
            metadata=(("x-api-key", trust["revoked"]),))
    _expect(grpc.StatusCode.UNAUTHENTICATED, lambda: list(stub.WatchVideo(pb.WatchVideoRequest(id="video_x"))))
    stub.ListVideos(pb.ListVideosRequest(), metadata=(("x-api-key", trust["keys"]["alice"]),))
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    health = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=5)
    assert health.status == health_pb2.HealthCheckResponse.SERVING  # probes need no key


def test_another_tenants_video_does_not_exist(outputs, trust):
    a, b = trust["alice"], trust["bob"]
    video = outputs["create"][0]
    for method, req in ((b.videos.GetVideo, pb.GetVideoRequest(id=video.id)),
                        (b.videos.CancelVideo, pb.CancelVideoRequest(id=video.id)),
                        (b.videos.DeleteVideo, pb.DeleteVideoRequest(id=video.id)),
                        (b.videos.SetVideoVisibility, pb.SetVideoVisibilityRequest(id=video.id, visibility=2)),
                        (b.videos.RemixVideo, pb.RemixVideoRequest(video_id=video.id, prompt="steal"))):
        err = _expect(grpc.StatusCode.NOT_FOUND, b, method, req)
        assert "alice" not in err.details() and "not found" in err.details()
    for method, req in ((b.videos.WatchVideo, pb.WatchVideoRequest(id=video.id)),
                        (b.videos.DownloadVideo, pb.DownloadVideoRequest(id=video.id))):
        err = _expect(grpc.StatusCode.NOT_FOUND, lambda m=method, r=req: list(b.stream(m, r)))
        assert "alice" not in err.details()
    assert video.id not in [v.id for v in b(b.videos.ListVideos, pb.ListVideosRequest(page_size=100)).videos]
    assert video.id in [v.id for v in a(a.videos.ListVideos, pb.ListVideosRequest(page_size=100)).videos]


def test_public_feed_and_remix_of_a_public_video(outputs, trust):
    a, b = trust["alice"], trust["bob"]
    video = outputs["image"][0]
    a(a.videos.SetVideoVisibility, pb.SetVideoVisibilityRequest(id=video.id, visibility=pb.VISIBILITY_PUBLIC))
    feed = b(b.videos.ListPublicVideos, pb.ListPublicVideosRequest(page_size=100)).videos
    entry = next(v for v in feed if v.id == video.id)
    assert entry.prompt == video.prompt and not any(
        f.name in ("tenant", "user", "seed") for f in pb.PublicVideo.DESCRIPTOR.fields)
    assert b(b.videos.GetVideo, pb.GetVideoRequest(id=video.id)).status == pb.VIDEO_STATUS_COMPLETED
    assert len(b.download(video.id)) == video.size_bytes
    remix = b.wait(b(b.videos.RemixVideo, pb.RemixVideoRequest(video_id=video.id, prompt="bob's take")).id)
    assert remix.status == pb.VIDEO_STATUS_COMPLETED and remix.parent_id == video.id
    _expect(grpc.StatusCode.NOT_FOUND, b, b.videos.DeleteVideo, pb.DeleteVideoRequest(id=video.id))  # read only
    a(a.videos.SetVideoVisibility, pb.SetVideoVisibilityRequest(id=video.id, visibility=pb.VISIBILITY_PRIVATE))
    _expect(grpc.StatusCode.NOT_FOUND, b, b.videos.GetVideo, pb.GetVideoRequest(id=video.id))


# -- cameos ---------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def carol_cameo(trust, staged, tmp_path_factory):
    """Bob's second cameo, which needs approval for every use."""
    b = trust["bob"]
    return b(b.cameos.CreateCameo, pb.CreateCameoRequest(
        recording=_recording(staged, tmp_path_factory.mktemp("rec2")), name="Bob (approval)", consent=True,
        consent_statement="Ask me first.", require_approval=True))


def test_cameo_needs_a_live_grant_and_revocation_stops_a_running_job(trust, staged, tmp_path):
    a, b = trust["alice"], trust["bob"]
    cameo = b(b.cameos.CreateCameo, pb.CreateCameoRequest(
        recording=_recording(staged, tmp_path), name="Bob too", consent=True, consent_statement="ok"))
    assert cameo.consent_key_id.startswith("key_") and cameo.has_voice
    err = _expect(grpc.StatusCode.PERMISSION_DENIED, a, a.videos.CreateVideo,
                  pb.CreateVideoRequest(prompt="bob dances", cameo_id=cameo.id))
    assert "cameo_id" in err.details()
    b(b.cameos.GrantCameo, pb.GrantCameoRequest(cameo_id=cameo.id, tenant="alice"))
    stream = b.stream(b.cameos.WatchCameoNotifications, pb.WatchCameoNotificationsRequest(), timeout=120)
    notes = (n for n in stream if n.cameo_id == cameo.id)  # bob's other cameos have their own history
    long = a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bob dances slowly", cameo_id=cameo.id,
                                                         size="256x256", seconds=2.0, steps=80))
    first = next(notes)
    assert (first.kind, first.video_id, first.creator_tenant) == ("used", long.id, "alice")
    for ev in a.stream(a.videos.WatchVideo, pb.WatchVideoRequest(id=long.id)):
        if ev.stage == pb.STAGE_DENOISING and ev.step >= 2:
            break
    b(b.cameos.RevokeCameo, pb.RevokeCameoRequest(cameo_id=cameo.id, tenant="alice"))
    stopped = a.wait(long.id)
    assert stopped.status == pb.VIDEO_STATUS_CANCELLED and stopped.error.code == "consent_revoked"
    assert stopped.step < 80
    kinds = []
    for n in notes:
        kinds.append(n.kind)
        if n.kind == "stopped":
            break
    assert "stopped" in kinds
    _expect(grpc.StatusCode.PERMISSION_DENIED, a, a.videos.CreateVideo,
            pb.CreateVideoRequest(prompt="bob again", cameo_id=cameo.id))


def test_held_video_until_the_owner_approves_and_rejection_deletes(trust, carol_cameo):
    a, b = trust["alice"], trust["bob"]
    b(b.cameos.GrantCameo, pb.GrantCameoRequest(cameo_id=carol_cameo.id, tenant="alice"))
    held = a.wait(a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bob reads", cameo_id=carol_cameo.id)).id)
    assert held.status == pb.VIDEO_STATUS_COMPLETED and held.review == pb.REVIEW_PENDING
    err = _expect(grpc.StatusCode.FAILED_PRECONDITION, lambda: a.download(held.id))
    assert "approve" in err.details()
    _expect(grpc.StatusCode.FAILED_PRECONDITION, a, a.videos.SetVideoVisibility,
            pb.SetVideoVisibilityRequest(id=held.id, visibility=pb.VISIBILITY_PUBLIC))
    kinds = {n.kind for n in b(b.cameos.ListCameoNotifications, pb.ListCameoNotificationsRequest()).notifications
             if n.video_id == held.id}
    assert {"used", "held"} <= kinds
    b(b.cameos.ReviewCameoVideo, pb.ReviewCameoVideoRequest(cameo_id=carol_cameo.id, video_id=held.id, approve=True))
    assert len(a.download(held.id)) > 0

    rejected = a.wait(a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bob sings", cameo_id=carol_cameo.id)).id)
    b(b.cameos.ReviewCameoVideo, pb.ReviewCameoVideoRequest(cameo_id=carol_cameo.id, video_id=rejected.id,
                                                            approve=False))
    _expect(grpc.StatusCode.NOT_FOUND, a, a.videos.GetVideo, pb.GetVideoRequest(id=rejected.id))
    # Rejected before it finished: stopped within a step, then deleted all the same.
    running = a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bob sings on", cameo_id=carol_cameo.id,
                                                            size="256x256", seconds=2.0, steps=80))
    for ev in a.stream(a.videos.WatchVideo, pb.WatchVideoRequest(id=running.id)):
        if ev.stage == pb.STAGE_DENOISING and ev.step >= 1:
            break
    b(b.cameos.ReviewCameoVideo, pb.ReviewCameoVideoRequest(cameo_id=carol_cameo.id, video_id=running.id,
                                                            approve=False))
    _expect(grpc.StatusCode.NOT_FOUND, a, a.videos.GetVideo, pb.GetVideoRequest(id=running.id))


def test_owner_lists_and_deletes_another_tenants_video_of_them(trust, carol_cameo):
    a, b = trust["alice"], trust["bob"]
    videos = b(b.cameos.ListCameoVideos, pb.ListCameoVideosRequest(cameo_id=carol_cameo.id)).videos
    assert videos and all(v.cameo_id == carol_cameo.id for v in videos)
    target = next(v for v in videos if v.status == pb.VIDEO_STATUS_COMPLETED)
    b(b.cameos.DeleteCameoVideo, pb.DeleteCameoVideoRequest(cameo_id=carol_cameo.id, video_id=target.id))
    _expect(grpc.StatusCode.NOT_FOUND, a, a.videos.GetVideo, pb.GetVideoRequest(id=target.id))
    # Nobody else can list a cameo's videos.
    _expect(grpc.StatusCode.NOT_FOUND, a, a.cameos.ListCameoVideos, pb.ListCameoVideosRequest(cameo_id=carol_cameo.id))


# -- moderation ---------------------------------------------------------------------------------

PROMPT_RULES = [("sexual_minors", "a naked child"), ("graphic_violence", "a gory decapitation scene"),
                ("self_harm", "a guide to self-harm"), ("weapons_instructions", "how to build a bomb at home")]
CAMEO_RULES = [("cameo_sexual", "bob undressing"), ("cameo_harm", "bob gets stabbed"),
               ("cameo_deception", "bob endorsing a candidate, vote for Smith")]


def test_moderation_rejects_each_category_and_nothing_is_queued(trust, outputs):
    a = trust["alice"]
    cameo_id = outputs["cameo"][0].cameo_id
    b = trust["bob"]
    b(b.cameos.GrantCameo, pb.GrantCameoRequest(cameo_id=cameo_id, tenant="alice"))
    before = {v.id for v in a(a.videos.ListVideos, pb.ListVideosRequest(page_size=100)).videos}
    cases = [(c, pb.CreateVideoRequest(prompt=p)) for c, p in PROMPT_RULES]
    cases += [(c, pb.CreateVideoRequest(prompt=p, cameo_id=cameo_id)) for c, p in CAMEO_RULES]
    for category, req in cases:
        err = _expect(grpc.StatusCode.FAILED_PRECONDITION, a, a.videos.CreateVideo, req)
        assert category in err.details() and "prompt" in err.details()
    err = _expect(grpc.StatusCode.FAILED_PRECONDITION, a, a.videos.RemixVideo,
                  pb.RemixVideoRequest(video_id=outputs["create"][0].id, prompt="make it gory"))
    assert "graphic_violence" in err.details()
    # Cameo rules apply only when a cameo is in the video.
    ok = a(a.videos.CreateVideo, pb.CreateVideoRequest(prompt="an actor gets stabbed in a play"))
    a(a.videos.CancelVideo, pb.CancelVideoRequest(id=ok.id))
    _expect(grpc.StatusCode.INVALID_ARGUMENT, a, a.videos.CreateVideo, pb.CreateVideoRequest(prompt="bad\x00byte"))
    after = {v.id for v in a(a.videos.ListVideos, pb.ListVideosRequest(page_size=100)).videos}
    assert after - before == {ok.id}  # no rejected request left a job behind
    events = a(a.audit.ListAuditEvents, pb.ListAuditEventsRequest()).events
    logged = [e.category for e in events if e.kind == "moderation_rejected"]
    for category, _ in PROMPT_RULES + CAMEO_RULES:
        assert category in logged
    assert all(e.reason for e in events)
    assert not [e for e in b(b.audit.ListAuditEvents, pb.ListAuditEventsRequest()).events
                if e.kind == "moderation_rejected"]  # bob's audit list is his alone


# -- quotas and priorities ------------------------------------------------------------------------

def test_quotas_name_the_quota(trust):
    t, other = trust["tight"], trust["alice"]
    # One job runs at a time here: a long job of another tenant keeps tight's first job queued.
    blocker = other(other.videos.CreateVideo, pb.CreateVideoRequest(prompt="blocker", size="256x256", steps=60))
    first = t(t.videos.CreateVideo, pb.CreateVideoRequest(prompt="one", seconds=1.0))
    err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, t, t.videos.CreateVideo,
                  pb.CreateVideoRequest(prompt="two", seconds=1.0))
    assert "quota max_queued exceeded" in err.details()
    other.wait(blocker.id)
    t.wait(first.id)
    second = t(t.videos.CreateVideo, pb.CreateVideoRequest(prompt="two", seconds=1.0))  # 2 s of 3 s today
    assert t.wait(second.id).status == pb.VIDEO_STATUS_COMPLETED
    err = _expect(grpc.StatusCode.RESOURCE_EXHAUSTED, t, t.videos.CreateVideo,
                  pb.CreateVideoRequest(prompt="three", seconds=1.5))
    assert "quota seconds_per_day exceeded" in err.details()


def test_high_priority_tenant_overtakes_queued_low_priority_jobs(trust):
    low, high = trust["low"], trust["high"]
    blocker = low(low.videos.CreateVideo, pb.CreateVideoRequest(prompt="blocker", size="256x256", steps=60))
    queued = [low(low.videos.CreateVideo, pb.CreateVideoRequest(prompt=f"low {i}", seed=i)) for i in range(3)]
    urgent = high(high.videos.CreateVideo, pb.CreateVideoRequest(prompt="urgent", seed=9))
    assert urgent.priority == 9 and queued[0].priority == 1
    done = {v.id: low.wait(v.id) for v in [blocker, *queued]}
    done[urgent.id] = high.wait(urgent.id)
    started = {vid: v.started_at.ToNanoseconds() for vid, v in done.items()}
    assert all(started[urgent.id] < started[q.id] for q in queued), started
