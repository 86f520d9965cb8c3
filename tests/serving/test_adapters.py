"""The protocol adapters against a fake domain: they translate, map errors in one table, and decide nothing.

A real grpc.aio server on loopback (port 0) and the real FastAPI app, over `FakeVideos`: a stand-in for
`VideoService` that records what it was asked and answers canned jobs (the domain has its own tests).
"""

from __future__ import annotations

import asyncio
import dataclasses
import time
from fractions import Fraction

import grpc
import pytest
from fastapi.testclient import TestClient

from engines.config import preset
from engines.params import GenerationRequest, params_to_dict
from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.accounts import Principal, Tenant
from serving.artifacts import Artifact
from serving.errors import ErrorCode, FailedPrecondition, InvalidArgument, NotFound
from serving.frontend.common import api_key
from serving.frontend.grpc.errors import STATUS
from serving.frontend.grpc.servicer import VideoServicer
from serving.frontend.rest.app import create_rest_app
from serving.frontend.rest.errors import HTTP
from serving.jobs import Job, JobStatus, Stage
from serving.videos import Download, Page, Progress

WHO = Principal(Tenant("acme", "acme"), user="ann")
PARAMS = GenerationRequest(prompt="a fox", width=128, height=96, seconds=2.0, fps=Fraction(24000, 1001),
                          seed=7, steps=4).validated(preset("tiny"))


def _job(job_id: str = "video_1", status: JobStatus = JobStatus.COMPLETED) -> Job:
    return Job(id=job_id, tenant="acme", model="ltx2-tiny", priority=5, params=params_to_dict(PARAMS),
               status=status, seq=1, created_at=time.time(), stage=Stage.DONE, progress=1.0,
               artifact=Artifact("acme/video_1.mp4", 6, "ab" * 32))


