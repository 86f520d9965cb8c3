"""The OpenAI-compatible Videos API, driven by the official `openai` package, unchanged, with its default
retries (a retried answer would show as a repeated request and a slow test). Strict response validation is
tests/serving/test_rest_openai.py's: it holds `size` to OpenAI's four sizes, and these videos are small."""

from __future__ import annotations

import hashlib
import io
import json
import time
import urllib.error
import urllib.request

import av
import numpy as np
import openai
import PIL.Image
import pytest

from serving.accounts.store import AccountStore
from serving.db import Database


@pytest.fixture(scope="module")
def client(cluster):
    accounts = AccountStore(Database(f"sqlite:///{cluster.state_dir / 'jobs.db'}"))
    accounts.ensure_tenant("local")
    _, key = accounts.create_key("local", label="openai sdk")
    return openai.OpenAI(base_url=cluster.rest_url, api_key=key, timeout=60)


def _wait(client, video_id: str, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        video = client.videos.retrieve(video_id)
        if video.status in ("completed", "failed") or time.monotonic() > deadline:
            return video
        time.sleep(0.1)


def test_create_retrieve_list_download_remix_delete(client):
    video = client.videos.create(prompt="a paper boat on a river", seconds="1", size="96x64")
    assert video.object == "video" and video.status == "queued" and video.size == "96x64" and video.seconds == "1"
    done = _wait(client, video.id)
    assert done.status == "completed" and done.progress == 100 and done.completed_at >= done.created_at
    data = client.videos.download_content(video.id).read()
    with av.open(io.BytesIO(data)) as c:
        assert {s.type for s in c.streams} == {"video", "audio"}
    ids = [v.id for v in client.videos.list(limit=100)]
    assert video.id in ids

    remix = client.videos.remix(video.id, prompt="the paper boat at night")
    assert remix.remixed_from_video_id == video.id
    assert _wait(client, remix.id).status == "completed"

    first_page = client.videos.list(limit=1)
    assert len(first_page.data) == 1 and first_page.has_more
    second = client.videos.list(limit=1, after=first_page.data[0].id)
    assert second.data[0].id != first_page.data[0].id
    oldest_first = [v.id for v in client.videos.list(limit=100, order="asc").data]
    assert oldest_first.index(video.id) < oldest_first.index(remix.id)

    deleted = client.videos.delete(remix.id)
    assert deleted.deleted and deleted.id == remix.id
    with pytest.raises(openai.NotFoundError) as err:
        client.videos.retrieve(remix.id)
    assert err.value.body["param"] == "id" and "not found" in err.value.body["message"]


def test_image_reference_and_download_integrity(client, cluster):
    buf = io.BytesIO()
    PIL.Image.fromarray(np.random.default_rng(3).integers(0, 255, (64, 64, 3), dtype=np.uint8)).save(buf, "PNG")
    video = client.videos.create(prompt="the picture moves", seconds="1", size="64x64",
                                 input_reference=("first.png", buf.getvalue(), "image/png"))
    assert _wait(client, video.id).status == "completed"
    response = client.videos.with_raw_response.download_content(video.id)
    body = response.content
    assert response.headers["content-type"] == "video/mp4"
    assert hashlib.sha256(body).hexdigest() == response.headers["x-content-sha256"]


def test_errors_follow_the_openai_shape(client, cluster):
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="x", size="99x64")
    assert err.value.status_code == 400 and err.value.body["param"] == "size"
    assert err.value.body["type"] == "invalid_request_error" and "even sides" in err.value.body["message"]
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="x", seconds="forever")
    assert err.value.body["param"] == "seconds"
    with pytest.raises(openai.BadRequestError) as err:
        client.videos.create(prompt="x", model="veo-3")
    assert err.value.body["param"] == "model" and err.value.body["code"] == "model_not_found"
    with pytest.raises(openai.BadRequestError) as err:  # 400, not a 409 the SDK would retry
        client.videos.create(prompt="a gory decapitation")
    assert err.value.body["code"] == "moderation_blocked" and "graphic_violence" in err.value.body["message"]
    # Keys are not required on this server: a key it does not know (the SDK insists on sending one) runs
    # as the local tenant, which the known key also belongs to (keys-required servers: test_trust.py).
    unknown = openai.OpenAI(base_url=cluster.rest_url, api_key="kino_sk_not_a_key")
    assert [v.id for v in unknown.videos.list(limit=5).data] == [v.id for v in client.videos.list(limit=5).data]
    with pytest.raises(openai.NotFoundError):
        client.videos.download_content("video_missing")


def test_openai_sizes_are_delivered_exactly_with_their_stills(client):
    """1280x720 is generated at 1280x736 (sides multiples of 32) and centre-cropped by the Decoder; the thumbnail
    and spritesheet come from the MP4; DELETE stops and deletes a video still running."""
    started = time.monotonic()
    video = client.videos.create_and_poll(prompt="a lighthouse at dusk", model="sora-2", size="1280x720", seconds="1")
    assert video.status == "completed" and time.monotonic() - started < 120  # polled at openai-poll-after-ms
    assert video.size == "1280x720" and video.model_extra["size_fit"] == "crop"
    with av.open(io.BytesIO(client.videos.download_content(video.id).read())) as c:
        stream = c.streams.video[0]
        assert (stream.width, stream.height) == (1280, 720)
    thumb = client.videos.download_content(video.id, variant="thumbnail")
    assert PIL.Image.open(io.BytesIO(thumb.read())).size == (1280, 720)
    assert client.videos.download_content(video.id, variant="spritesheet").response.headers["content-type"] \
        == "image/jpeg"
    running = client.videos.create(prompt="a long walk", size="64x64", seconds="4")
    assert client.videos.delete(running.id).deleted
    with pytest.raises(openai.NotFoundError):
        client.videos.retrieve(running.id)


@pytest.mark.parametrize("method, path, body, status, param", [
    ("GET", "/videos?limit=abc", None, 400, "limit"),          # FastAPI's own parameter check
    ("POST", "/videos", b"{not json", 400, "body"),
    ("POST", "/videos", b"[1, 2]", 400, "body"),
    ("POST", "/videos/video_missing/remix", b"\"a string\"", 400, "body"),
    ("GET", "/no/such/route", None, 404, None),
    ("PUT", "/videos", b"{}", 405, None),
    ("POST", "/videos", b'{"prompt": "x", "size": 720}', 400, "size"),  # a wrong JSON type: 400, never 500
    ("POST", "/videos/extensions", b"{}", 501, "video"),               # not built: 501, never 405
])
def test_every_error_has_the_openai_shape(client, cluster, method, path, body, status, param):
    """Raw HTTP, as any client may send it: the answer is still {"error": {...}}, never a bare 500 or 422."""
    req = urllib.request.Request(cluster.rest_url + path, data=body, method=method,
                                 headers={"authorization": f"Bearer {client.api_key}",
                                          "content-type": "application/json"})
    with pytest.raises(urllib.error.HTTPError) as err:
        urllib.request.urlopen(req, timeout=10)
    error = json.loads(err.value.read())["error"]
    assert err.value.code == status and error["param"] == param and error["message"], error
