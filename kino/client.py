"""A small synchronous client over the generated kino.v1 stubs (used by the CLI)."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc


class ClientError(Exception):
    """A call failed; the message says the status code and the server's reason."""

    def __init__(self, code: grpc.StatusCode, details: str) -> None:
        self.code = code
        self.details = details
        super().__init__(f"{code.name}: {details}")


@dataclass(frozen=True)
class Downloaded:
    path: Path
    size_bytes: int
    sha256: str


class KinoClient:
    def __init__(self, address: str, *, api_key: str | None = None, timeout: float = 30.0,
                 max_message_bytes: int = 16 * 2**20) -> None:
        self.address = address
        self.channel = grpc.insecure_channel(address, options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes)])
        self.stub = pb_grpc.VideoServiceStub(self.channel)
        self.cameos = pb_grpc.CameoServiceStub(self.channel)
        self.audit = pb_grpc.AuditServiceStub(self.channel)
        self.metadata: tuple[tuple[str, str], ...] = (("authorization", f"Bearer {api_key}"),) if api_key else ()
        self.timeout = timeout

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> KinoClient:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def call(self, method, request, **kw):
        """Any unary RPC of the three services, e.g. client.call(client.cameos.GrantCameo, request)."""
        return self._call(method, request, **kw)

    def _call(self, method, request, **kw):
        try:
            return method(request, metadata=self.metadata, timeout=kw.get("timeout", self.timeout))
        except grpc.RpcError as e:
            raise ClientError(e.code(), e.details() or "") from None

    def create(self, request: pb.CreateVideoRequest) -> pb.Video:
        return self._call(self.stub.CreateVideo, request)

    def get(self, video_id: str) -> pb.Video:
        return self._call(self.stub.GetVideo, pb.GetVideoRequest(id=video_id))

    def list(self, *, status: int = 0, page_size: int = 20, page_token: str = "") -> pb.ListVideosResponse:
        return self._call(self.stub.ListVideos, pb.ListVideosRequest(status=status, page_size=page_size,
                                                                      page_token=page_token))

    def cancel(self, video_id: str) -> pb.Video:
        return self._call(self.stub.CancelVideo, pb.CancelVideoRequest(id=video_id))

    def delete(self, video_id: str) -> pb.DeleteVideoResponse:
        return self._call(self.stub.DeleteVideo, pb.DeleteVideoRequest(id=video_id))

    def watch(self, video_id: str, timeout: float | None = None) -> Iterator[pb.VideoEvent]:
        yield from self.stream(self.stub.WatchVideo, pb.WatchVideoRequest(id=video_id), timeout=timeout)

    def stream(self, method, request, timeout: float | None = None) -> Iterator:
        try:
            yield from method(request, metadata=self.metadata, timeout=timeout)
        except grpc.RpcError as e:
            raise ClientError(e.code(), e.details() or "") from None

    def download(self, video_id: str, path: str | Path, timeout: float | None = None) -> Downloaded:
        """Stream the MP4 to `path`, checking its size and sha256 against the header."""
        path = Path(path)
        digest, size, header = hashlib.sha256(), 0, None
        tmp = path.with_name(path.name + ".part")
        try:
            with open(tmp, "wb") as f:
                for part in self.stub.DownloadVideo(pb.DownloadVideoRequest(id=video_id), metadata=self.metadata,
                                                    timeout=timeout):
                    if part.HasField("header"):
                        header = part.header
                        continue
                    f.write(part.chunk)
                    digest.update(part.chunk)
                    size += len(part.chunk)
        except grpc.RpcError as e:
            tmp.unlink(missing_ok=True)
            raise ClientError(e.code(), e.details() or "") from None
        if header is None or size != header.size_bytes or digest.hexdigest() != header.sha256:
            tmp.unlink(missing_ok=True)
            raise ClientError(grpc.StatusCode.DATA_LOSS, f"download of {video_id} does not match its header "
                                                         f"({size} bytes, sha256 {digest.hexdigest()})")
        tmp.replace(path)
        return Downloaded(path=path, size_bytes=size, sha256=header.sha256)
