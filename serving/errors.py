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
    UNIMPLEMENTED = "unimplemented"
    INTERNAL = "internal"


class KinoError(Exception):
    """`reason`: a finer, protocol-neutral cause within the code (like google.rpc.ErrorInfo.reason), for the
    adapters whose protocol tells such causes apart (REST: OpenAI's error `code`); None: just the code."""

    code: ErrorCode = ErrorCode.INTERNAL

    def __init__(self, message: str, *, field: str | None = None, reason: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.reason = reason


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


class Unimplemented(KinoError):
    """A call or option this server does not offer (yet); the message says which and what to use instead."""

    code = ErrorCode.UNIMPLEMENTED


class Internal(KinoError):
    code = ErrorCode.INTERNAL


class Reason(enum.StrEnum):
    """The finer causes the domain names (`KinoError.reason`)."""

    MODERATION_BLOCKED = "moderation_blocked"  # the prompt was refused by moderation
    MODEL_NOT_FOUND = "model_not_found"  # a model name this server does not serve
    MISSING = "missing"  # a required field is absent
    INVALID_TYPE = "invalid_type"  # a field of the wrong type (e.g. a number where text is wanted)
    UNKNOWN_PARAMETER = "unknown_parameter"  # a field the call does not take
    NOT_READY = "not_ready"  # the video has not completed yet (download, remix)
    QUOTA = "quota"  # a tenant's quota, not the server's load: retrying soon does not help


def as_kino_error(exc: BaseException) -> KinoError:
    """Any exception as a domain error (engine validation errors keep their field)."""
    if isinstance(exc, KinoError):
        return exc
    if isinstance(exc, InvalidParameter):
        return InvalidArgument(str(exc), field=exc.field)
    return Internal(f"internal error: {type(exc).__name__}")
