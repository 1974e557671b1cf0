"""The bridge's second way in: a Unix socket for clients on its own machine.

Not a second service: the socket serves the very handlers registered on the gRPC server
(the Bridge, Jobs, health and reflection services), through the very same interceptors
(token and role checks per RPC, idle accounting), so request handling, errors, metrics,
traces and tenants are written once.  :class:`Registrations` hands every registration to
both transports.  Only the framing differs (:mod:`kernelpit.contract.local`), and what
each connection may do with shared memory: large Arrow values go through the pool's
shared-memory directory straight between the worker and the client
(:class:`LocalContext.shared_memory`), never through the bridge's heap.

"Local" means the same host and the same user: the socket lives in the bridge's private
(0700) run directory and is itself 0600.  The files a connection's values left in shared
memory are removed when it closes, however it closes (:func:`kernelpit.kernels.arrow.reclaim`
with the connection's prefix).
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import itertools
import json
import logging
import os
from typing import Any, AsyncIterator

import grpc

from ..addresses import private_unix_listener
from ..contract import local as proto
from ..kernels import arrow, wire

log = logging.getLogger("kernelpit.service")

_END = object()  # the client sent its last request


class Registrations:
    """Stands in for the gRPC server where services register: each registration goes to
    the gRPC server and to the local transport alike."""

    def __init__(self, *servers: Any) -> None:
        self._servers = servers

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        for server in self._servers:
            server.add_generic_rpc_handlers(handlers)

    def add_registered_method_handlers(self, service: str, handlers: dict[str, Any]) -> None:
        for server in self._servers:
            if hasattr(server, "add_registered_method_handlers"):
                server.add_registered_method_handlers(service, handlers)


@dataclasses.dataclass(frozen=True)
class _Details:  # grpc.HandlerCallDetails
    method: str
    invocation_metadata: tuple[tuple[str, Any], ...]


class LocalServer:
    """Serves the registered RPC handlers on the Unix socket ``path``.

    ``shm``: the pool's transport of large values (its shared-memory directory); each
    connection writes its values under a prefix of its own.
    """

    def __init__(self, path: str, interceptors: list[Any], shm: arrow.Transport | None,
                 max_message_size: int | None = None) -> None:
        self.path = path
        self.max_message_size = max_message_size  # as the gRPC server's receive limit
        self._interceptors = interceptors
        self._generic: list[Any] = []
        self._handlers: dict[str, Any] = {}
        self._shm = shm
        self._ids = itertools.count(1)
        self._server: asyncio.AbstractServer | None = None
        self.connections: set[_Connection] = set()
        self.lane: str | None = None  # the blob lane's Unix socket, named in the greeting

    def add_generic_rpc_handlers(self, handlers: Any) -> None:
        self._generic.extend(handlers)

    async def start(self) -> None:
        self._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Connection(self), sock=private_unix_listener(self.path))

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting; give the RPCs in flight ``grace`` seconds, then cancel them."""
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
        rpcs = [t for c in self.connections for t in c.tasks.values()]
        if rpcs and grace:
            await asyncio.wait(rpcs, timeout=grace)
        for connection in list(self.connections):
            connection.close()

    def _lookup(self, details: _Details) -> Any:
        handler = self._handlers.get(details.method)
        if handler is None:
            for generic in self._generic:
                handler = generic.service(details)
                if handler is not None:
                    self._handlers[details.method] = handler
                    break
        return handler

    async def handler(self, details: _Details, i: int = 0) -> Any:
        """The method's handler as the interceptors from the ``i``-th on (in order) let it
        through.  (Not a recursive closure: that is a reference cycle per request.)"""
        if i == len(self._interceptors):
            return self._lookup(details)
        return await self._interceptors[i].intercept_service(
            functools.partial(self.handler, i=i + 1), details)

    def connection_shm(self) -> tuple[arrow.Transport | None, str]:
        prefix = f"l{next(self._ids)}"
        if self._shm is None or not self._shm.shm_dir:
            return None, prefix
        return dataclasses.replace(self._shm, prefix=prefix, arena=prefix), prefix


