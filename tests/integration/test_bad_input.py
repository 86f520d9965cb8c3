"""Bad input: every case gets its exact status code and a message that begins with the field."""

import re

import grpc
import pytest

from kino_api.v1 import video_service_pb2 as pb

INVALID = grpc.StatusCode.INVALID_ARGUMENT
C = pb.CreateVideoRequest


def assert_names(details: str, field: str) -> None:
    """The message opens with the field (`size: ...`, `seconds=...`, `id 'x' not found`)."""
    assert re.match(rf"{re.escape(field)}\b", details), f"{field!r} does not open {details!r}"


CREATE_CASES = [
    # (id, request, code, field named in the message)
    ("empty prompt", C(prompt=""), INVALID, "prompt"),
    ("blank prompt", C(prompt="   \n"), INVALID, "prompt"),
    ("prompt too long", C(prompt="x" * 32001), INVALID, "prompt"),
    ("negative prompt too long", C(prompt="ok", negative_prompt="y" * 32001), INVALID, "negative_prompt"),
    ("size not WxH", C(prompt="ok", size="big"), INVALID, "size"),
    ("size one number", C(prompt="ok", size="256"), INVALID, "size"),
    ("size not multiple of 32", C(prompt="ok", size="100x64"), INVALID, "size"),
    ("height not multiple of 32", C(prompt="ok", size="64x70"), INVALID, "size"),
    ("size too small", C(prompt="ok", size="32x64"), INVALID, "size"),
    ("width too large", C(prompt="ok", size="1952x64"), INVALID, "size"),
    ("height too large", C(prompt="ok", size="64x1952"), INVALID, "size"),
    ("over 1080p pixels", C(prompt="ok", size="1920x1920"), INVALID, "size"),
    ("negative size", C(prompt="ok", size="-64x64"), INVALID, "size"),
    ("seconds zero", C(prompt="ok", seconds=0.0), INVALID, "seconds"),
    ("seconds negative", C(prompt="ok", seconds=-1.0), INVALID, "seconds"),
    ("seconds too long", C(prompt="ok", seconds=20.5), INVALID, "seconds"),
    ("seconds nan", C(prompt="ok", seconds=float("nan")), INVALID, "seconds"),
    ("seconds inf", C(prompt="ok", seconds=float("inf")), INVALID, "seconds"),
    ("fps unsupported", C(prompt="ok", fps="12"), INVALID, "fps"),
    ("fps 60", C(prompt="ok", fps="60"), INVALID, "fps"),
    ("fps garbage", C(prompt="ok", fps="fast"), INVALID, "fps"),
    ("fps zero denominator", C(prompt="ok", fps="30/0"), INVALID, "fps"),
    ("seed negative", C(prompt="ok", seed=-5), INVALID, "seed"),
    ("steps zero", C(prompt="ok", steps=0), INVALID, "steps"),
    ("steps negative", C(prompt="ok", steps=-3), INVALID, "steps"),
    ("steps too many", C(prompt="ok", steps=101), INVALID, "steps"),
    ("guidance below 1", C(prompt="ok", guidance_scale=0.5), INVALID, "guidance_scale"),
    ("guidance above 20", C(prompt="ok", guidance_scale=25.0), INVALID, "guidance_scale"),
    ("guidance nan", C(prompt="ok", guidance_scale=float("nan")), INVALID, "guidance_scale"),
    ("audio guidance below 1", C(prompt="ok", audio_guidance_scale=0.0), INVALID, "audio_guidance_scale"),
    ("audio guidance above 20", C(prompt="ok", audio_guidance_scale=99.0), INVALID, "audio_guidance_scale"),
    ("priority negative", C(prompt="ok", priority=-1), INVALID, "priority"),
    ("priority too high", C(prompt="ok", priority=10), INVALID, "priority"),
    ("idempotency key too long", C(prompt="ok", idempotency_key="k" * 129), INVALID, "idempotency_key"),
    ("unknown model", C(prompt="ok", model="sora-2-pro"), INVALID, "model"),
    ("unknown step cache", C(prompt="ok", cache=42), INVALID, "cache"),
    ("two-stage sides not multiples of 64", C(prompt="ok", size="96x128", two_stage=True), INVALID, "size"),
    ("two-stage with an image", C(prompt="ok", two_stage=True, image=b"\x89PNG"), INVALID, "two_stage"),
]


