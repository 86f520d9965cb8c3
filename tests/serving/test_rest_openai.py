"""The OpenAI-compatible REST API as a porting user meets it: the official `openai` SDK (default retries, strict
response validation) against the REST app over the real domain (job store, artifacts, moderation), in process.

No stages run here: a test finishes a job the way a dispatcher does (claim, then finish with an MP4 it wrote).
The cluster-backed run of the same SDK is tests/integration/test_rest.py.
"""

from __future__ import annotations

import base64
import io
import threading
from fractions import Fraction
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import httpx
import numpy as np
import openai
import PIL.Image
import pytest
from fastapi.testclient import TestClient

from engines.mp4 import Mp4Writer
from serving.config import load_config
from serving.frontend.rest.app import create_rest_app
from serving.jobs import JobStatus
from serving.metrics import NoMetrics
from serving.migrations import upgrade
from serving.services import DomainServices
from serving.videos import DispatcherLink


class Link(DispatcherLink):
    """Stands in for the dispatcher: a cancel of a running job stops it at once, as the runner would."""

    def __init__(self) -> None:
        self.leases: dict = {}
        self.store = None

    async def wake(self) -> None:
        pass

    async def cancel(self, job_id: str) -> None:
        lease = self.leases.pop(job_id, None)
        if lease is not None:
            self.store.finish(lease, JobStatus.CANCELLED, error_code="cancelled", error_message="cancelled")


class Server:
    def __init__(self, tmp_path, overrides=None) -> None:
        cfg = load_config({"storage": {"database_url": f"sqlite:///{tmp_path}/jobs.db",
                                       "artifacts_dir": str(tmp_path / "artifacts")},
                           "provenance": {"dev_chain_dir": str(tmp_path / "credentials")}, **(overrides or {})},
                          environ={})
        upgrade(cfg.storage.database_url)
        self.link = Link()
        self.services = DomainServices.open(cfg, self.link, NoMetrics())
        self.videos = self.services.videos
        self.store = self.link.store = self.videos.store.blocking
        self.app = create_rest_app(self.videos, self.services.accounts.authenticate, cameos=self.services.cameos)
        self.http = TestClient(self.app, raise_server_exceptions=False)
        self.requests: list[httpx.Request] = []
        self.http.event_hooks["request"].append(self.requests.append)
        self.client = openai.OpenAI(base_url="http://testserver/v1", api_key="kino_sk_unknown", http_client=self.http,
                                    _strict_response_validation=True)
        # Strict validation holds `size` to OpenAI's four sizes (the SDK's Literal): Kino's other sizes need this.
        self.lax = openai.OpenAI(base_url="http://testserver/v1", api_key="kino_sk_unknown", http_client=self.http)

    def claim(self, video_id: str):
        job = self.store.claim_next("test", 30.0)
        assert job is not None and job.id == video_id, job
        self.link.leases[video_id] = job.lease
        return job.lease

    def complete(self, video_id: str) -> None:
        """Finish a queued job with an MP4 of its delivered size, as the Decoder would write it."""
        self.claim(video_id)
        job = self.store.get(video_id)
        p = job.generation
        w, h = p.delivered
        path = self.videos.artifacts.blocking.scratch_path(f"{job.tenant}/{video_id}.mp4")
        with Mp4Writer(path, width=w, height=h, fps=Fraction(8), num_frames=8, audio=None) as writer:
            writer.write(np.random.default_rng(0).integers(0, 255, (8, h, w, 3), dtype=np.uint8))
        artifact = self.videos.artifacts.blocking.put_file(f"{job.tenant}/{video_id}.mp4", path)
        self.store.finish(self.link.leases.pop(video_id), JobStatus.COMPLETED, artifact=artifact)


@pytest.fixture
def server(tmp_path):
    return Server(tmp_path)


def _png(size=(64, 64)) -> bytes:
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(1).integers(0, 255, (*size[::-1], 3), dtype=np.uint8)).save(buf, "PNG")
    return buf.getvalue()


def _no_retries(server, before: int, path: str) -> None:
    """Exactly one request was sent for a call the SDK would retry if the answer let it."""
    sent = [r for r in server.requests[before:] if r.url.path.endswith(path)]
    assert len(sent) == 1, [str(r.url) for r in sent]


