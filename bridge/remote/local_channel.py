"""The client end of the local transport: a stand-in for a ``grpc.aio.Channel`` over the
bridge's Unix socket (:mod:`kernelpit.contract.local`).

It offers what the generated stubs and :class:`~kernelpit.remote.backend.RemoteBackend`
use of a channel (``unary_unary``, ``unary_stream``, ``stream_unary``, ``stream_stream``,
``close``), and its calls behave as ``grpc.aio`` calls do: awaited or iterated, with
``initial_metadata()``, ``code()``, ``cancel()``, ``write()``/``read()``, and failures as
``grpc.aio.AioRpcError``.  So the whole client (multiplexed calls, streams, blobs, jobs,
leases, token reloads, error mapping) is written once, for both transports.

The connection is opened on the first RPC.  The bridge's greeting says where the pool's
shared memory is (:attr:`LocalChannel.shared_memory`): large Arrow values then travel as
files there, mapped by the receiver, instead of as messages.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import json
import socket
from typing import Any, AsyncIterator, Iterable, Iterator

import grpc

from ..contract import local as proto
from ..kernels import arena, arrow, wire

_EOF = object()
_NO_METADATA = grpc.aio.Metadata()


class LocalChannel:
    """RPCs to the bridge listening on the Unix socket ``path``."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.shared_memory: arrow.Transport | None = None
        self.lane: str | None = None  # the bridge's blob lane socket, once greeted
        self._ids = itertools.count(1)
        self._calls: dict[int, _Call] = {}
        self._transport: asyncio.Transport | None = None
        self._connecting: asyncio.Future[None] | None = None
        self._backlog: list[list[Any]] = []  # messages sent before the connection is up
        self._writable = asyncio.Event()
        self._writable.set()
        self._closed = False

    # -- the grpc.aio.Channel surface -----------------------------------------------------
    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, **_: Any) -> "_MultiCallable":
        return _MultiCallable(self, method, request_serializer, response_deserializer, False, False)

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, **_: Any) -> "_MultiCallable":
        return _MultiCallable(self, method, request_serializer, response_deserializer, False, True)

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, **_: Any) -> "_MultiCallable":
        return _MultiCallable(self, method, request_serializer, response_deserializer, True, False)

    def stream_stream(self, method: str, request_serializer: Any = None,
                      response_deserializer: Any = None, **_: Any) -> "_MultiCallable":
        return _MultiCallable(self, method, request_serializer, response_deserializer, True, True)

    async def close(self, grace: float | None = None) -> None:
        self._closed = True
        for call in list(self._calls.values()):
            call.cancel()
        if self._transport is not None:
            self._transport.close()
        if self.shared_memory is not None:
            arena.forget(self.shared_memory.shm_dir)  # this process's mappings of its slabs

    # -- the connection --------------------------------------------------------------------
    def _ensure(self) -> None:
        if self._transport is None and self._connecting is None:
            self._connecting = asyncio.ensure_future(self._connect())

    async def _connect(self) -> None:
        loop = asyncio.get_running_loop()
        greeted: asyncio.Future[dict[str, Any]] = loop.create_future()
        try:
            if self._closed:
                raise ConnectionError("the channel is closed")
            transport, _ = await loop.create_unix_connection(
                lambda: _Protocol(self, greeted), self.path)
            transport.write(wire.pieces([proto.GREETING])[0])
            hello = await greeted
        except (OSError, ConnectionError, proto.ProtocolError) as exc:
            self._connecting = None
            self._lost(f"cannot reach the bridge's local socket {self.path} ({exc})")
            return
        if hello.get("shm_dir"):
            self.shared_memory = arrow.Transport(
                shm_dir=hello["shm_dir"], threshold=int(hello.get("threshold") or 1 << 20),
                prefix=hello["prefix"], arena=hello["prefix"])
        self.lane = hello.get("lane")
        self._transport = transport  # type: ignore[assignment]
        self._connecting = None
        backlog, self._backlog = self._backlog, []
        for frames in backlog:
            self._send(frames)

    def _send(self, frames: list[Any]) -> None:
        transport = self._transport
        if transport is None:
            self._backlog.append(frames)
            self._ensure()
            return
        if not transport.is_closing():
            proto.write(transport, frames)

    async def _drained(self) -> None:
        if not self._writable.is_set():
            await self._writable.wait()

    def _received(self, frames: list[Any]) -> None:
        op, stream = proto.parse_head(frames)
        call = self._calls.get(stream)
        if call is None:
            return  # cancelled here meanwhile
        if op == proto.MESSAGE:
            call._message(frames[1])
        elif op == proto.HEADERS:
            call._headers(proto.metadata_from(frames[1:]))
        elif op == proto.REPLY:
            call._message(frames[1])
            call._finish(grpc.StatusCode.OK, "", proto.metadata_from(frames[2:]))
        elif op == proto.STATUS:
            code, details = proto.status_from(frames[1])
            call._finish(code, details, proto.metadata_from(frames[2:]))
        else:
            raise proto.ProtocolError(f"unknown op {op} from the bridge")

    def _lost(self, why: str) -> None:
        self._transport = None
        self._backlog = []
        for call in list(self._calls.values()):
            call._finish(grpc.StatusCode.UNAVAILABLE, why, ())

    def _open(self, call: "_Call", frames: list[Any]) -> None:
        self._calls[call.stream] = call
        self._send(frames)


