"""Cameos: register with consent, grant and revoke use, review held videos, notify the owner.

A cameo is owned by the (tenant, user) that registered it. Only the owner manages it; anyone
else learns nothing about it beyond what a live grant lets them do (use it in a video).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
import uuid
from collections.abc import AsyncIterator

from serving.accounts import Principal
from serving.artifacts import ArtifactStore
from serving.async_view import AsyncView, in_thread
from serving.cameos.consent import owns, usable_cameo
from serving.cameos.models import ANY_USER, Cameo, Grant, Notification, owner_topic
from serving.cameos.recording import extract
from serving.cameos.store import CameoStore
from serving.config import KinoConfig
from serving.control_plane.progress import ProgressFeed
from serving.errors import FailedPrecondition, InvalidArgument, NotFound, Unavailable
from serving.jobs import Job, JobStatus, JobStore, Review
from serving.videos import DispatcherLink, Page, VideoService
from serving.videos.parsing import page_size

MAX_TEXT = 2000
NO_FEED_POLL_SECONDS = 0.2  # a watcher without a progress feed reads the store this often
FALLBACK_SECONDS = 5.0  # with a feed, it also reads the store this often: a nudge lost with a hub being replaced


class CameoService:
    def __init__(self, config: KinoConfig, cameos: CameoStore, jobs: JobStore, artifacts: ArtifactStore,
                 videos: VideoService, dispatcher: DispatcherLink, progress: ProgressFeed | None = None) -> None:
        """`progress`: where a notification's write wakes its owner's watchers (without it they poll)."""
        self.config, self.videos, self.dispatcher, self.progress = config, videos, dispatcher, progress
        self.cameos, self.jobs, self.artifacts = AsyncView(cameos), AsyncView(jobs), AsyncView(artifacts)

    async def _notify(self, cameo: Cameo, kind: str, video_id: str, creator_tenant: str, message: str = "") -> None:
        """Tell a cameo's owner: the store keeps it, a nudge wakes the owner's watchers."""
        await self.cameos.notify(cameo, kind, video_id, creator_tenant, message)
        if self.progress is not None:
            self.progress.nudge(owner_topic(cameo.owner_tenant))

    # -- the owner's cameo -------------------------------------------------------------------
    async def register(self, principal: Principal, *, recording: bytes, name: str, consent_statement: str,
                       consent: bool, require_approval: bool) -> Cameo:
        if not consent:
            raise InvalidArgument("consent is required: set consent=true to agree to the consent_statement",
                                  field="consent")
        if not consent_statement.strip() or len(consent_statement) > MAX_TEXT:
            raise InvalidArgument(f"consent_statement is not allowed: the words you agree to, 1 to {MAX_TEXT} "
                                  "characters", field="consent_statement")
        if not name.strip() or len(name) > 100:
            raise InvalidArgument("name is not allowed: 1 to 100 characters", field="name")
        limit = self.config.cameos.max_recording_bytes
        if not recording or len(recording) > limit:
            raise InvalidArgument(f"recording is not allowed: 1 byte to {limit} bytes, got {len(recording)}",
                                  field="recording")
        media = await in_thread(extract, recording)
        cameo_id = f"cameo_{uuid.uuid4().hex}"
        reference_key = f"cameos/{cameo_id}/reference.png"
        await self.artifacts.put_png(reference_key, media.reference)
        voice_key = None
        if media.voice_wav is not None:
            voice_key = f"cameos/{cameo_id}/voice.wav"
            await self.artifacts.put_bytes(voice_key, media.voice_wav)
        now = time.time()
        cameo = Cameo(id=cameo_id, owner_tenant=principal.tenant_id, owner_user=principal.user, name=name.strip(),
                      require_approval=require_approval, consent_statement=consent_statement,
                      consent_at=now, consent_key_id=principal.key_id or "local", reference_key=reference_key,
                      voice_key=voice_key, created_at=now)
        return await self.cameos.create(cameo)

    async def owned(self, principal: Principal, cameo_id: str) -> Cameo:
        """The cameo if the caller owns it; NOT_FOUND otherwise (its existence is not revealed)."""
        if not cameo_id:
            raise InvalidArgument("cameo_id is required", field="cameo_id")
        try:
            cameo = await self.cameos.get(cameo_id)
        except NotFound:
            cameo = None
        if cameo is None or not owns(principal, cameo):
            raise NotFound(f"cameo_id {cameo_id!r} not found", field="cameo_id")
        return cameo

    async def get(self, principal: Principal, cameo_id: str) -> tuple[Cameo, list[Grant] | None]:
        """Owners see the grants; a grantee sees the cameo it may use, without them."""
        try:
            cameo = await self.owned(principal, cameo_id)
            return cameo, await self.cameos.grants(cameo.id)
        except NotFound:
            cameo = await in_thread(usable_cameo, self.cameos.blocking, principal, cameo_id)
            return cameo, None

    async def list(self, principal: Principal) -> list[tuple[Cameo, list[Grant]]]:
        cameos = await self.cameos.owned(principal.tenant_id, principal.user)
        return [(c, await self.cameos.grants(c.id)) for c in cameos]

    async def delete(self, principal: Principal, cameo_id: str) -> None:
        cameo = await self.owned(principal, cameo_id)
        for job in await self.jobs.active_with_cameo(cameo.id):
            await self._stop(cameo, job, "the cameo was deleted by its owner")
        await self.cameos.delete(cameo.id)

    # -- consent -------------------------------------------------------------------------------
    async def grant(self, principal: Principal, cameo_id: str, tenant: str, user: str) -> Cameo:
        cameo = await self.owned(principal, cameo_id)
        if not tenant:
            raise InvalidArgument("tenant is required: the tenant you grant use to", field="tenant")
        await self.cameos.grant(cameo.id, tenant, user or ANY_USER)
        return cameo

    async def revoke(self, principal: Principal, cameo_id: str, tenant: str, user: str) -> Cameo:
        """Revoke, then stop every queued or running video that no longer has consent."""
        cameo = await self.owned(principal, cameo_id)
        if not tenant:
            raise InvalidArgument("tenant is required: the tenant whose grant you revoke", field="tenant")
        await self.cameos.revoke(cameo.id, tenant, user or ANY_USER)
        for job in await self.jobs.active_with_cameo(cameo.id):
            if not await self.cameos.may_use(cameo, job.tenant, job.user):
                await self._stop(cameo, job, "the cameo owner revoked consent")
        return cameo

    async def _stop(self, cameo: Cameo, job: Job, why: str) -> None:
        stopped = await self.jobs.request_cancel(job.id, reason="consent_revoked", message=why)
        if stopped.status == JobStatus.IN_PROGRESS:
            await self.dispatcher.cancel(job.id)
        await self._notify(cameo, "stopped", job.id, job.tenant, why)

    # -- videos of the owner's likeness ------------------------------------------------------------
    async def videos_of(self, principal: Principal, cameo_id: str, size: int | None = None,
                        page_token: str | None = None) -> Page:
        cameo = await self.owned(principal, cameo_id)
        jobs, token = await self.jobs.list_by_cameo(cameo.id, page_size=page_size(size), page_token=page_token or None)
        return Page(jobs, token)

    async def _video_of(self, cameo: Cameo, video_id: str) -> Job:
        try:
            job = await self.jobs.get(video_id)
        except NotFound:
            job = None
        if job is None or job.conditioning.cameo_id != cameo.id:
            raise NotFound(f"video_id {video_id!r} not found among the videos of this cameo", field="video_id")
        return job

    async def delete_video(self, principal: Principal, cameo_id: str, video_id: str) -> Job:
        """The owner removes any video of them, whoever made it (a running one is stopped first)."""
        cameo = await self.owned(principal, cameo_id)
        job = await self._video_of(cameo, video_id)
        await self._stop_and_delete(cameo, job, "removed by the cameo owner")
        await self._notify(cameo, "deleted", video_id, job.tenant, "deleted by the owner")
        return job

    async def _stop_and_delete(self, cameo: Cameo, job: Job, why: str) -> Job:
        """Delete a video of the owner; one still queued or running is stopped first (within a step).
        Shielded: a caller whose deadline passes while the job stops does not leave it undeleted."""
        return await asyncio.shield(self._stop_then_delete(cameo, job, why))

    async def _stop_then_delete(self, cameo: Cameo, job: Job, why: str, wait_seconds: float = 60.0) -> Job:
        if not job.status.terminal:
            await self._stop(cameo, job, why)
            deadline = asyncio.get_running_loop().time() + wait_seconds
            while not (job := await self.jobs.get(job.id)).status.terminal:
                if asyncio.get_running_loop().time() > deadline:
                    raise Unavailable(f"video_id {job.id} is still stopping; delete it again in a moment",
                                      field="video_id")
                await asyncio.sleep(0.1)
        return await self.videos.delete_job(job.id)

    async def review(self, principal: Principal, cameo_id: str, video_id: str, approve: bool) -> Job:
        cameo = await self.owned(principal, cameo_id)
        job = await self._video_of(cameo, video_id)
        if job.review != Review.PENDING:
            raise FailedPrecondition(f"video_id {video_id} is not held for review (review: {job.review.value})",
                                     field="video_id")
        if approve:
            if job.status != JobStatus.COMPLETED:
                raise FailedPrecondition(f"video_id {video_id} is {job.status.value}; approve it once completed",
                                         field="video_id")
            job = await self.jobs.set_review(video_id, Review.APPROVED)
            await self._notify(cameo, "approved", video_id, job.tenant, "approved")
            return job
        deleted = await self._stop_and_delete(cameo, job, "rejected by the cameo owner")
        await self._notify(cameo, "rejected", video_id, job.tenant,
                                "rejected by the cameo owner: deleted")
        return deleted

    # -- notifications ---------------------------------------------------------------------------
    async def notifications(self, principal: Principal, after_id: int = 0) -> list[Notification]:
        mine = await self.cameos.owned(principal.tenant_id, principal.user)
        return await self.cameos.notifications([c.id for c in mine], after_id=after_id)

    async def watch(self, principal: Principal, after_id: int = 0) -> AsyncIterator[Notification]:
        """The owner's notifications after `after_id`, then each new one as it is written: a write nudges the
        owner's watchers (`owner_topic`) and they read the store; they also read it every FALLBACK_SECONDS, for
        a nudge that was lost (another cluster's front door during an upgrade, a hub being replaced)."""
        nudges = await self.progress.nudges(owner_topic(principal.tenant_id)) if self.progress is not None else None
        woken: asyncio.Future | None = asyncio.ensure_future(anext(nudges)) if nudges is not None else None
        try:
            while True:
                for n in await self.notifications(principal, after_id):
                    after_id = n.id
                    yield n
                if woken is None:
                    await asyncio.sleep(NO_FEED_POLL_SECONDS)
                    continue
                done, _ = await asyncio.wait({woken}, timeout=FALLBACK_SECONDS)
                if done:
                    try:
                        woken.result()
                        woken = asyncio.ensure_future(anext(nudges))
                    except (StopAsyncIteration, Exception):  # noqa: BLE001 - the feed went away: poll
                        woken = None
        finally:
            if woken is not None:
                woken.cancel()
                with contextlib.suppress(BaseException):
                    await woken
            if nudges is not None:
                await nudges.aclose()


def notify_finished(cameos: CameoStore, job: Job) -> str | None:
    """When a job using a cameo completes, its owner hears of it (held ones wait for approval); the topic of the
    watchers to wake (`owner_topic`), or None."""
    if not job.conditioning.cameo_id or job.status != JobStatus.COMPLETED:
        return None
    try:
        cameo = cameos.get(job.conditioning.cameo_id)
    except NotFound:
        return None
    held = job.review == Review.PENDING
    cameos.notify(cameo, "held" if held else "completed", job.id, job.tenant,
                  "waiting for your approval" if held else "")
    return owner_topic(cameo.owner_tenant)