class FakeVideos:
    """Records each call's arguments; `fail` makes the next call raise it."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, object]] = []
        self.fail: Exception | None = None

    def _record(self, name: str, value: object) -> None:
        self.calls.append((name, value))
        if self.fail is not None:
            raise self.fail

    async def create(self, who, req):
        self._record("create", req)
        return _job(status=JobStatus.QUEUED), True

    async def get(self, who, video_id):
        self._record("get", video_id)
        return _job(video_id)

    async def list(self, who, **kw):
        self._record("list", kw)
        return Page([_job("video_2"), _job("video_1")], next_token="t2")

    async def delete(self, who, video_id, stop_active=False):
        self._record("delete", video_id)
        return _job(video_id, JobStatus.DELETED)

    async def watch(self, who, video_id, history=False):
        self._record("watch", video_id)
        for step in (1, 2):
            yield Progress(video_id, JobStatus.IN_PROGRESS, Stage.DENOISING, time.time(), step=step, total_steps=2)
        yield Progress(video_id, JobStatus.COMPLETED, Stage.DONE, time.time(), progress=1.0)

    async def download(self, who, video_id, variant="video"):
        self._record("download", video_id)

        async def chunks():
            for part in (b"abc", b"def"):
                yield part

        return Download(_job(video_id).artifact, f"{video_id}.mp4", chunks())


def _grpc(fake: FakeVideos, calls):
    """Run `calls(stub)` against a loopback grpc.aio server over `fake`."""

    async def main():
        server = grpc.aio.server()
        pb_grpc.add_VideoServiceServicer_to_server(VideoServicer(fake, lambda _ctx: WHO), server)
        port = server.add_insecure_port("127.0.0.1:0")
        await server.start()
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
                return await calls(pb_grpc.VideoServiceStub(channel))
        finally:
            await server.stop(0)

    return asyncio.run(main())


def test_grpc_create_translates_fields_both_ways():
    fake = FakeVideos()

    async def calls(stub):
        return await stub.CreateVideo(pb.CreateVideoRequest(prompt="a fox", size="128x96", fps="24000/1001",
                                                            seconds=2.0, visibility=pb.VISIBILITY_PUBLIC))

    video = _grpc(fake, calls)
    [(name, req)] = fake.calls
    assert name == "create" and req.prompt == "a fox" and req.size == "128x96" and req.fps == "24000/1001"
    assert req.seconds == 2.0 and req.seed is None and req.steps is None and req.priority is None  # unset: None
    assert req.visibility.value == "public"
    assert (video.size, video.fps, video.seed, video.steps, video.status) == (
        "128x96", "24000/1001", 7, 4, pb.VIDEO_STATUS_QUEUED)


@pytest.mark.parametrize("error, code", [
    (InvalidArgument("size: width=100 is not allowed", field="size"), grpc.StatusCode.INVALID_ARGUMENT),
    (NotFound("id 'video_x' not found: no such video", field="id"), grpc.StatusCode.NOT_FOUND),
    (FailedPrecondition("id video_1 is queued", field="id"), grpc.StatusCode.FAILED_PRECONDITION),
    (RuntimeError("a bug"), grpc.StatusCode.INTERNAL),
])
def test_grpc_maps_domain_errors_through_its_one_table(error, code):
    fake = FakeVideos()
    fake.fail = error

    async def calls(stub):
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.GetVideo(pb.GetVideoRequest(id="video_x"))
        return err.value

    got = _grpc(fake, calls)
    assert got.code() == code
    assert got.details() == (str(error) if code != grpc.StatusCode.INTERNAL else "internal error: RuntimeError")


def test_grpc_list_passes_the_status_on_for_the_domain_to_check():
    fake = FakeVideos()

    async def calls(stub):
        page = await stub.ListVideos(pb.ListVideosRequest(status=pb.VIDEO_STATUS_COMPLETED, page_size=2))
        await stub.ListVideos(pb.ListVideosRequest(status=42))
        await stub.ListVideos(pb.ListVideosRequest())
        return page

    page = _grpc(fake, calls)
    assert [kw["status"] for _, kw in fake.calls] == ["completed", "42", None]
    assert fake.calls[0][1]["page_size"] == 2
    assert [v.id for v in page.videos] == ["video_2", "video_1"] and page.next_page_token == "t2"


def test_grpc_streams_watch_events_and_downloads():
    fake = FakeVideos()

    async def calls(stub):
        events = [e async for e in stub.WatchVideo(pb.WatchVideoRequest(id="video_1"))]
        parts = [p async for p in stub.DownloadVideo(pb.DownloadVideoRequest(id="video_1"))]
        deleted = await stub.DeleteVideo(pb.DeleteVideoRequest(id="video_1"))
        return events, parts, deleted

    events, parts, deleted = _grpc(fake, calls)
    assert [(e.step, e.terminal) for e in events] == [(1, False), (2, False), (0, True)]
    assert events[-1].status == pb.VIDEO_STATUS_COMPLETED
    assert parts[0].header.size_bytes == 6 and parts[0].header.filename == "video_1.mp4"
    assert b"".join(p.chunk for p in parts[1:]) == b"abcdef"
    assert deleted.deleted and deleted.id == "video_1"


@pytest.fixture
def rest():
    fake = FakeVideos()
    return fake, TestClient(create_rest_app(fake, authenticate=lambda _key: WHO))


def test_rest_create_and_list_translate_to_the_same_domain_calls(rest):
    fake, http = rest
    created = http.post("/v1/videos", json={"prompt": "a fox", "size": "128x96", "seconds": "2"})
    assert created.status_code == 200 and created.json()["size"] == "128x96" and created.json()["seconds"] == "2"
    req = fake.calls[0][1]
    assert (req.prompt, req.size, req.seconds, req.fps) == ("a fox", "128x96", 2.0, None)
    listed = http.get("/v1/videos", params={"limit": 2, "order": "asc"}).json()
    kw = fake.calls[1][1]
    assert kw["page_size"] == 2 and kw["page_size_field"] == "limit" and kw["ascending"] is True
    assert [v["id"] for v in listed["data"]] == ["video_2", "video_1"] and listed["has_more"] is True
    assert http.delete("/v1/videos/video_1").json() == {"id": "video_1", "object": "video.deleted", "deleted": True}


def test_rest_answers_domain_errors_in_the_openai_shape(rest):
    fake, http = rest
    fake.fail = InvalidArgument("limit=500 is not allowed: an integer in [1, 100]", field="limit")
    got = http.get("/v1/videos", params={"limit": 500})
    assert got.status_code == 400
    assert got.json() == {"error": {"message": "limit=500 is not allowed: an integer in [1, 100]",
                                    "type": "invalid_request_error", "param": "limit", "code": "invalid_value"}}


def test_every_error_code_has_a_grpc_status_and_an_http_status():
    assert set(STATUS) == set(ErrorCode) and set(HTTP) == set(ErrorCode)
    assert len({row.status for row in HTTP.values()}) >= 8  # not all the same answer


def test_both_adapters_read_the_api_key_the_same_way():
    for headers in ({"authorization": "Bearer kino_sk_a"}, [("Authorization", "bearer kino_sk_a")],
                    {"x-api-key": "kino_sk_a"}):
        assert api_key(headers) == "kino_sk_a"
    assert api_key({"authorization": "Basic xyz"}) is None and api_key(None) is None


# -- LoRA adapters on the wire ---------------------------------------------------------------------------
class ParsingVideos(FakeVideos):
    """Creates through the domain's one parser (`generation_params`) against a model with an adapter directory
    holding `style`, so the adapters' validation errors are the real ones; answers a job of what it parsed."""

    def __init__(self, model) -> None:
        super().__init__()
        self.model = model

    async def create(self, who, req):
        from serving.videos.parsing import generation_params

        self._record("create", req)
        params = generation_params(req, self.model)
        return dataclasses.replace(_job(status=JobStatus.QUEUED), params=params_to_dict(params)), True

    async def remix(self, who, req):
        self._record("remix", req)
        return _job(status=JobStatus.QUEUED), True

    async def loras(self, who):
        from engines.adapter_files import catalog

        return catalog(self.model.lora.dir)


