"""The ONE place that maps domain errors to HTTP statuses, in the OpenAI error shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "size", "code": "invalid_argument"}}
"""

from __future__ import annotations

from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from serving.errors import ErrorCode, InvalidArgument, as_kino_error

HTTP: dict[ErrorCode, tuple[int, str]] = {
    ErrorCode.INVALID_ARGUMENT: (400, "invalid_request_error"),
    ErrorCode.FAILED_PRECONDITION: (409, "invalid_request_error"),
    ErrorCode.UNAUTHENTICATED: (401, "authentication_error"),
    ErrorCode.PERMISSION_DENIED: (403, "permission_denied_error"),
    ErrorCode.NOT_FOUND: (404, "not_found_error"),
    ErrorCode.RESOURCE_EXHAUSTED: (429, "rate_limit_error"),
    ErrorCode.DEADLINE_EXCEEDED: (504, "timeout_error"),
    ErrorCode.UNAVAILABLE: (503, "server_error"),
    ErrorCode.INTERNAL: (500, "server_error"),
}


def error_response(exc: BaseException) -> JSONResponse:
    err = as_kino_error(exc)
    status, kind = HTTP[err.code]
    return _shape(status, kind, err.message, err.field, err.code.value)


def validation_response(exc: RequestValidationError) -> JSONResponse:
    """FastAPI's own parameter checks (e.g. `limit=abc`) answered like ours: 400, naming the field."""
    first = exc.errors()[0] if exc.errors() else {}
    field = str(first.get("loc", ("", "request"))[-1])
    return error_response(InvalidArgument(f"{field}: {first.get('msg', 'invalid value')}", field=field))


def http_response(exc: StarletteHTTPException) -> JSONResponse:
    """Routing errors (unknown path, wrong method) in the same shape."""
    kind = "not_found_error" if exc.status_code == 404 else "invalid_request_error"
    return _shape(exc.status_code, kind, f"{exc.detail}", None, "not_found" if exc.status_code == 404 else
                  "invalid_request")


def _shape(status: int, kind: str, message: str, param: str | None, code: str) -> JSONResponse:
    return JSONResponse(status_code=status, content={"error": {
        "message": message, "type": kind, "param": param, "code": code}})
