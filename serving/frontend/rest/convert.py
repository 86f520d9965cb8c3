"""Domain objects -> the OpenAI Videos API JSON shapes."""

from __future__ import annotations

from typing import Any

from engines.adapter_files import AdapterSummary
from serving.jobs import Job, JobStatus
from serving.videos import Page

# OpenAI's statuses are queued | in_progress | completed | failed: a cancelled job is a failed one
# whose error code says "cancelled".
_STATUS = {JobStatus.QUEUED: "queued", JobStatus.IN_PROGRESS: "in_progress", JobStatus.COMPLETED: "completed",
           JobStatus.FAILED: "failed", JobStatus.CANCELLED: "failed"}


def _seconds(value: float) -> str:
    return f"{value:g}"


def video(job: Job) -> dict[str, Any]:
    p = job.generation
    out: dict[str, Any] = {
        "id": job.id,
        "object": "video",
        "created_at": int(job.created_at),
        "completed_at": int(job.completed_at) if job.completed_at else None,
        "expires_at": None,
        "model": job.model,
        "progress": int(round(job.progress * 100)),
        "prompt": p.prompt,
        "remixed_from_video_id": job.conditioning.parent_id,
        "seconds": _seconds(p.seconds),
        "size": p.delivered_size,
        # Kino's extras: the size the model generated, and how it became `size` (null, "crop" or "scale").
        "generated_size": p.size,
        "size_fit": p.fit,
        # and the step its last attempt resumed at from its denoise checkpoint (null: it started at step 0).
        "resumed_from_step": job.resumed_from_step,
        # and the LoRA adapters it was made with ([]: none)
        "loras": [{"name": name, "scale": scale} for name, scale in p.loras],
        "status": _STATUS.get(job.status, "failed"),
        "error": None,
    }
    if job.error_code:
        out["error"] = {"code": job.error_code, "message": job.error_message or ""}
    return out


POLL_AFTER_MS = (500, 10_000)  # bounds of the openai-poll-after-ms hint


def poll_after_ms(job: Job) -> int | None:
    """When a client polling a queued or running video should ask again (the `openai-poll-after-ms` header):
    a quarter of the job's ETA, within POLL_AFTER_MS; a second while no ETA is known; None once it is done."""
    if job.status not in (JobStatus.QUEUED, JobStatus.IN_PROGRESS):
        return None
    lo, hi = POLL_AFTER_MS
    if job.eta_seconds is None:
        return 1000
    return int(min(hi, max(lo, job.eta_seconds * 1000 / 4)))


def page(p: Page) -> dict[str, Any]:
    data = [video(j) for j in p.jobs]
    return {"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
            "last_id": data[-1]["id"] if data else None, "has_more": p.has_more}


def deleted(job: Job) -> dict[str, Any]:
    return {"id": job.id, "object": "video.deleted", "deleted": job.status == JobStatus.DELETED}


def loras(adapters: list[AdapterSummary]) -> dict[str, Any]:
    return {"object": "list", "data": [{"object": "lora", "name": a.name, "rank": a.rank, "modules": a.modules}
                                       for a in adapters]}
