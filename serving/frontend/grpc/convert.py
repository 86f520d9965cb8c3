"""Proto messages <-> domain objects. No decisions here, only translation."""

from __future__ import annotations

from google.protobuf.timestamp_pb2 import Timestamp

from kino.v1 import video_service_pb2 as pb
from serving.jobs import Job, JobStatus, Stage
from serving.videos import CreateVideo, Progress

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


def _ts(seconds: float | None) -> Timestamp | None:
    if seconds is None:
        return None
    t = Timestamp()
    t.FromNanoseconds(int(seconds * 1e9))
    return t


def _fps(text: str | None) -> str:
    if not text:
        return ""
    num, _, den = text.partition("/")
    return num if den in ("", "1") else text


def create_request(req: pb.CreateVideoRequest) -> CreateVideo:
    def opt(name: str):
        return getattr(req, name) if req.HasField(name) else None

    return CreateVideo(
        prompt=req.prompt, negative_prompt=req.negative_prompt or None, size=req.size or None,
        seconds=opt("seconds"), fps=req.fps or None, seed=opt("seed"), steps=opt("steps"),
        guidance_scale=opt("guidance_scale"), audio_guidance_scale=opt("audio_guidance_scale"),
        priority=opt("priority"), idempotency_key=req.idempotency_key or None, model=req.model or None)


def video(job: Job) -> pb.Video:
    p = job.params
    msg = pb.Video(
        id=job.id, status=STATUS_TO_PB.get(job.status, pb.VIDEO_STATUS_UNSPECIFIED), progress=job.progress,
        model=job.model, size=f"{p['width']}x{p['height']}", seconds=p["seconds"], fps=_fps(p.get("fps")),
        seed=p["seed"], steps=p["steps"], prompt=p["prompt"], negative_prompt=p.get("negative_prompt") or "",
        priority=job.priority, created_at=_ts(job.created_at), started_at=_ts(job.started_at),
        completed_at=_ts(job.completed_at), stage=STAGE_TO_PB[job.stage], step=job.step,
        total_steps=job.total_steps or p["steps"], attempts=job.attempts)
    if job.error_code:
        msg.error.code, msg.error.message = job.error_code, job.error_message or ""
    if job.artifact is not None:
        msg.size_bytes, msg.sha256 = job.artifact.size_bytes, job.artifact.sha256
    return msg


def event(p: Progress) -> pb.VideoEvent:
    msg = pb.VideoEvent(
        video_id=p.video_id, status=STATUS_TO_PB.get(p.status, pb.VIDEO_STATUS_UNSPECIFIED),
        stage=STAGE_TO_PB[p.stage], step=p.step, total_steps=p.total_steps, progress=p.progress,
        queue_position=p.queue_position or 0, eta_seconds=p.eta_seconds or 0.0, batch_size=p.batch_size,
        message=p.message, at=_ts(p.at), terminal=p.terminal)
    if p.error_code:
        msg.error.code, msg.error.message = p.error_code, p.error_message or ""
    return msg
