"""OpenAI-compatible routes over the domain services: parse, call, translate; no decisions here.

    POST   /v1/videos                   create (multipart or JSON: prompt, model, seconds, size, input_reference
                                        as an upload or {image_url | file_id}; Kino's extras: cache = off |
                                        balanced | fast, two_stage = true | false, loras = [{name, scale}])
    GET    /v1/videos                   list (after, limit, order)
    GET    /v1/loras                    the LoRA adapters `loras` may name (Kino's extra)
    GET    /v1/videos/{id}              retrieve (openai-poll-after-ms while queued or in progress)
    DELETE /v1/videos/{id}              delete (a queued or running video is cancelled, then deleted)
    GET    /v1/videos/{id}/content      download (variant=video | thumbnail | spritesheet)
    POST   /v1/videos/{id}/remix        remix (prompt; JSON or multipart)
    POST   /v1/videos/edits             edit: a remix of video.id with the new prompt
    POST   /v1/videos/extensions        501 (see `extensions`)
    POST   /v1/videos/characters        a character is a Kino cameo: name, video (the recording) and Kino's consent
                                        fields (consent_statement, consent=true, require_approval)
    GET    /v1/videos/characters/{id}   the owner's cameo, or one granted to the caller

Request bodies are pydantic models: a field of the wrong JSON type (`"size": 720`) is a 400 naming it, an
unknown field is a 400 `unknown_parameter` (never silently ignored).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any, TypeVar

from fastapi import FastAPI, Request, Response
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from pydantic import BaseModel, ValidationError
from starlette.datastructures import UploadFile
from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.errors import EngineError
from serving.accounts import Principal
from serving.async_view import in_thread
from serving.cameos.models import Cameo
from serving.cameos.service import CameoService
from serving.errors import InvalidArgument, KinoError, Unimplemented
from serving.frontend.common import api_key
from serving.frontend.rest import convert
from serving.frontend.rest.errors import error_response, http_response, pydantic_error, validation_response
from serving.frontend.rest.schemas import (
    ERRORS,
    Character,
    CharacterBody,
    CreateBody,
    EditBody,
    LoraList,
    LoraRef,
    RemixBody,
    Video,
    VideoDeleted,
    VideoList,
    register_schemas,
    request_body,
)
from serving.jobs import Job
from serving.metrics import Metrics, NoMetrics
from serving.videos import CreateVideo, RemixVideo, VideoService
from serving.videos.parsing import DEFAULT_PAGE_SIZE
from serving.videos.references import ImageReference

log = logging.getLogger(__name__)
Authenticate = Callable[[str | None], Principal]
M = TypeVar("M", bound=BaseModel)


# The characters form: OpenAI's name and video, and Kino's consent fields.
CHARACTER_FORM = {"requestBody": {"required": True, "content": {"multipart/form-data": {"schema": {
    "type": "object", "required": ["name", "video"], "properties": {
        "name": {"type": "string"}, "video": {"type": "string", "format": "binary"},
        "consent_statement": {"type": "string"}, "consent": {"type": "boolean"},
        "require_approval": {"type": "boolean"}}}}}}}


def _seconds(value: str | int | float | None) -> float | None:
    """OpenAI's "4" / "8" / "12", and any number of seconds (as text or a number)."""
    if value is None or value == "":
        return None
    try:
        return float(value)
    except ValueError:
        raise InvalidArgument(f"seconds={value!r} is not allowed: a number of seconds, e.g. \"4\"",
                              field="seconds") from None


def _nested(fields: dict[str, Any]) -> dict[str, Any]:
    """Form fields as the SDKs flatten objects (`input_reference[image_url]`) back into objects."""
    out: dict[str, Any] = {}
    for key, value in fields.items():
        if "[" in key and key.endswith("]"):
            outer, inner = key[:-1].split("[", 1)
            target = out.setdefault(outer, {})
            if isinstance(target, dict):
                target[inner] = value
                continue
        out[key] = value
    return out


