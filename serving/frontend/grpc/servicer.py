"""kino.v1.VideoService over the domain `VideoService`: translation and error mapping only."""

from __future__ import annotations

import asyncio
from typing import Any, Awaitable, Callable

import grpc

from kino.v1 import video_service_pb2 as pb
from kino.v1 import video_service_pb2_grpc as pb_grpc
from serving.errors import DeadlineExceeded
from serving.frontend.grpc import convert
from serving.frontend.grpc.errors import status_for
from serving.jobs import JobStatus
from serving.videos import VideoService

TenantOf = Callable[[grpc.aio.ServicerContext], str]


class VideoServicer(pb_grpc.VideoServiceServicer):
    def __init__(self, videos: VideoService, tenant_of: TenantOf) -> None:
        self.videos = videos
        self.tenant_of = tenant_of

    async def _unary(self, context: grpc.aio.ServicerContext, op: Callable[[str], Awaitable[Any]]) -> Any:
        """Run a domain call within the caller's deadline; any error becomes one status code."""
        try:
            tenant = self.tenant_of(context)
            remaining = context.time_remaining()
            if remaining is None:
                return await op(tenant)
            try:
                return await asyncio.wait_for(op(tenant), timeout=max(remaining, 0.0))
            except asyncio.TimeoutError:
                raise DeadlineExceeded("the call's deadline passed before the server finished") from None
        except Exception as e:  # noqa: BLE001 - mapped to a status in one place
            code, message = status_for(e)
        await context.abort(code, message)

    async def CreateVideo(self, request: pb.CreateVideoRequest, context) -> pb.Video:
        async def op(tenant: str) -> pb.Video:
            job, _ = await self.videos.create(tenant, convert.create_request(request))
            return convert.video(job)
        return await self._unary(context, op)

    async def GetVideo(self, request: pb.GetVideoRequest, context) -> pb.Video:
        async def op(tenant: str) -> pb.Video:
            return convert.video(await self.videos.get(tenant, request.id))
        return await self._unary(context, op)

    async def ListVideos(self, request: pb.ListVideosRequest, context) -> pb.ListVideosResponse:
        async def op(tenant: str) -> pb.ListVideosResponse:
            status: JobStatus | None = None
            if request.status != pb.VIDEO_STATUS_UNSPECIFIED:
                if request.status not in convert.PB_TO_STATUS:
                    from serving.errors import InvalidArgument

                    raise InvalidArgument(f"status={request.status} is not allowed: one of the VideoStatus values",
                                          field="status")
                status = convert.PB_TO_STATUS[request.status]
            jobs, token = await self.videos.list(tenant, status=status, page_size=request.page_size,
                                                 page_token=request.page_token)
            return pb.ListVideosResponse(videos=[convert.video(j) for j in jobs], next_page_token=token or "")
        return await self._unary(context, op)

    async def CancelVideo(self, request: pb.CancelVideoRequest, context) -> pb.Video:
        async def op(tenant: str) -> pb.Video:
            return convert.video(await self.videos.cancel(tenant, request.id))
        return await self._unary(context, op)

    async def DeleteVideo(self, request: pb.DeleteVideoRequest, context) -> pb.DeleteVideoResponse:
        async def op(tenant: str) -> pb.DeleteVideoResponse:
            job = await self.videos.delete(tenant, request.id)
            return pb.DeleteVideoResponse(id=job.id, deleted=True)
        return await self._unary(context, op)

    async def WatchVideo(self, request: pb.WatchVideoRequest, context):
        try:
            tenant = self.tenant_of(context)
            async for progress in self.videos.watch(tenant, request.id):
                yield convert.event(progress)
            return
        except Exception as e:  # noqa: BLE001
            code, message = status_for(e)
        await context.abort(code, message)

    async def DownloadVideo(self, request: pb.DownloadVideoRequest, context):
        try:
            tenant = self.tenant_of(context)
            download = await self.videos.download(tenant, request.id)
            a = download.artifact
            yield pb.DownloadVideoResponse(header=pb.DownloadHeader(
                video_id=request.id, size_bytes=a.size_bytes, content_type=a.content_type, sha256=a.sha256,
                filename=download.filename))
            async for chunk in download.chunks:
                yield pb.DownloadVideoResponse(chunk=chunk)
            return
        except Exception as e:  # noqa: BLE001
            code, message = status_for(e)
        await context.abort(code, message)