class _Protocol(asyncio.BufferedProtocol):
    def __init__(self, channel: LocalChannel, greeted: "asyncio.Future[dict[str, Any]]") -> None:
        self._channel = channel
        self._greeted = greeted
        self._reader = wire.Reader()
        self._transport: asyncio.BaseTransport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            for frames in self._reader.advance(nbytes):
                if not self._greeted.done():
                    if bytes(frames[0]) != proto.GREETING or len(frames) < 2:
                        raise proto.ProtocolError("the socket does not speak the local transport")
                    self._greeted.set_result(json.loads(bytes(frames[1])))
                else:
                    self._channel._received(frames)
        except (wire.WireError, proto.ProtocolError, ValueError) as exc:
            if not self._greeted.done():
                self._greeted.set_exception(proto.ProtocolError(str(exc)))
            self._channel._lost(f"the bridge's local socket sent something unreadable ({exc})")
            if self._transport is not None:
                self._transport.close()

    def pause_writing(self) -> None:
        self._channel._writable.clear()

    def resume_writing(self) -> None:
        self._channel._writable.set()

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._greeted.done():
            self._greeted.set_exception(ConnectionError("the bridge closed the connection"))
        self._channel._writable.set()
        self._channel._lost("the bridge closed the local connection (it stopped?)")


class _MultiCallable:
    def __init__(self, channel: LocalChannel, method: str, serializer: Any, deserializer: Any,
                 request_streaming: bool, response_streaming: bool) -> None:
        self._channel = channel
        self._method = method.encode()
        self._serializer = serializer
        self._deserializer = deserializer
        self._request_streaming = request_streaming
        self._response_streaming = response_streaming

    def __call__(self, request: Any = None, *, timeout: float | None = None,
                 metadata: Any = None, **_: Any) -> "_Call":
        channel = self._channel
        call = _Call(channel, next(channel._ids), self._serializer, self._deserializer)
        md = proto.metadata_frames(metadata)
        if self._request_streaming:
            channel._open(call, [proto.head(proto.OPEN, call.stream), self._method, *md])
            if request is not None:
                call._feeder = asyncio.ensure_future(call._feed(request))
        else:
            channel._open(call, [proto.head(proto.UNARY, call.stream), self._method,
                                 proto.serialize(self._serializer, request), *md])
        if timeout is not None:
            call._deadline = asyncio.get_running_loop().call_later(timeout, call._expire)
        return call