async def _body(request: Request) -> tuple[dict[str, Any], dict[str, UploadFile]]:
    """A request's fields (JSON object or multipart form) and its uploaded files."""
    if request.headers.get("content-type", "").startswith("multipart/form-data"):
        form = await request.form()
        files = {k: v for k, v in form.multi_items() if isinstance(v, UploadFile)}
        return _nested({k: v for k, v in form.multi_items() if isinstance(v, str)}), files
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgument("body is not allowed: it must be a JSON object (or multipart form data)",
                              field="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"body is not allowed: a JSON object, not {type(body).__name__}", field="body")
    return body, {}


def _parse(model: type[M], fields: dict[str, Any]) -> M:
    try:
        return model.model_validate(fields)
    except ValidationError as e:
        raise pydantic_error(list(e.errors())) from None


def _loras(refs: list[LoraRef] | None) -> tuple[tuple[str, float], ...] | None:
    return None if refs is None else tuple((r.name, float(r.scale)) for r in refs)


def _character(cameo: Cameo) -> dict[str, Any]:
    return {"id": cameo.id, "object": "character", "created_at": int(cameo.created_at), "name": cameo.name}


def create_rest_app(videos: VideoService, authenticate: Authenticate, metrics: Metrics | None = None,
                    cameos: CameoService | None = None) -> FastAPI:
    """The OpenAI-compatible Videos API as a FastAPI app over the domain (`cameos`: OpenAI's characters;
    without it those routes answer 501)."""
    app = FastAPI(title="Kino Videos API (OpenAI-compatible)", docs_url=None, redoc_url=None)
    sink = metrics or NoMetrics()
    generated = app.openapi

    def openapi() -> dict[str, Any]:  # the bodies the routes parse themselves, with their nested models
        if app.openapi_schema is None:
            app.openapi_schema = register_schemas(generated(), CreateBody, RemixBody, EditBody)
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    async def principal(request: Request) -> Principal:
        return await in_thread(authenticate, api_key(request.headers))

    # Domain and engine errors become their status; anything else a 500 in the same shape. (A
    # handler for bare Exception would sit in Starlette's ServerErrorMiddleware, which re-raises.)
    @app.exception_handler(KinoError)
    @app.exception_handler(EngineError)
    async def _known(_request: Request, exc: Exception) -> JSONResponse:
        return error_response(exc)

    @app.exception_handler(RequestValidationError)
    async def _invalid(_request: Request, exc: RequestValidationError) -> JSONResponse:
        return validation_response(exc)

    @app.exception_handler(StarletteHTTPException)
    async def _routing(_request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return http_response(exc)

    @app.middleware("http")
    async def _unexpected(request: Request, call_next):
        try:
            response = await call_next(request)
        except Exception as exc:  # noqa: BLE001 - answered, logged, never a dropped connection
            log.exception("REST %s %s failed", request.method, request.url.path)
            response = error_response(exc)
        route = request.scope.get("route")
        sink.api_call("rest", f"{request.method} {getattr(route, 'path', 'unknown')}", str(response.status_code))
        return response

    def video_response(job: Job) -> JSONResponse:
        poll = convert.poll_after_ms(job)
        return JSONResponse(convert.video(job), headers={"openai-poll-after-ms": str(poll)} if poll else None)

    @app.post("/v1/videos", responses={200: {"model": Video}, **ERRORS},
              openapi_extra=request_body(("application/json", CreateBody)))
    async def create(request: Request) -> JSONResponse:
        who = await principal(request)
        fields, files = await _body(request)
        upload = files.pop("input_reference", None)
        if files:
            name = next(iter(files))
            raise InvalidArgument(f"{name} is not a parameter of this call", field=name)
        if upload is not None and "input_reference" in fields:
            raise InvalidArgument("input_reference is not allowed twice: an uploaded file or an image_url, not both",
                                  field="input_reference")
        body = _parse(CreateBody, fields)
        ref = body.input_reference
        req = CreateVideo(prompt=body.prompt, size=body.size or None, seconds=_seconds(body.seconds),
                          model=body.model or None, image=await upload.read() if upload is not None else None,
                          image_ref=ImageReference(image_url=ref.image_url, file_id=ref.file_id) if ref else None,
                          idempotency_key=request.headers.get("idempotency-key") or None,
                          cache=body.cache or None, two_stage=body.two_stage, cameo_id=body.character_id or None,
                          loras=_loras(body.loras) or (), openai_api=True)
        job, _ = await videos.create(who, req)
        return video_response(job)

    @app.get("/v1/loras", responses={200: {"model": LoraList}, **ERRORS})
    async def list_loras(request: Request) -> JSONResponse:
        """Kino's extra: the LoRA adapters a create's `loras` may name (the server's model.lora.dir)."""
        return JSONResponse(convert.loras(await videos.loras(await principal(request))))

    @app.get("/v1/videos", responses={200: {"model": VideoList}, **ERRORS})
    async def list_videos(request: Request, after: str | None = None, limit: int = DEFAULT_PAGE_SIZE,
                          order: str = "desc") -> JSONResponse:
        who = await principal(request)
        if order not in ("asc", "desc"):
            raise InvalidArgument(f"order={order!r} is not allowed: asc or desc", field="order")
        page = await videos.list(who, page_size=limit, page_size_field="limit", after_id=after,
                                 ascending=order == "asc")
        return JSONResponse(convert.page(page))

    # Before /v1/videos/{video_id}: these paths are not video ids.
    @app.post("/v1/videos/edits", responses={200: {"model": Video}, **ERRORS},
              openapi_extra=request_body(("application/json", EditBody)))
    async def edit(request: Request) -> JSONResponse:
        """OpenAI's edit is a new video from a completed one and a prompt: Kino's remix, its source the start."""
        who = await principal(request)
        fields, files = await _body(request)
        if "video" in files:
            raise InvalidArgument("video is not allowed as an uploaded file here: pass video[id], a completed "
                                  "video of this server (an uploaded clip cannot be edited yet)", field="video")
        body = _parse(EditBody, fields)
        job, _ = await videos.remix(who, RemixVideo(video_id=body.video.id, prompt=body.prompt,
                                                    idempotency_key=request.headers.get("idempotency-key")))
        return video_response(job)

    @app.post("/v1/videos/extensions", responses=ERRORS)
    async def extensions(request: Request) -> JSONResponse:
        await principal(request)
        raise Unimplemented("POST /v1/videos/extensions is not implemented: this server's model path conditions "
                            "on a first frame or a whole source clip, not on a clip's last frames; remix "
                            "(/v1/videos/{id}/remix) or edit (/v1/videos/edits) a video instead", field="video")

    def character_service() -> CameoService:
        if cameos is None:
            raise Unimplemented("/v1/videos/characters is not served here: characters are Kino cameos, which this "
                                "server does not offer over REST", field=None)
        return cameos

    @app.post("/v1/videos/characters", responses={200: {"model": Character}, **ERRORS},
              openapi_extra=CHARACTER_FORM)
    async def create_character(request: Request) -> JSONResponse:
        """A character is a Kino cameo, under the same consent rules: the recording, the words the person agrees
        to and consent=true (Kino's fields beside OpenAI's name and video); grants and revocation over gRPC."""
        who = await principal(request)
        service = character_service()
        fields, files = await _body(request)
        upload = files.pop("video", None)
        if upload is None:
            raise InvalidArgument("video is required: the recording of the person (an MP4 upload)", field="video")
        body = _parse(CharacterBody, fields)
        cameo = await service.register(who, recording=await upload.read(), name=body.name,
                                       consent_statement=body.consent_statement, consent=body.consent,
                                       require_approval=body.require_approval)
        return JSONResponse(_character(cameo))

    @app.get("/v1/videos/characters/{character_id}", responses={200: {"model": Character}, **ERRORS})
    async def get_character(character_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        cameo, _grants = await character_service().get(who, character_id)
        return JSONResponse(_character(cameo))

    @app.get("/v1/videos/{video_id}", responses={200: {"model": Video}, **ERRORS})
    async def retrieve(video_id: str, request: Request) -> JSONResponse:
        return video_response(await videos.get(await principal(request), video_id))

    @app.delete("/v1/videos/{video_id}", responses={200: {"model": VideoDeleted}, **ERRORS})
    async def delete(video_id: str, request: Request) -> JSONResponse:
        job = await videos.delete(await principal(request), video_id, stop_active=True)
        return JSONResponse(convert.deleted(job))

    @app.get("/v1/videos/{video_id}/content", responses={200: {"description": "The MP4, WebP or JPEG", "content": {
        "video/mp4": {}, "image/webp": {}, "image/jpeg": {}}}, **ERRORS})
    async def content(video_id: str, request: Request, variant: str = "video") -> Response:
        who = await principal(request)
        download = await videos.download(who, video_id, variant=variant)
        a = download.artifact
        return StreamingResponse(download.chunks, media_type=a.content_type, headers={
            "content-length": str(a.size_bytes), "content-disposition": f'attachment; filename="{download.filename}"',
            "x-content-sha256": a.sha256})

    @app.post("/v1/videos/{video_id}/remix", responses={200: {"model": Video}, **ERRORS},
              openapi_extra=request_body(("application/json", RemixBody)))
    async def remix(video_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        fields, files = await _body(request)
        if files:
            name = next(iter(files))
            raise InvalidArgument(f"{name} is not a parameter of this call", field=name)
        body = _parse(RemixBody, fields)
        job, _ = await videos.remix(who, RemixVideo(video_id=video_id, prompt=body.prompt, loras=_loras(body.loras),
                                                    idempotency_key=request.headers.get("idempotency-key")))
        return video_response(job)

    return app
