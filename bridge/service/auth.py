"""Bearer-token authentication and role checks of every RPC (except health checks and reflection).

Per RPC the interceptor does one scan of the call metadata, one SHA-256 of the token, one
dict lookup by hash (:class:`~.tokens.TokenStore`) and one by method (:mod:`.roles`).  A
stream is checked once, when it opens: the multiplexed ``Calls`` stream carries any number
of calls for that one check, and a stream stays open after its token is revoked or rotated.

Handlers (and later, fair queuing) learn who called with :func:`caller_identity`.
"""

from __future__ import annotations

import contextvars
from dataclasses import dataclass
from typing import Any, Awaitable, Callable

import grpc

from ..contract import errors
from ..contract.metadata import CLIENT_ID_KEY
from ..exceptions import PermissionDenied
from .roles import allows, required_role
from .tokens import TokenStore, new_secret

# Health probes and schema reflection stay open, as is usual for them; they reveal nothing
# beyond "up" and the public contract.
OPEN_PREFIXES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
BEARER = "Bearer "

new_token = new_secret  # the name the rest of the bridge knew it by


@dataclass(frozen=True)
class Identity:
    """Who made an RPC: the token's ``name`` (the tenant, for fair queuing) and ``role``, and
    the ``client_id`` the client sent (one per connection; empty when it sent none)."""

    name: str
    role: str
    client_id: str = ""


#: the identity of an RPC without authentication (``--no-auth``): anyone, allowed everything
ANONYMOUS = "anonymous"
_current: contextvars.ContextVar[Identity | None] = contextvars.ContextVar(
    "kernelpit_identity", default=None)


def caller_identity(context: Any = None) -> Identity:
    """The identity of the RPC being served.

    Call it from a handler (or any task the handler starts: asyncio copies the context
    into new tasks).  The interceptor sets it before the handler runs; on a bridge without
    auth it is ``Identity("anonymous", "admin", <client id from context's metadata>)``.
    """
    found = _current.get()
    if found is not None:
        return found
    client = ""
    if context is not None:
        client = dict(context.invocation_metadata() or ()).get(CLIENT_ID_KEY, "")
    return Identity(ANONYMOUS, "admin", client)


class Refused(Exception):
    """An RPC :meth:`TokenAuth.check` refuses: its gRPC status, the words, and the trailing
    metadata that carry the structured error (empty for UNAUTHENTICATED)."""

    def __init__(self, code: grpc.StatusCode, message: str, trailing: Any = ()) -> None:
        super().__init__(message)
        self.code, self.message, self.trailing = code, message, trailing


class TokenAuth(grpc.aio.ServerInterceptor):
    """Refuses RPCs without a known ``authorization: Bearer <token>`` (UNAUTHENTICATED), and
    RPCs the token's role does not cover (PERMISSION_DENIED, ErrorKind PERMISSION_DENIED)."""

    def __init__(self, tokens: TokenStore) -> None:
        self.tokens = tokens

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        method = details.method
        if method.startswith(OPEN_PREFIXES):
            return await continuation(details)
        try:
            identity = self.check(method, details.invocation_metadata)
        except Refused as refused:
            return _deny(await continuation(details), refused.code, refused.message,
                         refused.trailing)
        _current.set(identity)
        return await continuation(details)

    def check(self, method: str, metadata: Any) -> Identity:
        """Who calls ``method`` (a full name, ``/kernelpit.v1.Bridge/Call``) with this call
        metadata; raises :class:`Refused` when the token is missing, unknown, or its role does
        not cover the method.  The gRPC transports and the blob lane all check here."""
        given = None
        client = ""
        for key, value in metadata or ():
            if key == "authorization":
                given = value
            elif key == CLIENT_ID_KEY:
                client = value
        token = (self.tokens.authenticate(given[len(BEARER):])
                 if given is not None and given.startswith(BEARER) else None)
        if token is None:
            reason = ("no token was sent" if given is None else
                      "the token is wrong (revoked or rotated?)" if given.startswith(BEARER) else
                      "the authorization metadata is not 'Bearer <token>'")
            raise Refused(grpc.StatusCode.UNAUTHENTICATED,
                          f"{reason}; send 'authorization: Bearer <token>' with the token from the "
                          "bridge's discovery file (kernelpit.connect() does this) or one its "
                          "owner gave you (`kernelpit token add`)")
        if not allows(token.rank, method):
            needed = required_role(method)
            raise Refused(*errors.to_status(PermissionDenied(
                f"token '{token.name}' has role {token.role}, and {method.rsplit('/', 1)[-1]} "
                f"needs role {needed}; ask the bridge's owner for a token with role {needed} "
                f"(`kernelpit token add NAME --role {needed}`)")))
        return Identity(token.name, token.role, client)


def _deny(handler: Any, code: grpc.StatusCode, message: str, trailing: Any = None) -> Any:
    async def abort(request: Any, context: grpc.aio.ServicerContext) -> Any:
        await context.abort(code, message, trailing_metadata=trailing or ())

    async def abort_stream(request: Any, context: grpc.aio.ServicerContext) -> Any:
        context.set_trailing_metadata(trailing or ())
        await context.abort(code, message)
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