class _Call:
    """One RPC, as a ``grpc.aio`` call object of any of the four kinds."""

    def __init__(self, channel: LocalChannel, stream: int, serializer: Any,
                 deserializer: Any) -> None:
        loop = asyncio.get_running_loop()
        self._channel = channel
        self.stream = stream
        self._serializer = serializer
        self._deserializer = deserializer
        self._responses: asyncio.Queue[Any] = asyncio.Queue()
        self._initial: asyncio.Future[Any] = loop.create_future()
        self._status: asyncio.Future[tuple[grpc.StatusCode, str, Any]] = loop.create_future()
        self._feeder: asyncio.Future[None] | None = None
        self._deadline: asyncio.TimerHandle | None = None

    # -- from the bridge -------------------------------------------------------------------
    def _headers(self, metadata: Any) -> None:
        if not self._initial.done():
            self._initial.set_result(grpc.aio.Metadata(*metadata))

    def _message(self, frame: Any) -> None:
        self._responses.put_nowait(frame)

    def _finish(self, code: grpc.StatusCode, details: str, trailing: Any) -> None:
        if self._status.done():
            return
        self._channel._calls.pop(self.stream, None)
        self._headers(())
        self._status.set_result((code, details, grpc.aio.Metadata(*trailing)))
        self._responses.put_nowait(_EOF)
        if self._deadline is not None:
            self._deadline.cancel()
        if self._feeder is not None and not self._feeder.done():
            self._feeder.cancel()

    def _expire(self) -> None:
        if not self._status.done():
            self._channel._send([proto.head(proto.CANCEL, self.stream)])
            self._finish(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded", ())

    def _error(self) -> grpc.aio.AioRpcError:
        code, details, trailing = self._status.result()
        return grpc.aio.AioRpcError(code, self._initial.result(), trailing, details)

    # -- the call object -------------------------------------------------------------------
    def cancel(self) -> bool:
        if self._status.done():
            return False
        self._channel._send([proto.head(proto.CANCEL, self.stream)])
        self._finish(grpc.StatusCode.CANCELLED, "Locally cancelled by application!", ())
        return True

    def cancelled(self) -> bool:
        return self._status.done() and self._status.result()[0] == grpc.StatusCode.CANCELLED

    def done(self) -> bool:
        return self._status.done()

    async def initial_metadata(self) -> Any:
        return await asyncio.shield(self._initial)

    async def trailing_metadata(self) -> Any:
        return (await asyncio.shield(self._status))[2]

    async def code(self) -> grpc.StatusCode:
        return (await asyncio.shield(self._status))[0]

    async def details(self) -> str:
        return (await asyncio.shield(self._status))[1]

    async def read(self) -> Any:
        frame = await self._responses.get()
        if frame is _EOF:
            self._responses.put_nowait(_EOF)  # every later read ends too
            if self._status.result()[0] != grpc.StatusCode.OK:
                raise self._error()
            return grpc.aio.EOF
        return proto.deserialize(self._deserializer, frame)

    def __aiter__(self) -> AsyncIterator[Any]:
        return self._iterate()

    async def _iterate(self) -> AsyncIterator[Any]:
        while True:
            message = await self.read()
            if message is grpc.aio.EOF:
                return
            yield message

    def __await__(self) -> Any:
        return self._unary().__await__()

    async def _unary(self) -> Any:
        try:
            message = await self.read()
        except asyncio.CancelledError:
            self.cancel()
            raise
        await asyncio.shield(self._status)
        if message is grpc.aio.EOF:
            raise grpc.aio.AioRpcError(grpc.StatusCode.INTERNAL, self._initial.result(),
                                       _NO_METADATA, "the bridge ended a unary RPC without a reply")
        return message

    async def write(self, request: Any) -> None:
        if self._status.done():
            raise asyncio.InvalidStateError("the RPC has already finished")
        self._channel._send([proto.head(proto.MESSAGE, self.stream),
                             proto.serialize(self._serializer, request)])
        await self._channel._drained()

    async def done_writing(self) -> None:
        if not self._status.done():
            self._channel._send([proto.head(proto.HALF_CLOSE, self.stream)])

    async def _feed(self, requests: Iterable[Any] | AsyncIterator[Any]) -> None:
        if hasattr(requests, "__aiter__"):
            async for request in requests:  # type: ignore[union-attr]
                await self.write(request)
        else:
            for request in requests:  # type: ignore[union-attr]
                await self.write(request)
        await self.done_writing()


class BlockingLocalChannel:
    """The local transport for a blocking caller, as gRPC's blocking channel is: RPCs made
    right on the calling thread, over a blocking socket of its own (no event loop, no
    hand-off).  One thread at a time, so the backend gives each thread its own
    (``RemoteBackend._stubs``).  Unary, server-streaming and client-streaming RPCs
    (``Call``, ``ReadBlob``, ``WriteBlob``).  Failures raise ``grpc.aio.AioRpcError`` (a
    ``grpc.RpcError``).

    An RPC that ends early on this side (Ctrl-C, an error, a stream dropped before its end)
    is cancelled at once, wherever the interrupt lands: while its request is being sent, the
    connection is closed instead (its framing is then unknown; the bridge cancels the RPCs
    of a connection that goes), and the next RPC opens a new one."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._sock: Any = None
        self._reader = wire.Reader()
        self._pending: list[list[Any]] = []
        self._ids = itertools.count(1)
        self._open_stream: int | None = None  # the RPC sent and not ended yet
        self._interrupted = False  # interrupt() shut the connection

    def unary_unary(self, method: str, request_serializer: Any = None,
                    response_deserializer: Any = None, **_: Any) -> Any:
        def call(request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
            try:
                stream = self._open(proto.UNARY, method, metadata, request_serializer, request)
                return self._reply(stream, response_deserializer)
            except BaseException:
                self._abandon()
                raise
        return call

    def unary_stream(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, **_: Any) -> Any:
        def call(request: Any, metadata: Any = None, timeout: float | None = None) -> Any:
            try:
                stream = self._open(proto.UNARY, method, metadata, request_serializer, request)
            except BaseException:
                self._abandon()
                raise
            return _Responses(self, self._responses(stream, response_deserializer))
        return call

    def stream_unary(self, method: str, request_serializer: Any = None,
                     response_deserializer: Any = None, **_: Any) -> Any:
        def call(requests: Iterable[Any], metadata: Any = None, timeout: float | None = None) -> Any:
            try:
                stream = self._open(proto.OPEN, method, metadata)
                for request in requests:
                    self._send([proto.head(proto.MESSAGE, stream),
                                proto.serialize(request_serializer, request)])
                self._send([proto.head(proto.HALF_CLOSE, stream)])
                return self._reply(stream, response_deserializer)
            except BaseException:
                self._abandon()
                raise
        return call

    def stream_stream(self, method: str, *args: Any, **kwargs: Any) -> Any:
        def call(*_: Any, **__: Any) -> Any:
            raise NotImplementedError("bidirectional streams take the asyncio channel")
        return call

    def close(self) -> None:
        self._open_stream = None  # the bridge cancels whatever the connection had open
        if self._sock is not None:
            self._sock.close()
            self._sock = None

    def interrupt(self) -> None:
        """From another thread: end the RPC being read, whose reader raises CANCELLED.  The
        connection is shut (the bridge cancels that RPC); the next RPC opens another."""
        sock = self._sock
        if sock is not None:
            self._interrupted = True
            with contextlib.suppress(OSError):  # closed meanwhile
                sock.shutdown(socket.SHUT_RDWR)

    # -- the socket ------------------------------------------------------------------------
    def _open(self, op: int, method: str, metadata: Any, serializer: Any = None,
              request: Any = None) -> int:
        self._abandon()  # a stream dropped unstarted is cancelled before the next RPC at least
        if self._sock is None:
            self._connect()
        stream = next(self._ids)
        frames = [proto.head(op, stream), method.encode()]
        if op == proto.UNARY:
            frames.append(proto.serialize(serializer, request))
        self._open_stream = stream
        self._send(frames + proto.metadata_frames(metadata))
        return stream

    def _abandon(self) -> None:
        """Cancel the RPC that was sent and has not ended (nothing when there is none)."""
        stream, self._open_stream = self._open_stream, None
        if stream is not None and self._sock is not None:
            with contextlib.suppress(grpc.RpcError):  # gone already: nothing to cancel
                self._send([proto.head(proto.CANCEL, stream)])

    def _send(self, frames: list[Any]) -> None:
        """One message; a bridge gone meanwhile is UNAVAILABLE, as for every RPC.  A send
        cut short by anything else (Ctrl-C) closes the connection: part of a message may
        have gone, and the bridge cancels what a closed connection had open."""
        try:
            wire.send(self._sock, frames)
        except OSError as exc:
            self.close()
            raise _failure(grpc.StatusCode.UNAVAILABLE, f"the bridge's local socket {self.path} "
                           f"is gone ({exc})") from None
        except BaseException:
            self.close()
            raise

    def _connect(self) -> None:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            sock.connect(self.path)
            wire.send(sock, [proto.GREETING])
        except OSError as exc:
            sock.close()
            raise _failure(grpc.StatusCode.UNAVAILABLE, f"cannot reach the bridge's local socket "
                           f"{self.path} ({exc})") from None
        self._sock, self._reader, self._pending = sock, wire.Reader(), []
        self._interrupted = False
        if bytes(self._next()[0]) != proto.GREETING:
            self.close()
            raise _failure(grpc.StatusCode.UNAVAILABLE, "the socket does not speak the local "
                           "transport")

    def _next(self) -> list[Any]:
        while not self._pending:
            try:
                n = self._sock.recv_into(self._reader.buffer())
            except OSError as exc:
                n, why = 0, str(exc)
            else:
                why = "the bridge closed the local connection (it stopped?)"
            if n == 0:
                self.close()
                if self._interrupted:
                    raise _failure(grpc.StatusCode.CANCELLED, "the RPC was cancelled while "
                                   "it was being read")
                raise _failure(grpc.StatusCode.UNAVAILABLE, why)
            self._pending = self._reader.advance(n)
        return self._pending.pop(0)

    def _reply(self, stream: int, deserializer: Any) -> Any:
        for response in self._responses(stream, deserializer):
            return response
        raise _failure(grpc.StatusCode.INTERNAL, "the bridge ended a unary RPC without a reply")

    def _responses(self, stream: int, deserializer: Any) -> Iterable[Any]:
        ended = False
        try:
            while not ended:
                if self._open_stream != stream:
                    raise _failure(grpc.StatusCode.CANCELLED, "this stream was given up on: "
                                   "another RPC started on the connection before its end")
                frames = self._next()
                op, of = proto.parse_head(frames)
                if of != stream:
                    continue  # a late answer to an RPC given up on (Ctrl-C)
                if op == proto.MESSAGE or op == proto.REPLY:
                    ended = op == proto.REPLY
                    if ended:
                        self._open_stream = None
                    yield proto.deserialize(deserializer, frames[1])
                elif op == proto.STATUS:
                    ended, self._open_stream = True, None
                    code, details = proto.status_from(frames[1])
                    if code != grpc.StatusCode.OK:
                        raise _failure(code, details, proto.metadata_from(frames[2:]))
        finally:  # ended early (Ctrl-C, or the stream was dropped): the bridge cancels it
            if not ended and self._open_stream == stream:
                self._abandon()


def _failure(code: grpc.StatusCode, details: str, trailing: Any = ()) -> grpc.aio.AioRpcError:
    return grpc.aio.AioRpcError(code, _NO_METADATA, grpc.aio.Metadata(*trailing), details)


class _Responses:
    """A server stream's messages on a :class:`BlockingLocalChannel`, as gRPC's blocking
    iterator gives them, with its ``cancel()`` (from another thread)."""

    def __init__(self, channel: BlockingLocalChannel, messages: Iterator[Any]) -> None:
        self._channel = channel
        self._messages = messages

    def __iter__(self) -> "_Responses":
        return self

    def __next__(self) -> Any:
        return next(self._messages)

    def cancel(self) -> bool:
        self._channel.interrupt()
        return True
