"""The ONE place that maps domain errors to HTTP statuses, in the OpenAI error shape.

    {"error": {"message": "...", "type": "invalid_request_error", "param": "size", "code": "invalid_argument"}}
"""

from __future__ import annotations

from fastapi.responses import JSONResponse

from serving.errors import ErrorCode, as_kino_error

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
    return JSONResponse(status_code=status, content={"error": {
        "message": err.message, "type": kind, "param": err.field, "code": err.code.value}})