# -- models, sizes, seconds ------------------------------------------------------------------------------
def test_openai_models_sizes_and_seconds_are_served(server):
    c = server.client
    video = c.videos.create(prompt="a paper boat", model="sora-2")  # OpenAI's defaults: 720x1280, 4 s
    assert video.size == "720x1280" and video.seconds == "4" and video.status == "queued"
    raw = video.model_extra or {}
    assert raw["generated_size"] == "736x1280" and raw["size_fit"] == "crop"
    for size in ("1280x720", "1024x1792", "1792x1024"):
        assert c.videos.create(prompt="a boat", size=size, seconds="8").size == size
    pro = c.videos.create(prompt="a boat", model="sora-2-pro", size="1280x720", seconds="4")
    job = server.store.get(pro.id)
    assert job.generation.two_stage and job.generation.size == "1280x768" and pro.size == "1280x720"
    # seconds as a JSON number too (the SDK sends OpenAI's strings; other clients send numbers).
    got = server.http.post("/v1/videos", json={"prompt": "a boat", "seconds": 2, "size": "96x64"})
    assert got.status_code == 200 and got.json()["seconds"] == "2" and got.json()["size_fit"] is None


def test_rest_defaults_come_from_config_and_grpc_keeps_the_models(tmp_path):
    s = Server(tmp_path, {"rest": {"defaults": {"size": "128x64", "seconds": 1}}})
    video = s.lax.videos.create(prompt="a boat")
    assert (video.size, video.model_extra["generated_size"], video.seconds) == ("128x64", "128x64", "1")
    from serving.videos import CreateVideo
    params = s.store.get(s.client.videos.create(prompt="x", size="720x1280").id).generation
    assert params.size == "736x1280"
    import asyncio
    job, _ = asyncio.run(s.videos.create(s.services.accounts.local_principal(), CreateVideo(prompt="a boat")))
    assert job.generation.size == "64x64"  # not REST: the model's own default
    from serving.errors import InvalidArgument
    with pytest.raises(InvalidArgument, match="a multiple of 32"):  # nor its sizes: gRPC keeps the exact rule
        asyncio.run(s.videos.create(s.services.accounts.local_principal(), CreateVideo(prompt="x", size="720x1280")))


def test_an_unknown_model_is_model_not_found_listing_what_is_served(server):
    with pytest.raises(openai.BadRequestError) as err:
        server.client.videos.create(prompt="x", model="veo-3")
    body = err.value.body
    assert body["code"] == "model_not_found" and body["param"] == "model"
    assert "'sora-2'" in body["message"] and "'sora-2-pro'" in body["message"] and "ltx2-tiny" in body["message"]


@pytest.mark.parametrize("body, param, code", [
    ({"prompt": "x", "size": 720}, "size", "invalid_type"),
    ({"prompt": "x", "seconds": [4]}, "seconds", "invalid_type"),
    ({"prompt": 5}, "prompt", "invalid_type"),
    ({"size": "720x1280"}, "prompt", "missing_required_parameter"),
    ({"prompt": "x", "input_reference": "https://example.com/a.png"}, "input_reference", "invalid_type"),
    ({"prompt": "x", "input_reference": {"url": "a"}}, "input_reference.url", "unknown_parameter"),
    ({"prompt": "x", "colour": "red"}, "colour", "unknown_parameter"),
    ({"prompt": "x", "seconds": "forever"}, "seconds", "invalid_value"),
    ({"prompt": "x", "size": "99x64"}, "size", "invalid_value"),
    ({"prompt": "x", "size": "4000x4000"}, "size", "invalid_value"),
    ({"prompt": "x", "size": "1920x1920"}, "size", "invalid_value"),  # beyond the model's 1080p, even scaled
])
def test_a_wrong_json_type_or_value_is_a_400_naming_the_field(server, body, param, code):
    got = server.http.post("/v1/videos", json=body)
    assert got.status_code == 400, got.text
    error = got.json()["error"]
    assert (error["param"], error["code"], error["type"]) == (param, code, "invalid_request_error"), error


