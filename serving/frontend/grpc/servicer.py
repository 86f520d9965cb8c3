"""kino.v1 services over the domain: translation and error mapping only, no decisions."""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kino_api.v1 import video_service_pb2 as pb
from kino_api.v1 import video_service_pb2_grpc as pb_grpc
from serving.accounts import Principal
from serving.accounts.service import AccountService
from serving.async_view import AsyncView
from serving.cameos.service import CameoService
from serving.errors import DeadlineExceeded
from serving.frontend.grpc import convert
from serving.frontend.grpc.errors import status_for
from serving.videos import VideoService

PrincipalOf = Callable[[grpc.aio.ServicerContext], Principal]


async def unary(context: grpc.aio.ServicerContext, principal_of: PrincipalOf,
                op: Callable[[Principal], Awaitable[Any]]) -> Any:
    """Run a domain call within the caller's deadline; any error becomes one status code."""
    try:
        principal = principal_of(context)
        remaining = context.time_remaining()
        if remaining is None:
            return await op(principal)
        if remaining <= 0:  # nothing is started for a caller that has already given up
            raise DeadlineExceeded("the call's deadline passed before the server started it")
        # A create that outlives the deadline may still be stored (its thread runs on): a retry
        # with the same idempotency_key then returns that video instead of making a second one.
        try:
            return await asyncio.wait_for(op(principal), timeout=max(remaining, 0.0))
        except TimeoutError:
            raise DeadlineExceeded("the call's deadline passed before the server finished") from None
    except Exception as e:  # noqa: BLE001 - mapped to a status in one place
        code, message = status_for(e)
    await context.abort(code, message)


async def stream(context: grpc.aio.ServicerContext, principal_of: PrincipalOf,
                 op: Callable[[Principal], AsyncIterator[Any]]) -> AsyncIterator[Any]:
    try:
        async for item in op(principal_of(context)):
            yield item
        return
    except Exception as e:  # noqa: BLE001
        code, message = status_for(e)
    await context.abort(code, message)


class _Calls:
    """A servicer whose methods take the caller's principal and the request (see `unary_rpc`)."""

    principal_of: PrincipalOf


Handler = Callable[[Any, Principal, Any], Any]


def unary_rpc(method: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], Awaitable[Any]]:
    """`method(self, who, request)` as the gRPC handler `(self, request, context)`: run as the caller's principal,
    within its deadline, every error through the one status table (`unary`)."""

    @functools.wraps(method)
    async def handler(self: _Calls, request: Any, context: grpc.aio.ServicerContext) -> Any:
        return await unary(context, self.principal_of, lambda who: method(self, who, request))
    return handler


