"""Domain errors. Each carries a protocol-neutral code and, where it applies, the field.

The protocol adapters turn these into gRPC status codes and HTTP errors, each in ONE table
(`serving/frontend/grpc/errors.py`, and the REST adapter's); nothing else picks codes.
"""

from __future__ import annotations

import enum

from engines.errors import InvalidParameter


class ErrorCode(enum.StrEnum):
    INVALID_ARGUMENT = "invalid_argument"
    NOT_FOUND = "not_found"
    FAILED_PRECONDITION = "failed_precondition"
    RESOURCE_EXHAUSTED = "resource_exhausted"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    DEADLINE_EXCEEDED = "deadline_exceeded"
    UNAVAILABLE = "unavailable"
    INTERNAL = "internal"


class KinoError(Exception):
    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field


class InvalidArgument(KinoError):
    code = ErrorCode.INVALID_ARGUMENT


class NotFound(KinoError):
    code = ErrorCode.NOT_FOUND


class FailedPrecondition(KinoError):
    code = ErrorCode.FAILED_PRECONDITION


class ResourceExhausted(KinoError):
    code = ErrorCode.RESOURCE_EXHAUSTED


class Unauthenticated(KinoError):
    code = ErrorCode.UNAUTHENTICATED


class PermissionDenied(KinoError):
    code = ErrorCode.PERMISSION_DENIED


class DeadlineExceeded(KinoError):
    code = ErrorCode.DEADLINE_EXCEEDED


class Unavailable(KinoError):
    code = ErrorCode.UNAVAILABLE


class Internal(KinoError):
    code = ErrorCode.INTERNAL


def as_kino_error(exc: BaseException) -> KinoError:
    """Any exception as a domain error (engine validation errors keep their field)."""
    if isinstance(exc, KinoError):
        return exc
    if isinstance(exc, InvalidParameter):
        return InvalidArgument(str(exc), field=exc.field)
    return Internal(f"internal error: {type(exc).__name__}")