def test_prompts_up_to_openais_32000_characters(server):
    assert server.client.videos.create(prompt="a boat " * 4000 + "end").status == "queued"
    with pytest.raises(openai.BadRequestError) as err:
        server.client.videos.create(prompt="x" * 32001)
    assert "at most 32000 characters" in err.value.body["message"] and "tokens" in err.value.body["message"]


# -- errors the SDK must not retry -----------------------------------------------------------------------
def test_moderation_is_a_400_moderation_blocked_checked_once(server):
    before = len(server.requests)
    with pytest.raises(openai.BadRequestError) as err:
        server.client.videos.create(prompt="a gory decapitation")
    assert err.value.body["code"] == "moderation_blocked" and "graphic_violence" in err.value.body["message"]
    _no_retries(server, before, "/videos")
    audits = server.services.accounts.audit_events(server.services.accounts.local_principal())
    assert [a.kind for a in audits].count("moderation_rejected") == 1  # checked and audited once


def test_state_conflicts_are_not_retried(server):
    c = server.client
    video = c.videos.create(prompt="a boat", seconds="1")
    before = len(server.requests)
    with pytest.raises(openai.ConflictError) as err:
        c.videos.download_content(video.id)
    assert err.value.body["code"] == "video_not_ready" and err.value.response.headers["x-should-retry"] == "false"
    _no_retries(server, before, "/content")
    before = len(server.requests)
    with pytest.raises(openai.ConflictError):
        c.videos.remix(video.id, prompt="at night")
    _no_retries(server, before, "/remix")


def test_delete_of_a_queued_or_running_video_cancels_then_deletes(server):
    c = server.client
    queued = c.videos.create(prompt="a boat", seconds="1")
    assert c.videos.delete(queued.id).deleted
    running = c.videos.create(prompt="a boat", seconds="1")
    server.claim(running.id)
    assert c.videos.retrieve(running.id).status == "in_progress"
    assert c.videos.delete(running.id).deleted
    with pytest.raises(openai.NotFoundError) as err:
        c.videos.retrieve(running.id)
    assert err.value.body["code"] == "not_found" and err.value.body["type"] == "invalid_request_error"


def test_in_progress_videos_say_when_to_poll_again(server):
    video = server.client.videos.with_raw_response.create(prompt="a boat", seconds="4")
    assert 500 <= int(video.headers["openai-poll-after-ms"]) <= 10_000
    vid = video.parse().id
    server.complete(vid)
    done = server.client.videos.with_raw_response.retrieve(vid)
    assert "openai-poll-after-ms" not in done.headers and done.parse().status == "completed"


# -- input_reference in every form ----------------------------------------------------------------------
def test_input_reference_as_upload_and_as_data_url(server):
    c = server.client
    uploaded = c.videos.create(prompt="the picture moves", seconds="1",
                               input_reference=("first.png", _png(), "image/png"))
    assert server.store.get(uploaded.id).conditioning.image_key
    url = "data:image/png;base64," + base64.b64encode(_png()).decode()
    # The SDK's create() cannot send the object form (its extract_files wants a file there): multipart as
    # OpenAI's API reference shows it, and JSON.
    by_form = server.http.post("/v1/videos", files={"prompt": (None, "moves"), "seconds": (None, "1"),
                                                    "input_reference[image_url]": (None, url)})
    assert by_form.status_code == 200 and server.store.get(by_form.json()["id"]).conditioning.image_key
    as_json = server.http.post("/v1/videos", json={"prompt": "moves", "size": "64x64", "seconds": "1",
                                                   "input_reference": {"image_url": url}})
    assert as_json.status_code == 200 and server.store.get(as_json.json()["id"]).conditioning.image_key
    bad = server.http.post("/v1/videos", json={"prompt": "x", "input_reference": {"image_url": "data:,AAAA"}})
    assert bad.status_code == 400 and bad.json()["error"]["param"] == "image"  # not an image: refused, not ignored


def test_input_reference_file_id_is_refused_naming_the_field(server):
    got = server.http.post("/v1/videos", files={"prompt": (None, "x"), "input_reference[file_id]": (None, "file_1")})
    error = got.json()["error"]
    assert got.status_code == 400 and error["param"] == "input_reference.file_id" and "Files API" in error["message"]