def stream_rpc(method: Handler) -> Callable[[Any, Any, grpc.aio.ServicerContext], AsyncIterator[Any]]:
    """The same for a server-streaming method (an async generator of messages)."""

    @functools.wraps(method)
    async def handler(self: _Calls, request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[Any]:
        async for item in stream(context, self.principal_of, lambda who: method(self, who, request)):
            yield item
    return handler


class VideoServicer(_Calls, pb_grpc.VideoServiceServicer):
    def __init__(self, videos: VideoService, principal_of: PrincipalOf) -> None:
        self.videos, self.principal_of = videos, principal_of

    @unary_rpc
    async def CreateVideo(self, who: Principal, request: pb.CreateVideoRequest) -> pb.Video:
        job, _ = await self.videos.create(who, convert.create_request(request))
        return convert.video(job)

    @unary_rpc
    async def RemixVideo(self, who: Principal, request: pb.RemixVideoRequest) -> pb.Video:
        job, _ = await self.videos.remix(who, convert.remix_request(request))
        return convert.video(job)

    @unary_rpc
    async def GetVideo(self, who: Principal, request: pb.GetVideoRequest) -> pb.Video:
        return convert.video(await self.videos.get(who, request.id))

    @unary_rpc
    async def ListVideos(self, who: Principal, request: pb.ListVideosRequest) -> pb.ListVideosResponse:
        page = await self.videos.list(who, status=convert.status_filter(request.status),
                                      page_size=request.page_size, page_token=request.page_token)
        return convert.videos_page(page)

    @unary_rpc
    async def ListPublicVideos(self, _who: Principal,
                               request: pb.ListPublicVideosRequest) -> pb.ListPublicVideosResponse:
        page = await self.videos.list_public(request.page_size, request.page_token)
        return pb.ListPublicVideosResponse(videos=[convert.public_video(j) for j in page.jobs],
                                           next_page_token=page.next_token or "")

    @unary_rpc
    async def ListLoras(self, who: Principal, _request: pb.ListLorasRequest) -> pb.ListLorasResponse:
        return pb.ListLorasResponse(loras=[pb.LoraInfo(name=a.name, rank=a.rank, modules=a.modules)
                                           for a in await self.videos.loras(who)])

    @unary_rpc
    async def SetVideoVisibility(self, who: Principal, request: pb.SetVideoVisibilityRequest) -> pb.Video:
        visibility = convert.visibility(request.visibility)
        return convert.video(await self.videos.set_visibility(who, request.id, visibility))

    @unary_rpc
    async def CancelVideo(self, who: Principal, request: pb.CancelVideoRequest) -> pb.Video:
        return convert.video(await self.videos.cancel(who, request.id))

    @unary_rpc
    async def DeleteVideo(self, who: Principal, request: pb.DeleteVideoRequest) -> pb.DeleteVideoResponse:
        return convert.deleted(await self.videos.delete(who, request.id))

    @stream_rpc
    async def WatchVideo(self, who: Principal, request: pb.WatchVideoRequest) -> AsyncIterator[Any]:
        async for progress in self.videos.watch(who, request.id, history=request.history):
            yield convert.event(progress)

    @stream_rpc
    async def DownloadVideo(self, who: Principal, request: pb.DownloadVideoRequest) -> AsyncIterator[Any]:
        download = await self.videos.download(who, request.id)
        a = download.artifact
        yield pb.DownloadVideoResponse(header=pb.DownloadHeader(
            video_id=request.id, size_bytes=a.size_bytes, content_type=a.content_type, sha256=a.sha256,
            filename=download.filename))
        async for chunk in download.chunks:
            yield pb.DownloadVideoResponse(chunk=chunk)


class CameoServicer(_Calls, pb_grpc.CameoServiceServicer):
    def __init__(self, cameos: CameoService, principal_of: PrincipalOf) -> None:
        self.cameos, self.principal_of = cameos, principal_of

    @unary_rpc
    async def CreateCameo(self, who: Principal, request: pb.CreateCameoRequest) -> pb.Cameo:
        cameo = await self.cameos.register(who, recording=request.recording, name=request.name,
                                           consent_statement=request.consent_statement, consent=request.consent,
                                           require_approval=request.require_approval)
        return convert.cameo(cameo, [])

    @unary_rpc
    async def GetCameo(self, who: Principal, request: pb.GetCameoRequest) -> pb.Cameo:
        return convert.cameo(*await self.cameos.get(who, request.cameo_id))

    @unary_rpc
    async def ListCameos(self, who: Principal, request: pb.ListCameosRequest) -> pb.ListCameosResponse:
        return pb.ListCameosResponse(cameos=[convert.cameo(c, g) for c, g in await self.cameos.list(who)])

    @unary_rpc
    async def DeleteCameo(self, who: Principal, request: pb.DeleteCameoRequest) -> pb.DeleteCameoResponse:
        await self.cameos.delete(who, request.cameo_id)
        return pb.DeleteCameoResponse(cameo_id=request.cameo_id, deleted=True)

    @unary_rpc
    async def GrantCameo(self, who: Principal, request: pb.GrantCameoRequest) -> pb.Cameo:
        await self.cameos.grant(who, request.cameo_id, request.tenant, request.user)
        return convert.cameo(*await self.cameos.get(who, request.cameo_id))

    @unary_rpc
    async def RevokeCameo(self, who: Principal, request: pb.RevokeCameoRequest) -> pb.Cameo:
        await self.cameos.revoke(who, request.cameo_id, request.tenant, request.user)
        return convert.cameo(*await self.cameos.get(who, request.cameo_id))

    @unary_rpc
    async def ListCameoVideos(self, who: Principal, request: pb.ListCameoVideosRequest) -> pb.ListVideosResponse:
        return convert.videos_page(await self.cameos.videos_of(who, request.cameo_id, request.page_size,
                                                               request.page_token))

    @unary_rpc
    async def DeleteCameoVideo(self, who: Principal, request: pb.DeleteCameoVideoRequest) -> pb.DeleteVideoResponse:
        return convert.deleted(await self.cameos.delete_video(who, request.cameo_id, request.video_id))

    @unary_rpc
    async def ReviewCameoVideo(self, who: Principal, request: pb.ReviewCameoVideoRequest) -> pb.Video:
        job = await self.cameos.review(who, request.cameo_id, request.video_id, request.approve)
        return convert.video(job)

    @unary_rpc
    async def ListCameoNotifications(self, who: Principal, request: pb.ListCameoNotificationsRequest
                                     ) -> pb.ListCameoNotificationsResponse:
        items = await self.cameos.notifications(who, request.after_id)
        return pb.ListCameoNotificationsResponse(notifications=[convert.notification(n) for n in items])

    @stream_rpc
    async def WatchCameoNotifications(self, who: Principal,
                                      request: pb.WatchCameoNotificationsRequest) -> AsyncIterator[Any]:
        async for n in self.cameos.watch(who, request.after_id):
            yield convert.notification(n)


class AuditServicer(_Calls, pb_grpc.AuditServiceServicer):
    def __init__(self, accounts: AccountService, principal_of: PrincipalOf) -> None:
        self.accounts, self.principal_of = AsyncView(accounts), principal_of

    @unary_rpc
    async def ListAuditEvents(self, who: Principal, request: pb.ListAuditEventsRequest) -> pb.ListAuditEventsResponse:
        events = await self.accounts.audit_events(who, request.limit)
        return pb.ListAuditEventsResponse(events=[convert.audit_event(e) for e in events])