class LocalContext:
    """What a handler sees of its RPC (the part of ``grpc.aio.ServicerContext`` that the
    bridge's handlers use), plus ``shared_memory``: the connection's transport of large
    values (None over gRPC, where such values go as blobs)."""

    def __init__(self, connection: "_Connection", stream: int, metadata: Any) -> None:
        self._connection = connection
        self._stream = stream
        self._metadata = metadata
        self.shared_memory = connection.shm
        self._code = grpc.StatusCode.OK
        self._details = ""
        self._trailing: tuple[tuple[str, Any], ...] = ()
        self._headers_sent = False
        self._cancelled = False

    def invocation_metadata(self) -> Any:
        return self._metadata

    def peer(self) -> str:
        return "unix:" + self._connection.server.path

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._cancelled

    def time_remaining(self) -> None:
        return None

    def auth_context(self) -> dict[str, Any]:
        return {}

    def set_code(self, code: grpc.StatusCode) -> None:
        self._code = code

    def set_details(self, details: str) -> None:
        self._details = details

    def code(self) -> grpc.StatusCode:
        return self._code

    def details(self) -> str:
        return self._details

    def set_trailing_metadata(self, metadata: Any) -> None:
        self._trailing = tuple(metadata or ())

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def abort(self, code: grpc.StatusCode, details: str = "",
                    trailing_metadata: Any = ()) -> None:
        self._code, self._details = code, details
        if trailing_metadata:
            self._trailing = tuple(trailing_metadata)
        raise grpc.aio.AbortError()

    async def send_initial_metadata(self, metadata: Any) -> None:
        if not self._headers_sent:
            self._headers_sent = True
            self._connection.send([proto.head(proto.HEADERS, self._stream),
                                   *proto.metadata_frames(metadata)])

    async def write(self, message: Any, serializer: Any = None) -> None:
        await self.send_initial_metadata(())
        self._connection.send([proto.head(proto.MESSAGE, self._stream),
                               proto.serialize(serializer or self.serializer, message)])
        await self._connection.drained()

    serializer: Any = None  # the method's response serializer (set when the RPC starts)

    def finish(self) -> None:
        self._connection.send([proto.head(proto.STATUS, self._stream),
                               proto.status_frames(self._code, self._details),
                               *proto.metadata_frames(self._trailing)])