@pytest.fixture
def lora_model(tmp_path):
    import numpy as np
    from safetensors.numpy import save_file

    from engines.config import LoraConfig

    # rank 2 on two Linears (only names and header shapes are read here; the Denoiser reads the tensors)
    save_file({f"transformer.{m}.lora_{ab}.weight": np.zeros((2, 8) if ab == "A" else (8, 2), np.float32)
               for m in ("blocks.0.to_q", "blocks.0.to_k") for ab in "AB"}, tmp_path / "style.safetensors")
    return preset("tiny").replace(lora=LoraConfig(dir=tmp_path))


def test_grpc_carries_loras_in_and_out_and_names_an_unknown_one(lora_model):
    fake = ParsingVideos(lora_model)

    async def calls(stub):
        video = await stub.CreateVideo(pb.CreateVideoRequest(prompt="a fox", loras=[pb.LoraRef(name="style",
                                                                                               scale=0.8)]))
        await stub.RemixVideo(pb.RemixVideoRequest(video_id="video_1", prompt="a wolf"))
        await stub.RemixVideo(pb.RemixVideoRequest(video_id="video_1", prompt="a wolf",
                                                   loras=[pb.LoraRef(name="style", scale=-0.5)]))
        with pytest.raises(grpc.aio.AioRpcError) as err:
            await stub.CreateVideo(pb.CreateVideoRequest(prompt="a fox", loras=[pb.LoraRef(name="nope")]))
        return video, err.value

    video, err = _grpc(fake, calls)
    created, remixed, remixed_with = (req for _, req in fake.calls[:3])
    assert created.loras == (("style", 0.8),)  # the float32 on the wire, as the client wrote it
    assert [(ref.name, round(ref.scale, 6)) for ref in video.loras] == [("style", 0.8)]
    assert video.cache == pb.STEP_CACHE_OFF  # the model's default (tiny: off), as without adapters
    assert remixed.loras is None and remixed_with.loras == (("style", -0.5),)  # none sent: the source's
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert err.details() == f"loras[0].name='nope' is not allowed: one of style (the adapters in {lora_model.lora.dir})"


def test_rest_carries_loras_in_and_out_and_names_the_field_of_a_bad_one(lora_model):
    fake = ParsingVideos(lora_model)
    http = TestClient(create_rest_app(fake, authenticate=lambda _key: WHO))
    created = http.post("/v1/videos", json={"prompt": "a fox", "loras": [{"name": "style", "scale": 0.5}]})
    assert created.status_code == 200, created.json()
    assert fake.calls[0][1].loras == (("style", 0.5),) and created.json()["loras"] == [{"name": "style", "scale": 0.5}]
    assert http.post("/v1/videos", json={"prompt": "a fox"}).json()["loras"] == []
    unknown = http.post("/v1/videos", json={"prompt": "a fox", "loras": [{"name": "nope"}]})
    assert unknown.status_code == 400 and unknown.json()["error"]["param"] == "loras[0].name"
    typed = http.post("/v1/videos", json={"prompt": "a fox", "loras": [{"name": "style", "scale": "big"}]})
    assert typed.status_code == 400 and typed.json()["error"]["param"] == "loras[0].scale"
    http.post("/v1/videos/video_1/remix", json={"prompt": "a wolf"})
    http.post("/v1/videos/video_1/remix", json={"prompt": "a wolf", "loras": []})
    assert [req.loras for name, req in fake.calls if name == "remix"] == [None, ()]


def test_both_adapters_list_the_loras_a_request_may_name(lora_model):
    fake = ParsingVideos(lora_model)

    async def calls(stub):
        return await stub.ListLoras(pb.ListLorasRequest())

    listed = _grpc(fake, calls)
    assert [(a.name, a.rank, a.modules) for a in listed.loras] == [("style", 2, 2)]
    http = TestClient(create_rest_app(fake, authenticate=lambda _key: WHO))
    assert http.get("/v1/loras").json() == {"object": "list",
                                            "data": [{"object": "lora", "name": "style", "rank": 2, "modules": 2}]}
