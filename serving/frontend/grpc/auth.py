"""API keys on gRPC: an interceptor turns the call's key into the principal the servicers run as."""

from __future__ import annotations

import contextvars
from collections.abc import Callable

import grpc

from serving.accounts import Principal
from serving.async_view import in_thread
from serving.errors import Unauthenticated
from serving.frontend.common import api_key
from serving.frontend.grpc.errors import status_for

_PRINCIPAL: contextvars.ContextVar[Principal] = contextvars.ContextVar("kino_principal")
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def principal_of(_context: grpc.aio.ServicerContext) -> Principal:
    """The principal the interceptor set for this call."""
    return _PRINCIPAL.get()


OnCall = Callable[[str, str], None]  # (method, status code name) after each call


class ApiKeyInterceptor(grpc.aio.ServerInterceptor):
    """Resolves `authorization: Bearer <key>` (or `x-api-key`) for every call but health and reflection,
    and reports each call's method and final status code."""

    def __init__(self, authenticate: Callable[[str | None], Principal], on_call: OnCall | None = None) -> None:
        self.authenticate = authenticate
        self.on_call = on_call or (lambda _m, _c: None)

    async def intercept_service(self, continuation, details: grpc.HandlerCallDetails):
        handler = await continuation(details)
        if handler is None or details.method.startswith(OPEN_PREFIXES):
            return handler
        method = details.method.rsplit("/", 1)[-1]
        try:
            principal = await in_thread(self.authenticate, api_key(details.invocation_metadata))
        except Unauthenticated as e:
            code, message = status_for(e)
            self.on_call(method, code.name)
            return _deny(handler, code, message)
        return _with_principal(handler, principal, lambda code: self.on_call(method, code))


def _deny(handler: grpc.RpcMethodHandler, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    async def unary(_request, context):
        await context.abort(code, message)

    async def stream(_request, context):
        await context.abort(code, message)
        yield  # pragma: no cover - makes this an async generator

    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)


def _code(context: grpc.aio.ServicerContext) -> str:
    code = context.code()
    return (code or grpc.StatusCode.OK).name


def _with_principal(handler: grpc.RpcMethodHandler, principal: Principal,
                    done: Callable[[str], None]) -> grpc.RpcMethodHandler:
    """The same handler, run with the principal in its context; `done` gets the final status code."""
    if handler.unary_unary:
        inner = handler.unary_unary

        async def unary(request, context):
            _PRINCIPAL.set(principal)
            try:
                return await inner(request, context)
            finally:
                done(_code(context))

        return grpc.unary_unary_rpc_method_handler(unary, handler.request_deserializer, handler.response_serializer)
    if handler.unary_stream:
        inner_stream = handler.unary_stream

        async def stream(request, context):
            _PRINCIPAL.set(principal)
            try:
                async for item in inner_stream(request, context):
                    yield item
            finally:
                done(_code(context))

        return grpc.unary_stream_rpc_method_handler(stream, handler.request_deserializer, handler.response_serializer)
    return handler