class _Connection(asyncio.BufferedProtocol):
    """One client: its greeting, then any number of RPCs, each a task."""

    def __init__(self, server: LocalServer) -> None:
        self.server = server
        self.shm, self.prefix = server.connection_shm()
        self._reader = wire.Reader()
        self._transport: asyncio.Transport | None = None
        self._greeted = False
        self._writable = asyncio.Event()
        self._writable.set()
        self.tasks: dict[int, asyncio.Task[None]] = {}
        self._requests: dict[int, asyncio.Queue[Any]] = {}
        self._contexts: dict[int, LocalContext] = {}

    # -- the socket --------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        self.server.connections.add(self)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            for frames in self._reader.advance(nbytes):
                self._received(frames)
        except (wire.WireError, proto.ProtocolError) as exc:
            log.warning("dropped a local client connection: %s", exc)
            self.close()

    def pause_writing(self) -> None:
        self._writable.clear()

    def resume_writing(self) -> None:
        self._writable.set()

    async def drained(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def send(self, frames: list[Any]) -> None:
        transport = self._transport
        if transport is not None and not transport.is_closing():
            proto.write(transport, frames)

    def close(self) -> None:
        if self._transport is not None:
            self._transport.close()

    def connection_lost(self, exc: Exception | None) -> None:
        self.server.connections.discard(self)
        self._transport = None
        for stream, task in list(self.tasks.items()):
            context = self._contexts.get(stream)
            if context is not None:
                context._cancelled = True
            task.cancel()
        if self.shm is not None:  # values it never took, and those it held
            arrow.reclaim(self.shm.shm_dir, self.prefix)

    # -- messages ----------------------------------------------------------------------
    def _received(self, frames: list[Any]) -> None:
        if not self._greeted:
            if bytes(frames[0]) != proto.GREETING:
                raise proto.ProtocolError("the first message is not the local transport's "
                                          "greeting")
            self._greeted = True
            hello = {"prefix": self.prefix, "pid": os.getpid(),
                     "shm_dir": self.shm.shm_dir if self.shm is not None else None,
                     "threshold": self.shm.threshold if self.shm is not None else None,
                     "lane": self.server.lane}
            self.send([proto.GREETING, json.dumps(hello).encode()])
            return
        op, stream = proto.parse_head(frames)
        limit = self.server.max_message_size
        payload = frames[2] if op == proto.UNARY else frames[1] if op == proto.MESSAGE else b""
        if limit and len(payload) > limit:
            self._refuse(stream, len(payload), limit)
            return
        if op in (proto.OPEN, proto.UNARY):
            if stream in self.tasks:
                raise proto.ProtocolError(f"stream {stream} is open already")
            method = bytes(frames[1]).decode()
            first = frames[2] if op == proto.UNARY else None
            metadata = proto.metadata_from(frames[3 if op == proto.UNARY else 2:])
            queue: asyncio.Queue[Any] = asyncio.Queue()
            if first is not None:
                queue.put_nowait(first)
                queue.put_nowait(_END)
            self._requests[stream] = queue
            self.tasks[stream] = asyncio.ensure_future(self._serve(stream, method, metadata))
        elif op == proto.MESSAGE:
            queue_ = self._requests.get(stream)
            if queue_ is not None:
                queue_.put_nowait(frames[1])
        elif op == proto.HALF_CLOSE:
            queue_ = self._requests.get(stream)
            if queue_ is not None:
                queue_.put_nowait(_END)
        elif op == proto.CANCEL:
            task = self.tasks.get(stream)
            context = self._contexts.get(stream)
            if context is not None:
                context._cancelled = True
            if task is not None:
                task.cancel()
        else:
            raise proto.ProtocolError(f"unknown op {op}")

    def _refuse(self, stream: int, size: int, limit: int) -> None:
        """A request above the bridge's message limit ends its RPC as gRPC's would."""
        task = self.tasks.pop(stream, None)
        if task is not None:
            task.cancel()
        self.send([proto.head(proto.STATUS, stream), proto.status_frames(
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            f"Received message larger than max ({size} vs. {limit})")])

    async def _incoming(self, stream: int, deserializer: Any) -> AsyncIterator[Any]:
        queue = self._requests[stream]
        while True:
            frame = await queue.get()
            if frame is _END:
                return
            yield proto.deserialize(deserializer, frame)

    async def _serve(self, stream: int, method: str, metadata: Any) -> None:
        context = LocalContext(self, stream, metadata)
        self._contexts[stream] = context
        try:
            handler = await self.server.handler(_Details(method, metadata))
            if handler is None:
                context.set_code(grpc.StatusCode.UNIMPLEMENTED)
                context.set_details("Method not found!")
                context.finish()
                return
            context.serializer = handler.response_serializer
            requests = self._incoming(stream, handler.request_deserializer)
            if not handler.request_streaming:
                request = await anext(requests, _END)
                if request is _END:
                    await context.abort(grpc.StatusCode.INTERNAL, "the request never came")
            else:
                request = requests
            if handler.response_streaming:
                behaviour = handler.unary_stream or handler.stream_stream
                result = behaviour(request, context)
                if hasattr(result, "__aiter__"):
                    async for response in result:
                        await context.write(response)
                else:
                    await result  # it writes through context.write
                context.finish()
            else:
                behaviour = handler.unary_unary or handler.stream_unary
                response = await behaviour(request, context)
                if context.code() is grpc.StatusCode.OK:
                    self.send([proto.head(proto.REPLY, stream),
                               proto.serialize(handler.response_serializer, response),
                               *proto.metadata_frames(context.trailing_metadata())])
                else:
                    context.finish()
        except grpc.aio.AbortError:
            context.finish()
        except asyncio.CancelledError:
            pass  # the client cancelled, or is gone: nobody to answer
        except Exception:  # noqa: BLE001 - as gRPC does: the client gets UNKNOWN
            log.exception("unexpected error in the handler of %s (local transport)", method)
            context.set_code(grpc.StatusCode.UNKNOWN)
            context.set_details("Unexpected error in RPC handling")
            context.finish()
        finally:
            self.tasks.pop(stream, None)
            self._requests.pop(stream, None)
            self._contexts.pop(stream, None)


def socket_path(run_dir: str) -> str:
    return os.path.join(run_dir, proto.SOCKET_NAME)