@pytest.mark.parametrize("req, code, field", [c[1:] for c in CREATE_CASES], ids=[c[0] for c in CREATE_CASES])
def test_create_video_rejects(stub, req, code, field):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateVideo(req, timeout=10)
    assert err.value.code() == code
    assert_names(err.value.details(), field)


def test_rejected_creates_write_nothing(stub):
    before = {v.id for v in stub.ListVideos(pb.ListVideosRequest(page_size=100)).videos}
    for _, req, _, _ in CREATE_CASES[:5]:
        with pytest.raises(grpc.RpcError):
            stub.CreateVideo(req)
    after = {v.id for v in stub.ListVideos(pb.ListVideosRequest(page_size=100)).videos}
    assert after == before


def _call(stub, method: str, req):
    fn = getattr(stub, method)
    result = fn(req, timeout=10)
    if method in ("WatchVideo", "DownloadVideo"):
        return list(result)
    return result


OTHER_CASES = [
    ("get empty id", "GetVideo", pb.GetVideoRequest(id=""), INVALID, "id"),
    ("get unknown id", "GetVideo", pb.GetVideoRequest(id="video_nope"), grpc.StatusCode.NOT_FOUND, "id"),
    ("cancel unknown id", "CancelVideo", pb.CancelVideoRequest(id="video_nope"), grpc.StatusCode.NOT_FOUND, "id"),
    ("delete unknown id", "DeleteVideo", pb.DeleteVideoRequest(id="video_nope"), grpc.StatusCode.NOT_FOUND, "id"),
    ("watch unknown id", "WatchVideo", pb.WatchVideoRequest(id="video_nope"), grpc.StatusCode.NOT_FOUND, "id"),
    ("download unknown id", "DownloadVideo", pb.DownloadVideoRequest(id="video_nope"),
     grpc.StatusCode.NOT_FOUND, "id"),
    ("download empty id", "DownloadVideo", pb.DownloadVideoRequest(id=""), INVALID, "id"),
    ("list page size too big", "ListVideos", pb.ListVideosRequest(page_size=101), INVALID, "page_size"),
    ("list page size negative", "ListVideos", pb.ListVideosRequest(page_size=-1), INVALID, "page_size"),
    ("list bad page token", "ListVideos", pb.ListVideosRequest(page_token="not-a-token"), INVALID, "page_token"),
    ("list unknown status", "ListVideos", pb.ListVideosRequest(status=42), INVALID, "status"),
]


@pytest.mark.parametrize("method, req, code, field", [c[1:] for c in OTHER_CASES], ids=[c[0] for c in OTHER_CASES])
def test_other_calls_reject(stub, method, req, code, field):
    with pytest.raises(grpc.RpcError) as err:
        _call(stub, method, req)
    assert err.value.code() == code
    assert_names(err.value.details(), field)


def test_state_preconditions_name_the_field(stub):
    queued = stub.CreateVideo(pb.CreateVideoRequest(prompt="a long one", size="256x256", steps=60, seconds=2.0))
    for method, req in (("DeleteVideo", pb.DeleteVideoRequest(id=queued.id)),
                        ("DownloadVideo", pb.DownloadVideoRequest(id=queued.id))):
        with pytest.raises(grpc.RpcError) as err:
            _call(stub, method, req)
        assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert_names(err.value.details(), "id")
    stub.CancelVideo(pb.CancelVideoRequest(id=queued.id))


def test_deadline_and_message_size(stub):
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateVideo(pb.CreateVideoRequest(prompt="ok"), timeout=0.0001)
    assert err.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    with pytest.raises(grpc.RpcError) as err:
        stub.CreateVideo(pb.CreateVideoRequest(prompt="x" * (17 * 2**20)))  # over the 16 MiB limit
    assert err.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert "message" in err.value.details().lower()
