"""kino.v1 services over the domain: translation and error mapping only, no decisions."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from kino.v1 import video_service_pb2 as pb
from kino.v1 import video_service_pb2_grpc as pb_grpc
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
    """Runs a servicer's domain calls as the caller's principal, errors through the one status table."""

    principal_of: PrincipalOf

    def _run(self, context, op):
        return unary(context, self.principal_of, op)

    def _stream(self, context, op):
        return stream(context, self.principal_of, op)


class VideoServicer(_Calls, pb_grpc.VideoServiceServicer):
    def __init__(self, videos: VideoService, principal_of: PrincipalOf) -> None:
        self.videos, self.principal_of = videos, principal_of

    async def CreateVideo(self, request: pb.CreateVideoRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            job, _ = await self.videos.create(who, convert.create_request(request))
            return convert.video(job)
        return await self._run(context, op)

    async def RemixVideo(self, request: pb.RemixVideoRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            job, _ = await self.videos.remix(who, convert.remix_request(request))
            return convert.video(job)
        return await self._run(context, op)

    async def GetVideo(self, request: pb.GetVideoRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            return convert.video(await self.videos.get(who, request.id))
        return await self._run(context, op)

    async def ListVideos(self, request: pb.ListVideosRequest, context) -> pb.ListVideosResponse:
        async def op(who: Principal) -> pb.ListVideosResponse:
            page = await self.videos.list(who, status=convert.status_filter(request.status),
                                          page_size=request.page_size, page_token=request.page_token)
            return convert.videos_page(page)
        return await self._run(context, op)

    async def ListPublicVideos(self, request: pb.ListPublicVideosRequest, context) -> pb.ListPublicVideosResponse:
        async def op(_who: Principal) -> pb.ListPublicVideosResponse:
            page = await self.videos.list_public(request.page_size, request.page_token)
            return pb.ListPublicVideosResponse(videos=[convert.public_video(j) for j in page.jobs],
                                               next_page_token=page.next_token or "")
        return await self._run(context, op)

    async def SetVideoVisibility(self, request: pb.SetVideoVisibilityRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            visibility = convert.visibility(request.visibility)
            return convert.video(await self.videos.set_visibility(who, request.id, visibility))
        return await self._run(context, op)

    async def CancelVideo(self, request: pb.CancelVideoRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            return convert.video(await self.videos.cancel(who, request.id))
        return await self._run(context, op)

    async def DeleteVideo(self, request: pb.DeleteVideoRequest, context) -> pb.DeleteVideoResponse:
        async def op(who: Principal) -> pb.DeleteVideoResponse:
            return convert.deleted(await self.videos.delete(who, request.id))
        return await self._run(context, op)

    async def WatchVideo(self, request: pb.WatchVideoRequest, context):
        async def op(who: Principal):
            async for progress in self.videos.watch(who, request.id):
                yield convert.event(progress)
        async for item in self._stream(context, op):
            yield item

    async def DownloadVideo(self, request: pb.DownloadVideoRequest, context):
        async def op(who: Principal):
            download = await self.videos.download(who, request.id)
            a = download.artifact
            yield pb.DownloadVideoResponse(header=pb.DownloadHeader(
                video_id=request.id, size_bytes=a.size_bytes, content_type=a.content_type, sha256=a.sha256,
                filename=download.filename))
            async for chunk in download.chunks:
                yield pb.DownloadVideoResponse(chunk=chunk)
        async for item in self._stream(context, op):
            yield item


class CameoServicer(_Calls, pb_grpc.CameoServiceServicer):
    def __init__(self, cameos: CameoService, principal_of: PrincipalOf) -> None:
        self.cameos, self.principal_of = cameos, principal_of

    async def CreateCameo(self, request: pb.CreateCameoRequest, context) -> pb.Cameo:
        async def op(who: Principal) -> pb.Cameo:
            cameo = await self.cameos.register(who, recording=request.recording, name=request.name,
                                               consent_statement=request.consent_statement, consent=request.consent,
                                               require_approval=request.require_approval)
            return convert.cameo(cameo, [])
        return await self._run(context, op)

    async def GetCameo(self, request: pb.GetCameoRequest, context) -> pb.Cameo:
        async def op(who: Principal) -> pb.Cameo:
            return convert.cameo(*await self.cameos.get(who, request.cameo_id))
        return await self._run(context, op)

    async def ListCameos(self, request: pb.ListCameosRequest, context) -> pb.ListCameosResponse:
        async def op(who: Principal) -> pb.ListCameosResponse:
            return pb.ListCameosResponse(cameos=[convert.cameo(c, g) for c, g in await self.cameos.list(who)])
        return await self._run(context, op)

    async def DeleteCameo(self, request: pb.DeleteCameoRequest, context) -> pb.DeleteCameoResponse:
        async def op(who: Principal) -> pb.DeleteCameoResponse:
            await self.cameos.delete(who, request.cameo_id)
            return pb.DeleteCameoResponse(cameo_id=request.cameo_id, deleted=True)
        return await self._run(context, op)

    async def GrantCameo(self, request: pb.GrantCameoRequest, context) -> pb.Cameo:
        async def op(who: Principal) -> pb.Cameo:
            await self.cameos.grant(who, request.cameo_id, request.tenant, request.user)
            return convert.cameo(*await self.cameos.get(who, request.cameo_id))
        return await self._run(context, op)

    async def RevokeCameo(self, request: pb.RevokeCameoRequest, context) -> pb.Cameo:
        async def op(who: Principal) -> pb.Cameo:
            await self.cameos.revoke(who, request.cameo_id, request.tenant, request.user)
            return convert.cameo(*await self.cameos.get(who, request.cameo_id))
        return await self._run(context, op)

    async def ListCameoVideos(self, request: pb.ListCameoVideosRequest, context) -> pb.ListVideosResponse:
        async def op(who: Principal) -> pb.ListVideosResponse:
            return convert.videos_page(await self.cameos.videos_of(who, request.cameo_id, request.page_size,
                                                                   request.page_token))
        return await self._run(context, op)

    async def DeleteCameoVideo(self, request: pb.DeleteCameoVideoRequest, context) -> pb.DeleteVideoResponse:
        async def op(who: Principal) -> pb.DeleteVideoResponse:
            return convert.deleted(await self.cameos.delete_video(who, request.cameo_id, request.video_id))
        return await self._run(context, op)

    async def ReviewCameoVideo(self, request: pb.ReviewCameoVideoRequest, context) -> pb.Video:
        async def op(who: Principal) -> pb.Video:
            job = await self.cameos.review(who, request.cameo_id, request.video_id, request.approve)
            return convert.video(job)
        return await self._run(context, op)

    async def ListCameoNotifications(self, request: pb.ListCameoNotificationsRequest,
                                     context) -> pb.ListCameoNotificationsResponse:
        async def op(who: Principal) -> pb.ListCameoNotificationsResponse:
            items = await self.cameos.notifications(who, request.after_id)
            return pb.ListCameoNotificationsResponse(notifications=[convert.notification(n) for n in items])
        return await self._run(context, op)

    async def WatchCameoNotifications(self, request: pb.WatchCameoNotificationsRequest, context):
        async def op(who: Principal):
            async for n in self.cameos.watch(who, request.after_id):
                yield convert.notification(n)
        async for item in self._stream(context, op):
            yield item


class AuditServicer(_Calls, pb_grpc.AuditServiceServicer):
    def __init__(self, accounts: AccountService, principal_of: PrincipalOf) -> None:
        self.accounts, self.principal_of = AsyncView(accounts), principal_of

    async def ListAuditEvents(self, request: pb.ListAuditEventsRequest, context) -> pb.ListAuditEventsResponse:
        async def op(who: Principal) -> pb.ListAuditEventsResponse:
            events = await self.accounts.audit_events(who, request.limit)
            return pb.ListAuditEventsResponse(events=[convert.audit_event(e) for e in events])
        return await self._run(context, op)
