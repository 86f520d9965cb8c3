"""Proto messages <-> domain objects. No decisions here, only translation."""

from __future__ import annotations

from fractions import Fraction

from google.protobuf.timestamp_pb2 import Timestamp

from kino_api.v1 import video_service_pb2 as pb
from serving.accounts import AuditEvent
from serving.cameos.models import Cameo, Grant, Notification
from serving.errors import InvalidArgument
from serving.jobs import Job, JobStatus, Review, Stage, Visibility
from serving.videos import CreateVideo, Page, Progress, RemixVideo

STATUS_TO_PB = {
    JobStatus.QUEUED: pb.VIDEO_STATUS_QUEUED,
    JobStatus.IN_PROGRESS: pb.VIDEO_STATUS_IN_PROGRESS,
    JobStatus.COMPLETED: pb.VIDEO_STATUS_COMPLETED,
    JobStatus.FAILED: pb.VIDEO_STATUS_FAILED,
    JobStatus.CANCELLED: pb.VIDEO_STATUS_CANCELLED,
}
PB_TO_STATUS = {v: k for k, v in STATUS_TO_PB.items()}
STAGE_TO_PB = {
    Stage.QUEUED: pb.STAGE_QUEUED,
    Stage.ENCODING: pb.STAGE_ENCODING,
    Stage.DENOISING: pb.STAGE_DENOISING,
    Stage.DECODING: pb.STAGE_DECODING,
    Stage.DONE: pb.STAGE_DONE,
}


CACHE_TO_PB = {"off": pb.STEP_CACHE_OFF, "balanced": pb.STEP_CACHE_BALANCED, "fast": pb.STEP_CACHE_FAST}
PB_TO_CACHE = {v: k for k, v in CACHE_TO_PB.items()}
VISIBILITY_TO_PB = {Visibility.PRIVATE: pb.VISIBILITY_PRIVATE, Visibility.PUBLIC: pb.VISIBILITY_PUBLIC}
REVIEW_TO_PB = {Review.NONE: pb.REVIEW_NONE, Review.PENDING: pb.REVIEW_PENDING, Review.APPROVED: pb.REVIEW_APPROVED}


def status_filter(value: int) -> str | None:
    """A ListVideos status filter as the domain's status name (which the domain checks)."""
    if value == pb.VIDEO_STATUS_UNSPECIFIED:
        return None
    return PB_TO_STATUS[value].value if value in PB_TO_STATUS else str(value)


def visibility(value: int) -> Visibility:
    if value in (pb.VISIBILITY_UNSPECIFIED, pb.VISIBILITY_PRIVATE):
        return Visibility.PRIVATE
    if value == pb.VISIBILITY_PUBLIC:
        return Visibility.PUBLIC
    raise InvalidArgument(f"visibility={value} is not allowed: PRIVATE or PUBLIC", field="visibility")


