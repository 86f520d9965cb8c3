"""The ONE place that maps domain errors to HTTP statuses, in OpenAI's error shape and vocabulary.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "size", "code": "invalid_value"}}

`type` and `code` are the values OpenAI's API answers with (`invalid_request_error` for anything the
caller can fix, `server_error` for ours; codes such as `invalid_value`, `missing_required_parameter`,
`model_not_found`, `moderation_blocked`, `rate_limit_exceeded`). The official SDKs retry 408, 409, 429
and 5xx unless the answer carries `x-should-retry: false`: every answer that a retry cannot change
carries it (a 409 of a video's state, an exhausted quota), so a client never waits through backoff, and
a refused prompt is never moderated and audited three times.
"""

from __future__ import annotations

from typing import NamedTuple

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import ErrorCode, InvalidArgument, Reason, as_kino_error


class HttpError(NamedTuple):
    status: int
    type: str
    code: str
    retry: bool | None = None  # x-should-retry; None: the SDK's own rule for the status


HTTP: dict[ErrorCode, HttpError] = {
    ErrorCode.INVALID_ARGUMENT: HttpError(400, "invalid_request_error", "invalid_value"),
    # A conflict with the video's state (it is running, held, already used): retrying now changes nothing.
    ErrorCode.FAILED_PRECONDITION: HttpError(409, "invalid_request_error", "conflict", retry=False),
    ErrorCode.UNAUTHENTICATED: HttpError(401, "invalid_request_error", "invalid_api_key"),
    ErrorCode.PERMISSION_DENIED: HttpError(403, "invalid_request_error", "permission_denied"),
    ErrorCode.NOT_FOUND: HttpError(404, "invalid_request_error", "not_found"),
    ErrorCode.RESOURCE_EXHAUSTED: HttpError(429, "requests", "rate_limit_exceeded"),  # the queue: retry later
    ErrorCode.DEADLINE_EXCEEDED: HttpError(504, "server_error", "timeout"),
    ErrorCode.UNAVAILABLE: HttpError(503, "server_error", "service_unavailable"),
    ErrorCode.UNIMPLEMENTED: HttpError(501, "invalid_request_error", "not_implemented", retry=False),
    ErrorCode.INTERNAL: HttpError(500, "server_error", "server_error"),
}

# Finer causes OpenAI answers differently from the code's row above.
BY_REASON: dict[Reason, HttpError] = {
    Reason.MODERATION_BLOCKED: HttpError(400, "invalid_request_error", "moderation_blocked"),
    Reason.MODEL_NOT_FOUND: HttpError(400, "invalid_request_error", "model_not_found"),
    Reason.MISSING: HttpError(400, "invalid_request_error", "missing_required_parameter"),
    Reason.INVALID_TYPE: HttpError(400, "invalid_request_error", "invalid_type"),
    Reason.UNKNOWN_PARAMETER: HttpError(400, "invalid_request_error", "unknown_parameter"),
    Reason.NOT_READY: HttpError(409, "invalid_request_error", "video_not_ready", retry=False),
    Reason.QUOTA: HttpError(429, "insufficient_quota", "insufficient_quota", retry=False),
}

# pydantic's error types -> the reason they are (anything else: a bad value).
_PYDANTIC = {"missing": Reason.MISSING, "extra_forbidden": Reason.UNKNOWN_PARAMETER}
_TYPE_ERRORS = ("string_type", "int_type", "float_type", "bool_type", "dict_type", "list_type", "model_type",
                "int_parsing", "float_parsing", "bool_parsing", "union_tag_invalid", "is_instance_of")


def error_response(exc: BaseException) -> JSONResponse:
    err = as_kino_error(exc)
    row = BY_REASON.get(err.reason, HTTP[err.code]) if err.reason else HTTP[err.code]
    return _shape(row, err.message, err.field)


def pydantic_error(errors: list, where: str = "") -> InvalidArgument:
    """The first of pydantic's errors (a request body or a query parameter) as the domain's error, naming the
    field (dotted: `input_reference.image_url`) and saying what it wants."""
    first = errors[0] if errors else {}
    loc: list[str] = []
    for part in first.get("loc", ()):
        if isinstance(part, int) and loc:  # a list's index: `loras[0].name`, as the domain names it
            loc[-1] += f"[{part}]"
        # A union's branches add their type names to the location (`str`, `int`, `function-after[...]`): not fields.
        elif (isinstance(part, str) and part not in ("body", "query", "path") and part.isidentifier()
              and part not in ("str", "int", "float", "bool")):
            loc.append(part)
    field = ".".join(loc) or where or "body"
    kind = first.get("type", "")
    reason = _PYDANTIC.get(kind) or (Reason.INVALID_TYPE if kind in _TYPE_ERRORS else None)
    if reason == Reason.MISSING:
        message = f"{field} is required"
    elif reason == Reason.UNKNOWN_PARAMETER:
        message = f"{field} is not a parameter of this call"
    else:
        got = first.get("input")
        shown = f"{got!r}" if isinstance(got, str | int | float | bool) or got is None else type(got).__name__
        message = f"{field}={shown} is not allowed: {first.get('msg', 'invalid value')}"
    return InvalidArgument(message, field=field, reason=reason)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own parameter checks (e.g. `limit=abc`) answered like ours: 400, naming the field."""
    return error_response(pydantic_error(list(exc.errors())))


def http_response(exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (unknown path, wrong method) in the same shape."""
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "invalid_request")
    return _shape(HttpError(exc.status_code, "invalid_request_error", code, retry=False), f"{exc.detail}", None)


def _shape(row: HttpError, message: str, param: str | None) -> JSONResponse:
    headers = {} if row.retry is None else {"x-should-retry": "true" if row.retry else "false"}
    return JSONResponse(status_code=row.status, headers=headers, content={"error": {
        "message": message, "type": row.type, "param": param, "code": row.code}})
