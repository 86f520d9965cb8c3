"""OpenAI-compatible routes over the domain services: parse, call, translate; no decisions here.

    POST   /v1/videos                 create (multipart or JSON: prompt, model, seconds, size, input_reference;
                                      Kino's extras: cache = off | balanced | fast, two_stage = true | false)
    GET    /v1/videos                 list (after, limit, order)
    GET    /v1/videos/{id}            retrieve
    DELETE /v1/videos/{id}            delete
    GET    /v1/videos/{id}/content    download (variant=video)
    POST   /v1/videos/{id}/remix      remix (prompt)
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, StreamingResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from engines.errors import EngineError
from serving.accounts import Principal
from serving.async_view import in_thread
from serving.errors import InvalidArgument, KinoError
from serving.frontend.common import api_key
from serving.frontend.rest import convert
from serving.frontend.rest.errors import error_response, http_response, validation_response
from serving.metrics import Metrics, NoMetrics
from serving.videos import CreateVideo, RemixVideo, VideoService
from serving.videos.parsing import DEFAULT_PAGE_SIZE

log = logging.getLogger(__name__)
Authenticate = Callable[[str | None], Principal]


def _seconds(value: Any) -> float | None:
    if value in (None, ""):
        return None
    try:
        return float(value)
    except (TypeError, ValueError):
        raise InvalidArgument(f"seconds={value!r} is not allowed: a number of seconds, e.g. \"4\"",
                              field="seconds") from None


def _flag(value: Any, field: str) -> bool | None:
    """A JSON boolean, or a form field's "true" / "false"; absent or "": None (the server's default)."""
    if value in (None, ""):
        return None
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise InvalidArgument(f"{field}={value!r} is not allowed: true or false", field=field)


async def _json_object(request: Request) -> dict[str, Any]:
    try:
        body = await request.json()
    except ValueError:
        raise InvalidArgument("body is not allowed: it must be a JSON object (or multipart form data)",
                              field="body") from None
    if not isinstance(body, dict):
        raise InvalidArgument(f"body is not allowed: a JSON object, not {type(body).__name__}", field="body")
    return body


def create_rest_app(videos: VideoService, authenticate: Authenticate, metrics: Metrics | None = None) -> FastAPI:
    """The OpenAI-compatible Videos API as a FastAPI app over the domain."""
    app = FastAPI(title="Kino Videos API (OpenAI-compatible)", docs_url=None, redoc_url=None)
    sink = metrics or NoMetrics()

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

    @app.post("/v1/videos")
    async def create(request: Request) -> JSONResponse:
        who = await principal(request)
        image = None
        if request.headers.get("content-type", "").startswith("multipart/form-data"):
            form = await request.form()
            fields = {k: v for k, v in form.items() if isinstance(v, str)}
            ref = form.get("input_reference")
            if ref is not None and not isinstance(ref, str):
                image = await ref.read()
        else:
            fields = await _json_object(request)
        if not isinstance(fields.get("prompt"), str):
            raise InvalidArgument("prompt is required: the text that describes the video", field="prompt")
        # Kino's extra fields beside OpenAI's (clients that do not send them get the server's defaults).
        req = CreateVideo(prompt=fields["prompt"], size=fields.get("size") or None,
                          seconds=_seconds(fields.get("seconds")), model=fields.get("model") or None,
                          image=image, idempotency_key=request.headers.get("idempotency-key") or None,
                          cache=fields.get("cache") or None, two_stage=_flag(fields.get("two_stage"), "two_stage"))
        job, _ = await videos.create(who, req)
        return JSONResponse(convert.video(job))

    @app.get("/v1/videos")
    async def list_videos(request: Request, after: str | None = None, limit: int = DEFAULT_PAGE_SIZE,
                          order: str = "desc") -> JSONResponse:
        who = await principal(request)
        if order not in ("asc", "desc"):
            raise InvalidArgument(f"order={order!r} is not allowed: asc or desc", field="order")
        page = await videos.list(who, page_size=limit, page_size_field="limit", after_id=after,
                                 ascending=order == "asc")
        return JSONResponse(convert.page(page))

    @app.get("/v1/videos/{video_id}")
    async def retrieve(video_id: str, request: Request) -> JSONResponse:
        return JSONResponse(convert.video(await videos.get(await principal(request), video_id)))

    @app.delete("/v1/videos/{video_id}")
    async def delete(video_id: str, request: Request) -> JSONResponse:
        return JSONResponse(convert.deleted(await videos.delete(await principal(request), video_id)))

    @app.get("/v1/videos/{video_id}/content")
    async def content(video_id: str, request: Request, variant: str = "video") -> StreamingResponse:
        who = await principal(request)
        if variant != "video":
            raise InvalidArgument(f"variant={variant!r} is not allowed: only 'video' is served", field="variant")
        download = await videos.download(who, video_id)
        a = download.artifact
        return StreamingResponse(download.chunks, media_type=a.content_type, headers={
            "content-length": str(a.size_bytes), "content-disposition": f'attachment; filename="{download.filename}"',
            "x-content-sha256": a.sha256})

    @app.post("/v1/videos/{video_id}/remix")
    async def remix(video_id: str, request: Request) -> JSONResponse:
        who = await principal(request)
        body = await _json_object(request)
        if not isinstance(body.get("prompt"), str):
            raise InvalidArgument("prompt is required: the new prompt for the remix", field="prompt")
        job, _ = await videos.remix(who, RemixVideo(video_id=video_id, prompt=body["prompt"],
                                                    idempotency_key=request.headers.get("idempotency-key")))
        return JSONResponse(convert.video(job))

    return app