def _ts(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _fps(fps: Fraction | None) -> str:
    if fps is None:
        return ""
    return str(fps.numerator) if fps.denominator == 1 else f"{fps.numerator}/{fps.denominator}"


def cache(value: int) -> str | None:
    """A StepCache as the domain's name (an unknown number goes on as text, for the domain to refuse)."""
    if value == pb.STEP_CACHE_UNSPECIFIED:
        return None
    return PB_TO_CACHE.get(value, str(value))


def loras(refs) -> tuple[tuple[str, float], ...]:
    """(name, scale) pairs from `LoraRef`s. The scale is a float32 on the wire: its shortest decimal (0.8, not
    0.800000011920929) is what the client wrote, and what the Video and the job record give back."""
    return tuple((ref.name, float(f"{ref.scale:.7g}")) for ref in refs)


def create_request(req: pb.CreateVideoRequest) -> CreateVideo:
    def opt(name: str):
        return getattr(req, name) if req.HasField(name) else None

    return CreateVideo(
        prompt=req.prompt, negative_prompt=req.negative_prompt or None, size=req.size or None,
        seconds=opt("seconds"), fps=req.fps or None, seed=opt("seed"), steps=opt("steps"),
        guidance_scale=opt("guidance_scale"), audio_guidance_scale=opt("audio_guidance_scale"),
        priority=opt("priority"), idempotency_key=req.idempotency_key or None, model=req.model or None,
        image=req.image or None, cameo_id=req.cameo_id or None, visibility=visibility(req.visibility),
        enhance_prompt=req.enhance_prompt, cache=cache(req.cache), two_stage=opt("two_stage"),
        loras=loras(req.loras))


def remix_request(req: pb.RemixVideoRequest) -> RemixVideo:
    return RemixVideo(video_id=req.video_id, prompt=req.prompt,
                      strength=req.strength if req.HasField("strength") else None,
                      seed=req.seed if req.HasField("seed") else None,
                      idempotency_key=req.idempotency_key or None, visibility=visibility(req.visibility),
                      enhance_prompt=req.enhance_prompt, loras=loras(req.loras) or None)


def video(job: Job) -> pb.Video:
    p = job.generation
    msg = pb.Video(
        id=job.id, status=STATUS_TO_PB.get(job.status, pb.VIDEO_STATUS_UNSPECIFIED), progress=job.progress,
        model=job.model, size=p.delivered_size, seconds=p.seconds, fps=_fps(p.fps), seed=p.seed, steps=p.steps,
        prompt=p.prompt, negative_prompt=p.negative_prompt or "",
        priority=job.priority, created_at=_ts(job.created_at), started_at=_ts(job.started_at),
        completed_at=_ts(job.completed_at), stage=STAGE_TO_PB[job.stage], step=job.step,
        total_steps=job.total_steps or p.steps, attempts=job.attempts,
        visibility=VISIBILITY_TO_PB[job.visibility], parent_id=job.conditioning.parent_id or "",
        cameo_id=job.conditioning.cameo_id or "", review=REVIEW_TO_PB[job.review],
        image_conditioned=bool(job.conditioning.image_key and not job.conditioning.cameo_id),
        enhanced_prompt=job.enhanced_prompt or "", cache=CACHE_TO_PB.get(p.cache, pb.STEP_CACHE_UNSPECIFIED),
        two_stage=bool(p.two_stage), loras=[pb.LoraRef(name=n, scale=s) for n, s in p.loras])
    if job.error_code:
        msg.error.code, msg.error.message = job.error_code, job.error_message or ""
    if job.artifact is not None:
        msg.size_bytes, msg.sha256 = job.artifact.size_bytes, job.artifact.sha256
    if job.resumed_from_step is not None:
        msg.resumed_from_step = job.resumed_from_step
    return msg


def videos_page(page: Page) -> pb.ListVideosResponse:
    return pb.ListVideosResponse(videos=[video(j) for j in page.jobs], next_page_token=page.next_token or "")


def deleted(job: Job) -> pb.DeleteVideoResponse:
    return pb.DeleteVideoResponse(id=job.id, deleted=job.status == JobStatus.DELETED)


def event(p: Progress) -> pb.VideoEvent:
    msg = pb.VideoEvent(
        video_id=p.video_id, status=STATUS_TO_PB.get(p.status, pb.VIDEO_STATUS_UNSPECIFIED),
        stage=STAGE_TO_PB[p.stage], step=p.step, total_steps=p.total_steps, progress=p.progress,
        queue_position=p.queue_position or 0, eta_seconds=p.eta_seconds or 0.0, batch_size=p.batch_size,
        message=p.message, at=_ts(p.at), terminal=p.terminal)
    if p.error_code:
        msg.error.code, msg.error.message = p.error_code, p.error_message or ""
    return msg


def public_video(job: Job) -> pb.PublicVideo:
    """What the public feed shows: the video, nothing of its owner (no tenant, user or seed)."""
    p = job.generation
    return pb.PublicVideo(id=job.id, prompt=p.prompt, size=p.delivered_size, seconds=p.seconds, fps=_fps(p.fps),
                          created_at=_ts(job.created_at),
                          parent_id=job.conditioning.parent_id or "",
                          size_bytes=job.artifact.size_bytes if job.artifact else 0)


def cameo(c: Cameo, grants: list[Grant] | None) -> pb.Cameo:
    msg = pb.Cameo(id=c.id, name=c.name, require_approval=c.require_approval, consent_statement=c.consent_statement,
                   consent_at=_ts(c.consent_at), consent_key_id=c.consent_key_id, has_voice=c.voice_key is not None,
                   created_at=_ts(c.created_at))
    for g in grants or []:
        msg.grants.append(pb.CameoGrant(tenant=g.tenant, user=g.user, granted_at=_ts(g.granted_at),
                                        revoked_at=_ts(g.revoked_at)))
    return msg


def notification(n: Notification) -> pb.CameoNotification:
    return pb.CameoNotification(id=n.id, cameo_id=n.cameo_id, kind=n.kind, video_id=n.video_id,
                                creator_tenant=n.creator_tenant, message=n.message, at=_ts(n.at))


def audit_event(e: AuditEvent) -> pb.AuditEvent:
    return pb.AuditEvent(id=e.id, kind=e.kind, category=e.category, reason=e.reason, at=_ts(e.at),
                         field=str(e.detail.get("field", "")))