@pytest.fixture
def image_server():
    buf = io.BytesIO()
    PIL.Image.new("RGB", (64, 64), (200, 100, 50)).save(buf, "PNG")
    png = buf.getvalue()  # small: under the 4096 bytes allowed below

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802
            body = png if self.path == "/a.png" else b"x" * 5000
            self.send_response(200 if self.path != "/moved" else 302)
            if self.path == "/moved":
                self.send_header("location", "/a.png")
            self.send_header("content-length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()


def _by_url(server, url):
    return server.http.post("/v1/videos", json={"prompt": "x", "seconds": "1", "input_reference": {"image_url": url}})


def test_input_reference_urls_are_fetched_only_from_allowed_hosts(tmp_path, image_server):
    """Loopback (as private and link-local) is refused by default (SSRF); rest.fetch.allow_hosts admits it."""
    refused = Server(tmp_path / "a")
    got = _by_url(refused, f"{image_server}/a.png")
    error = got.json()["error"]
    assert got.status_code == 400 and error["param"] == "input_reference.image_url" and "non-public" in error["message"]
    for url in ("http://169.254.169.254/latest/meta-data", "http://10.0.0.1/a.png", "http://[::1]/a.png",
                "http://localhost/a.png", "file:///etc/passwd"):
        got = _by_url(refused, url)
        assert got.status_code == 400 and got.json()["error"]["param"] == "input_reference.image_url", url
    allowed = Server(tmp_path / "b", {"rest": {"fetch": {"allow_hosts": ["127.0.0.1"], "max_bytes": 4096}}})
    video = _by_url(allowed, f"{image_server}/a.png")
    assert video.status_code == 200, video.text
    assert allowed.store.get(video.json()["id"]).conditioning.image_key
    for path, words in (("/big", "at most 4096 bytes"), ("/moved", "HTTP 302")):
        got = _by_url(allowed, image_server + path)
        assert got.status_code == 400 and words in got.json()["error"]["message"]


# -- the rest of the SDK's surface ----------------------------------------------------------------------
def test_retrieve_list_download_variants_remix_and_edit(server):
    c = server.client
    video = c.videos.create(prompt="a paper boat", size="720x1280", seconds="4")
    server.complete(video.id)
    done = c.videos.retrieve(video.id)
    assert done.status == "completed" and done.progress == 100
    assert video.id in [v.id for v in c.videos.list(limit=100)]
    assert c.videos.download_content(video.id).read()[4:8] == b"ftyp"
    thumb = c.videos.download_content(video.id, variant="thumbnail")
    assert thumb.response.headers["content-type"] == "image/webp"
    assert PIL.Image.open(io.BytesIO(thumb.read())).size == (720, 1280)
    sheet = PIL.Image.open(io.BytesIO(c.videos.download_content(video.id, variant="spritesheet").read()))
    assert sheet.format == "JPEG" and sheet.width > 256
    with pytest.raises(openai.BadRequestError):
        c.videos.download_content(video.id, variant="gif")  # type: ignore[arg-type]
    remix = c.videos.remix(video.id, prompt="the paper boat at night")
    assert remix.remixed_from_video_id == video.id
    multipart = server.http.post(f"/v1/videos/{video.id}/remix", files={"prompt": (None, "at dawn")})
    assert multipart.status_code == 200 and multipart.json()["remixed_from_video_id"] == video.id
    # The SDK's edit() cannot send video={"id": ...} either (extract_files): multipart video[id], and JSON.
    edit = server.http.post("/v1/videos/edits", files={"prompt": (None, "make it snow"), "video[id]": (None, video.id)})
    assert edit.status_code == 200 and edit.json()["remixed_from_video_id"] == video.id
    edit = server.http.post("/v1/videos/edits", json={"prompt": "make it snow", "video": {"id": video.id}})
    assert edit.status_code == 200 and edit.json()["size"] == "720x1280"
    upload = server.http.post("/v1/videos/edits",
                              files={"prompt": (None, "snow"), "video": ("a.mp4", b"\0", "video/mp4")})
    assert upload.status_code == 400 and upload.json()["error"]["param"] == "video"
    assert c.videos.delete(video.id).deleted


def test_endpoints_not_built_answer_501_in_openais_shape_never_405(server):
    """Extensions are not built (the model path conditions on a first frame or a whole clip, not a clip's tail)."""
    c = server.client
    before = len(server.requests)
    with pytest.raises(openai.APIStatusError) as err:
        c.videos.extend(prompt="and then", seconds="4", video=("a.mp4", b"\0", "video/mp4"))
    assert err.value.status_code == 501 and "/v1/videos/extensions" in err.value.body["message"]
    _no_retries(server, before, "/extensions")
    assert err.value.response.headers["x-should-retry"] == "false"  # a 5xx the SDK would otherwise retry


def test_every_error_has_the_openai_shape_and_vocabulary(server):
    for method, path, body, status, code in [
        ("GET", "/v1/videos?limit=abc", None, 400, "invalid_type"),
        ("POST", "/v1/videos", b"{not json", 400, "invalid_value"),
        ("GET", "/no/such/route", None, 404, "not_found"),
        ("PUT", "/v1/videos", b"{}", 405, "method_not_allowed"),
        ("GET", "/v1/videos/video_missing", None, 404, "not_found"),
    ]:
        got = server.http.request(method, path, content=body, headers={"content-type": "application/json"})
        error = got.json()["error"]
        assert got.status_code == status and error["code"] == code and error["message"], (path, error)
        assert error["type"] == "invalid_request_error"


def _recording(tmp_path) -> bytes:
    path = tmp_path / "me.mp4"
    with Mp4Writer(path, width=64, height=64, fps=Fraction(8), num_frames=8, audio=None) as writer:
        writer.write(np.full((8, 64, 64, 3), 120, dtype=np.uint8))
    return path.read_bytes()


def test_characters_are_cameos_under_the_same_consent_rules(server, tmp_path):
    from serving.accounts.store import AccountStore
    from serving.db import Database

    c, recording = server.client, _recording(tmp_path)
    # OpenAI's call alone (name, video) records no consent: refused, naming Kino's consent field.
    with pytest.raises(openai.BadRequestError) as err:
        c.videos.create_character(name="ann", video=("me.mp4", recording, "video/mp4"))
    assert err.value.body["param"] == "consent"
    character = c.videos.create_character(name="ann", video=("me.mp4", recording, "video/mp4"), extra_body={
        "consent": "true", "consent_statement": "I, Ann, agree that my likeness is used in videos I make."})
    assert character.id.startswith("cameo_") and character.name == "ann"
    assert c.videos.get_character(character.id).name == "ann"
    mine = server.http.post("/v1/videos", json={"prompt": "ann waves", "seconds": "1", "character_id": character.id})
    assert mine.status_code == 200, mine.text
    assert server.store.get(mine.json()["id"]).conditioning.cameo_id == character.id
    # Another tenant, without a grant, neither sees the character nor can put it in a video.
    accounts = AccountStore(Database(server.videos.config.storage.database_url))
    accounts.ensure_tenant("other")
    _, key = accounts.create_key("other", label="t")
    other = openai.OpenAI(base_url="http://testserver/v1", api_key=key, http_client=server.http)
    with pytest.raises(openai.APIStatusError) as err:  # the domain's answer, as over gRPC
        other.videos.get_character(character.id)
    assert err.value.status_code in (403, 404)
    theirs = server.http.post("/v1/videos", headers={"authorization": f"Bearer {key}"},
                              json={"prompt": "ann waves", "seconds": "1", "character_id": character.id})
    assert theirs.status_code in (403, 404) and theirs.json()["error"]["param"] == "cameo_id"


def test_defaults_beyond_the_token_budget_say_they_were_defaults(tmp_path):
    """OpenAI's default 720x1280 for 4 s needs ~24,000 latent tokens a forward on the tiny preset: a server whose
    denoiser holds fewer refuses it at create (never queued to fail later), saying the size was its default."""
    s = Server(tmp_path, {"batching": {"max_tokens": 20000}})
    with pytest.raises(openai.BadRequestError) as err:
        s.client.videos.create(prompt="a boat")
    message = err.value.body["message"]
    assert err.value.body["param"] == "size" and "rest.defaults: 720x1280, 4 s" in message
    assert "the largest that fits is" in message
    assert s.lax.videos.create(prompt="a boat", size="256x256", seconds="4").status == "queued"
