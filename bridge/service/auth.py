"""Bearer-token authentication of every RPC (except health checks and reflection)."""

from __future__ import annotations

import hmac
import secrets
from typing import Any, Awaitable, Callable

import grpc

# Health probes and schema reflection stay open, as is usual for them; they reveal nothing
# beyond "up" and the public contract.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")


def new_token() -> str:
    """A random token that never starts with "-" (so ``--token TOKEN`` parses on a command line)."""
    while True:
        token = secrets.token_urlsafe(32)
        if not token.startswith("-"):
            return token


class TokenAuth(grpc.aio.ServerInterceptor):
    """Rejects RPCs without ``authorization: Bearer <token>`` with UNAUTHENTICATED."""

    def __init__(self, token: str) -> None:
        self._expected = f"Bearer {token}".encode()

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        if details.method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        given = None
        for key, value in details.invocation_metadata or ():
            if key == "authorization":
                given = value
                break
        if given is not None and hmac.compare_digest(given.encode(), self._expected):
            return await continuation(details)
        reason = ("no token was sent" if given is None else
                  "the token is wrong" if given.startswith("Bearer ") else
                  "the authorization metadata is not 'Bearer <token>'")
        handler = await continuation(details)
        return _deny(handler, f"{reason}; send 'authorization: Bearer <token>' with the token "
                              "from the bridge's discovery file (kernelpit.connect() does this)")


def _deny(handler: Any, message: str) -> Any:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(grpc.StatusCode.UNAUTHENTICATED, message)
        yield  # pragma: no cover - makes this an async generator

    if handler is None:
        return None
    kw = dict(request_deserializer=handler.request_deserializer,
              response_serializer=handler.response_serializer)
    if handler.unary_unary:
        return grpc.unary_unary_rpc_method_handler(abort, **kw)
    if handler.unary_stream:
        return grpc.unary_stream_rpc_method_handler(abort_stream, **kw)
    if handler.stream_unary:
        return grpc.stream_unary_rpc_method_handler(abort, **kw)
    return grpc.stream_stream_rpc_method_handler(abort_stream, **kw)
