"""The :class:`~kernelpit.backend.Backend` of a bridge: every call and RPC over one
``grpc.aio`` channel (a blocking channel beside it for a lone blocking call), large values
as blobs; or over the local transport's stand-in for a channel
(:mod:`.local_channel`), large Arrow values then by shared memory."""

from __future__ import annotations

import asyncio
import contextlib
import threading
import weakref
from typing import Any, AsyncIterator, Iterator, NamedTuple

import grpc

from ..addresses import split_host_port
from ..backend import Backend
from ..backlog import AsyncBacklog
from ..contract import convert, errors, streamed
from ..contract.framing import BLOB_SIZE_KEY, chunk_size, framed, unframe
from ..contract.metadata import (ACCEPT_KEY, ACCEPT_PACKED, ACCEPT_STREAMED, CLIENT_ID_KEY,
                                 STREAM_FROM_KEY, auth_metadata)
from ..contract.values import PLAIN, Codec, blob_refs
from ..events import Event
from ..exceptions import BridgeError, Unauthenticated
from ..info import SessionInfo, TokenInfo, ToolInfo, WorkerInfo
from ..jobs.model import JobEvent, JobInfo
from ..jobs.remote import RemoteJobs
from ..kernels import heap, wire
from ..kernels.protocol import AHEAD_FROM
from ..options import CallOptions
from ..v1 import bridge_pb2 as pb
from ..v1 import bridge_pb2_grpc as pb_grpc
from ..v1 import values_pb2 as values_pb
from ..telemetry import tracing
from ..telemetry.events import TelemetryEvent, kind_filter
from ..watch import WatchEvent
from .abort import Abort
from .blob_lane import LaneReader
from .lease import Lease, new_client_id
from .multiplex import CallMultiplexer, reply_result, reply_value
from .target import Target
READ_BLOB = "/kernelpit.v1.Bridge/ReadBlob"
WRITE_BLOB = "/kernelpit.v1.Bridge/WriteBlob"

_END = object()  # a stream's receiver is done


class _Failed:
    """A stream's receiver failed with ``error`` (raised to the consumer in order)."""

    def __init__(self, error: BaseException) -> None:
        self.error = error


_NO_SPAN = contextlib.nullcontext()  # the blocking call's "span" when tracing is off

class RemoteBackend(Backend):
    """Calls, streams, sessions and control of a bridge, over one gRPC channel.

    A token read from the discovery file that the bridge refuses (UNAUTHENTICATED: it was
    rotated) is read again once and the refused RPC retried (:meth:`_reauth`); the bridge
    refuses before running anything, so nothing runs twice.
    """

    def __init__(self, target: Target) -> None:
        heap.pad_heap_top()  # results of a few MB reuse this process's pages (kernels/heap.py)
        self.target = target
        self.address = address = target.address
        self.client_id = new_client_id()  # names this connection; its lease keeps an idle bridge up
        self.metadata = self._metadata()
        self.channel = target.channel()
        self.stub = pb_grpc.BridgeStub(self.channel)
        self._shared_stubs: _BlockingStubs | None = None  # gRPC's: one for every thread
        self._thread_stubs = threading.local()  # the local transport's: one per thread
        self._opened: weakref.WeakSet[Any] = weakref.WeakSet()  # blocking channels, to close
        self._mux = CallMultiplexer(self.stub, self.metadata, address)
        self._lane: LaneReader | None = None  # the bridge's blob lane, once server_info says
        self.solo = threading.Lock()  # held by the one blocking call on the fast path
        self.limit = chunk_size(None)  # inline binary data per message and upload chunk size
        self._read_blob = self.channel.unary_stream(
            READ_BLOB, request_serializer=pb.ReadBlobRequest.SerializeToString,
            response_deserializer=unframe)
        self._write_blob = self.channel.stream_unary(
            WRITE_BLOB, request_serializer=None, response_deserializer=values_pb.BlobRef.FromString)
        self.lease = Lease(self.stub, self.metadata, self.client_id)  # renewed check() to close()
        self._set_metadata()
        self._shm_values: Codec | None = None
        # the jobs client is this backend's and used only through it: it refers back weakly,
        # so a dropped connection is freed at once, not at the collector's next full pass
        me = weakref.ref(self)
        self.remote_jobs = RemoteJobs(self.channel, lambda: me().metadata, address=address,
                                      incoming=lambda *values: me()._incoming(*values))

    def _metadata(self, accept: str = ACCEPT_PACKED) -> tuple[tuple[str, str], ...]:
        # results may carry packed lists: this client reads them (values.proto)
        return (*auth_metadata(self.target.token), (ACCEPT_KEY, accept),
                (CLIENT_ID_KEY, self.client_id))

    def _call_metadata(self, lane: bool = False) -> tuple[tuple[str, str], ...]:
        """Calls' (the blocking unary ``Call``, the ``Calls`` stream): they also read
        streamed results (contract.streamed), from the shortest list that comes ahead where
        a stream costs little, on the blob lane (``lane``) or the local transport; over
        ``ReadBlob`` from the bridge's default (service.streamed.STREAM_FROM)."""
        found = self._metadata(f"{ACCEPT_PACKED},{ACCEPT_STREAMED}")
        if lane or self.target.local is not None:
            return (*found, (STREAM_FROM_KEY, str(AHEAD_FROM)))
        return found

    def _set_metadata(self) -> None:
        """Every RPC's call metadata, with the token now in use."""
        self.metadata = self.lease.metadata = self._metadata()
        self.call_metadata = self._call_metadata()
        self.lane_call_metadata = self._call_metadata(lane=True)
        # (the Calls stream's is read when it opens, after server_info has found the lane)
        self._mux.metadata = self.lane_call_metadata if self._lane is not None \
            else self.call_metadata

    def _reauth(self) -> bool:
        """After UNAUTHENTICATED: True when the discovery file has a new token (now in use)."""
        if not self.target.reload_token():
            return False
        self._set_metadata()
        return True

    # -- blobs: bytes and Arrow data too large for one message ------------------------------------
    def _values(self) -> Codec:
        """How values without blobs decode here: plainly, or over the local transport with
        Arrow data mapped from shared memory (known once the channel is connected)."""
        shm = getattr(self.channel, "shared_memory", None)
        if shm is None:
            return PLAIN
        if self._shm_values is None or self._shm_values.shm is not shm:
            self._shm_values = Codec(shm=shm)
        return self._shm_values

    def _sized(self, size: int) -> Any:
        return (*self.metadata, (BLOB_SIZE_KEY, str(size)))

    def _uploads(self) -> "_Uploads":
        return _Uploads(self.limit, self._values().shm)

    async def _upload(self, uploads: "_Uploads", *values: Any) -> None:
        for key, segments, size in uploads.items:
            try:
                ref = await self._write_blob(framed(segments, self.limit),
                                             metadata=self._sized(size))
            except grpc.aio.AioRpcError as exc:
                err = errors.from_rpc_error(exc, self.address)
                raise err from None
            uploads.ids[key] = ref.id
        uploads.patch(*values)

    async def _incoming(self, *values: Any) -> Codec:
        """A codec that decodes ``values``, with the blobs they reference read in."""
        downloads = _Downloads(values)
        for ref, fill in downloads.each():
            if self._lane is not None and await asyncio.to_thread(self._lane.read, ref.id, fill):
                continue
            try:
                async for data in self._read_blob(pb.ReadBlobRequest(id=ref.id),
                                                  metadata=self.metadata):
                    fill(data)
            except grpc.aio.AioRpcError as exc:
                err = errors.from_rpc_error(exc, self.address)
                raise err from None
        return downloads.codec(self._values())

    def _stubs(self) -> "_BlockingStubs":
        """The blocking RPCs for this thread.  gRPC's blocking channel serves every thread;
        the local transport's serves one thread at a time, so there each thread that makes
        blocking RPCs (the fast path's, a caller on the Calls stream reading its result's
        blobs, the asyncio API's reader of a streamed result) has a connection of its own."""
        if self.target.local is None:
            if self._shared_stubs is None:
                self._shared_stubs = self._open_stubs()
            return self._shared_stubs
        stubs = getattr(self._thread_stubs, "stubs", None)
        if stubs is None:
            stubs = self._thread_stubs.stubs = self._open_stubs()
        return stubs

    def _open_stubs(self) -> "_BlockingStubs":
        channel = self.target.blocking_channel()
        self._opened.add(channel)
        return _BlockingStubs(
            channel, pb_grpc.BridgeStub(channel).Call,
            channel.unary_stream(READ_BLOB, request_serializer=pb.ReadBlobRequest.SerializeToString,
                                 response_deserializer=unframe),
            channel.stream_unary(WRITE_BLOB, request_serializer=None,
                                 response_deserializer=values_pb.BlobRef.FromString))

    def _upload_blocking(self, uploads: "_Uploads", *values: Any) -> None:
        write = self._stubs().write
        for key, segments, size in uploads.items:
            ref = write(framed(segments, self.limit), metadata=self._sized(size))
            uploads.ids[key] = ref.id
        uploads.patch(*values)

    def _incoming_blocking(self, *values: Any) -> Codec:
        downloads = _Downloads(values)
        for ref, fill in downloads.each():
            self._read_blob_blocking(ref.id, fill)
        return downloads.codec(self._values())

    def _read_blob_blocking(self, blob_id: str, receiver: Any, abort: Abort | None = None) -> None:
        """Blob ``blob_id`` into ``receiver`` (called with each chunk; see the lane's
        ``read``): on the blob lane where it can be reached, else with ``ReadBlob``.
        ``abort`` can cut the read short from another thread."""
        if self._lane is not None and self._lane.read(blob_id, receiver, abort):
            return
        responses = self._stubs().read(pb.ReadBlobRequest(id=blob_id), metadata=self.metadata)
        if abort is not None:
            abort.on(responses.cancel)
        try:
            for data in responses:
                receiver(data)
        finally:
            if abort is not None:
                abort.on(None)  # the read is over: a later abort must not touch the connection

    def call_blocking(self, tool: str, args: Any, kwargs: dict[str, Any],
                      options: CallOptions, loop: asyncio.AbstractEventLoop | None = None) -> Any:
        """:meth:`call` for a thread without an event loop, which waits for it: a blocking
        unary ``Call``, or with ``loop`` (the one the ``Calls`` stream runs on: other threads
        are in calls too) a call on that stream handed over from this thread (in a client
        span when tracing is on: this path bypasses the asyncio API's)."""
        with tracing.client_span(tool) if tracing.tracer() is not None else _NO_SPAN:
            try:
                return self._call_blocking(tool, args, kwargs, options, loop)
            except Unauthenticated:
                if not self._reauth():
                    raise
            return self._call_blocking(tool, args, kwargs, options, loop)

    def _call_blocking(self, tool: str, args: Any, kwargs: dict[str, Any],
                       options: CallOptions, loop: asyncio.AbstractEventLoop | None) -> Any:
        try:
            uploads = self._uploads()
            request = convert.call_request(tool, args, kwargs, options, uploads.codec)
            if uploads.items:
                self._upload_blocking(uploads, request.args, request.kwargs)
            if loop is not None:
                result = reply_result(self._mux.call_from_thread(request, loop))
            else:
                # Blocking, not .future(): ~0.15 ms less per call.  Ctrl-C still works (gRPC
                # checks for signals while it waits) and tears the RPC down, which cancels the call.
                lane = self._lane is not None and self._lane.usable
                reply = self._stubs().call(request, metadata=self.lane_call_metadata if lane
                                           else self.call_metadata)
                if not reply.HasField("result"):
                    return None
                result = reply.result
            if streamed.is_streamed(result):
                return self._streamed(result)
            codec = self._incoming_blocking(result)
        except grpc.RpcError as exc:
            err = errors.from_rpc_error(exc, self.address)  # type: ignore[arg-type]
        else:
            return codec.decode(result, "result")
        raise err

    def _streamed(self, value: values_pb.Value, abort: Abort | None = None) -> Any:
        """A streamed result (contract.streamed), read over the blob lane or ``ReadBlob``
        with each list made while the next is on its way.  Raises the call's error.  It
        blocks: the asyncio API runs it in a thread (:meth:`_streamed_async`), which
        ``abort`` stops."""
        reader = streamed.StreamReader()
        try:
            self._read_blob_blocking(value.blobs[0].id, reader, abort)
            result = reader.result()
            return self._incoming_blocking(result).decode(result, "result", reader.lists)
        except streamed.StreamError as exc:
            raise BridgeError(f"the bridge at {self.address} sent a streamed result that cannot "
                              f"be read ({exc}); the call's result is lost") from None
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc, self.address) from None  # type: ignore[arg-type]

    async def _streamed_async(self, value: values_pb.Value) -> Any:
        """:meth:`_streamed` in a thread.  When the awaiting task is cancelled, the thread's
        read is cut short at once: the bridge frees the result and cancels the call."""
        abort = Abort()
        try:
            return await asyncio.to_thread(self._streamed, value, abort)
        except asyncio.CancelledError:
            abort.fire()
            raise

    async def _rpc(self, method: Any, request: Any, timeout: float | None = None) -> Any:
        for attempt in (0, 1):
            try:
                return await method(request, metadata=self.metadata, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                err = errors.from_rpc_error(exc, self.address)
            if not (attempt == 0 and isinstance(err, Unauthenticated) and self._reauth()):
                break
        raise err

    # -- the Backend protocol ----------------------------------------------------------
    async def call(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions) -> Any:
        try:
            return await self._call(tool, args, kwargs, options)
        except Unauthenticated:
            if not self._reauth():
                raise
        return await self._call(tool, args, kwargs, options)

    async def _call(self, tool: str, args: Any, kwargs: dict[str, Any],
                    options: CallOptions) -> Any:
        # Over the multiplexed stream: no per-RPC cost, so many callers in flight scale.
        uploads = self._uploads()
        request = convert.call_request(tool, args, kwargs, options, uploads.codec)
        if uploads.items:
            await self._upload(uploads, request.args, request.kwargs)
        reply = await self._mux.call(request)
        if reply.WhichOneof("outcome") != "error" and reply.result.blobs:
            if streamed.is_streamed(reply.result):
                return await self._streamed_async(reply.result)
            return reply_value(reply, await self._incoming(reply.result))
        return reply_value(reply, self._values())

    async def stream(self, tool: str, args: Any, kwargs: dict[str, Any],
                     options: CallOptions) -> AsyncIterator[Event]:
        uploads = self._uploads()
        request = convert.call_request(tool, args, kwargs, options, uploads.codec)
        if uploads.items:
            await self._upload(uploads, request.args, request.kwargs)
        rpc = self.stub.CallStream(request, metadata=self.metadata)
        if await self._refused(rpc):
            rpc = self.stub.CallStream(request, metadata=self.metadata)
        # Received as fast as they come, so that while the consumer is behind the events wait
        # here, where progress coalesces, and not in gRPC's buffers, where it cannot.
        events: AsyncBacklog[Any] = AsyncBacklog()
        receiver = asyncio.ensure_future(self._receive(rpc, events))
        try:
            while True:
                item = await events.get()
                if item is _END:
                    return
                if isinstance(item, _Failed):
                    raise item.error
                yield item
        finally:
            receiver.cancel()
            rpc.cancel()  # leaving early cancels the call; a no-op once it has ended

    async def _receive(self, rpc: Any, events: "AsyncBacklog[Any]") -> None:
        """Put the events of a ``CallStream`` into ``events``, then ``_END`` (after a
        ``_Failed`` when the stream failed)."""
        try:
            async for batch in rpc:
                for m in batch.events:
                    kind = m.WhichOneof("kind")
                    codec = self._values()
                    if kind in ("partial", "result") and getattr(m, kind).blobs:
                        codec = await self._incoming(getattr(m, kind))
                    events.put_nowait(convert.event_from_proto(m, codec))
        except grpc.aio.AioRpcError as exc:
            events.put_nowait(_Failed(errors.from_rpc_error(exc, self.address)))
        except Exception as exc:  # noqa: BLE001 - e.g. a blob that could not be read
            events.put_nowait(_Failed(exc))
        finally:
            events.put_nowait(_END)

    async def map(self, tool: str, columns: list[list[Any]], options: CallOptions,
                  chunksize: int | None = None) -> list[Any]:
        uploads = self._uploads()
        req = convert.map_request(tool, columns, options, chunksize, uploads.codec)
        if uploads.items:
            await self._upload(uploads, req.columns)
        reply = await self._rpc(self.stub.Map, req)
        codec = await self._incoming(reply.results)
        return codec.decode(reply.results, "results") or []

    async def open_session(self, pool: str | None, ttl: float | None, metadata: dict[str, str],
                           session_id: str | None = None) -> SessionInfo:
        req = pb.CreateSessionRequest(pool=pool or "", ttl=ttl, metadata=metadata or {},
                                      id=session_id or "")
        return convert.session_from_proto(await self._rpc(self.stub.CreateSession, req))

    async def close_session(self, session_id: str) -> SessionInfo:
        reply = await self._rpc(self.stub.CloseSession, pb.CloseSessionRequest(id=session_id))
        return convert.session_from_proto(reply)

    # -- durable jobs: the Jobs service, on the same channel ----------------------------
    async def submit(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions,
                     key: str | None = None) -> JobInfo:
        # a job's values are journaled and outlive this client: blobs, never shared memory
        uploads = _Uploads(self.limit)
        request = convert.call_request(tool, args, kwargs, options, uploads.codec)
        if uploads.items:
            await self._upload(uploads, request.args, request.kwargs)
        return await self.remote_jobs.submit_request(request, key)

    async def job(self, job_id: str) -> JobInfo:
        return await self.remote_jobs.get(job_id)

    async def jobs(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        return await self.remote_jobs.list(state, tool, limit, before)

    def job_events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        return self.remote_jobs.events(job_id, after)

    async def job_result(self, job_id: str, timeout: float | None = None) -> Any:
        return await self.remote_jobs.result(job_id, timeout)

    async def cancel_job(self, job_id: str) -> JobInfo:
        return await self.remote_jobs.cancel(job_id)

    async def delete_job(self, job_id: str) -> None:
        await self.remote_jobs.delete(job_id)

    # -- introspection and control -------------------------------------------------------
    async def get_session(self, session_id: str) -> SessionInfo:
        reply = await self._rpc(self.stub.GetSession, pb.GetSessionRequest(id=session_id))
        return convert.session_from_proto(reply)

    async def sessions(self) -> list[SessionInfo]:
        reply = await self._rpc(self.stub.ListSessions, pb.ListSessionsRequest())
        return [convert.session_from_proto(s) for s in reply.sessions]

    async def tools(self, pool: str | None = None) -> list[ToolInfo]:
        reply = await self._rpc(self.stub.ListTools, pb.ListToolsRequest(pool=pool or ""))
        return [convert.tool_from_proto(t) for t in reply.tools]

    async def describe(self, name: str, pool: str | None = None) -> ToolInfo:
        req = pb.DescribeToolRequest(name=name, pool=pool or "")
        return convert.tool_from_proto(await self._rpc(self.stub.DescribeTool, req))

    async def workers(self, pool: str | None = None) -> list[WorkerInfo]:
        reply = await self._rpc(self.stub.ListWorkers, pb.ListWorkersRequest(pool=pool or ""))
        return [convert.worker_from_proto(w) for w in reply.workers]

    async def interrupt(self, worker_id: int) -> None:
        await self._rpc(self.stub.InterruptWorker, pb.WorkerRequest(id=worker_id))

    async def restart(self, worker_id: int) -> None:
        await self._rpc(self.stub.RestartWorker, pb.WorkerRequest(id=worker_id))

    async def recycle(self, worker_id: int) -> None:
        await self._rpc(self.stub.RecycleWorker, pb.WorkerRequest(id=worker_id))

    async def reload(self, pool: str | None = None) -> int:
        reply = await self._rpc(self.stub.Reload, pb.ReloadRequest(pool=pool or ""))
        return reply.workers

    async def untaint(self, tool: str, pool: str | None = None) -> bool:
        reply = await self._rpc(self.stub.Untaint, pb.UntaintRequest(tool=tool, pool=pool or ""))
        return reply.lifted

    def watch(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        return self._follow(self.stub.Watch, pb.WatchRequest(snapshot_interval=interval),
                            lambda m: (convert.watch_from_proto(m),))

    async def _follow(self, method: Any, request: Any,
                      items: Any) -> AsyncIterator[Any]:
        """A server stream's ``items(message)``, with a token rotated since connecting picked
        up once and errors mapped as for every RPC; leaving early cancels the stream."""
        rpc = method(request, metadata=self.metadata)
        if await self._refused(rpc):
            rpc = method(request, metadata=self.metadata)
        err = None
        try:
            async for m in rpc:
                for item in items(m):
                    yield item
        except grpc.aio.AioRpcError as exc:
            err = errors.from_rpc_error(exc, self.address)
        finally:
            rpc.cancel()
        if err is not None:
            raise err

    async def _refused(self, rpc: Any) -> bool:
        """Whether a stream RPC was refused for its token and a new token is in use (retry it)."""
        try:
            await rpc.initial_metadata()  # comes with the first reply, or with the refusal
            code = await rpc.code() if rpc.done() else None
        except grpc.aio.AioRpcError as exc:
            code = exc.code()
        return code == grpc.StatusCode.UNAUTHENTICATED and self._reauth()

    # -- tokens (admin; not part of the Backend contract: only a bridge has them) ----------
    async def add_token(self, name: str, role: str) -> TokenInfo:
        reply = await self._rpc(self.stub.AddToken, pb.AddTokenRequest(name=name, role=role))
        return convert.token_from_proto(reply.token, reply.secret)

    async def list_tokens(self) -> list[TokenInfo]:
        reply = await self._rpc(self.stub.ListTokens, pb.ListTokensRequest())
        return [convert.token_from_proto(t) for t in reply.tokens]

    async def revoke_token(self, name: str) -> TokenInfo:
        return convert.token_from_proto(await self._rpc(self.stub.RevokeToken,
                                                        pb.TokenRequest(name=name)))

    async def rotate_token(self, name: str) -> TokenInfo:
        reply = await self._rpc(self.stub.RotateToken, pb.TokenRequest(name=name))
        return convert.token_from_proto(reply.token, reply.secret)

    def subscribe(self, kinds: list[str] | None = None) -> AsyncIterator[TelemetryEvent]:
        kind_filter(kinds)  # an unknown kind raises ValueError here, as in an embedded pool
        return self._follow(self.stub.Subscribe, pb.SubscribeRequest(kinds=kinds or ()),
                            lambda batch: map(convert.telemetry_from_proto, batch.events))

    async def server_info(self, timeout: float | None = None) -> pb.ServerInfo:
        info = await self._rpc(self.stub.GetServerInfo, pb.ServerInfoRequest(), timeout)
        # Arrow data beyond this per message goes as blobs, in chunks the bridge accepts
        # (a bridge that does not say: chunks that fit gRPC's default 4 MB limit).
        self.limit = chunk_size(info.max_message_size or 4 * 10**6)
        self._mux.max_batch_bytes = self.limit
        if self._lane is None:
            # large results from the bridge's blob lane (kernelpit.remote.blob_lane): beside
            # the local transport, its Unix socket; else at the host this client dialled (the
            # bridge may listen on every address), when gRPC is plaintext
            host, _ = split_host_port(self.address) or ("", 0)
            where: tuple[str, int] | str | None = None
            if self.target.local is not None:
                where = getattr(self.channel, "lane", None)
            elif info.blob_lane_port and host and self.target.tls is None:
                where = (host, info.blob_lane_port)
            if where is not None:
                target = self.target
                self._lane = LaneReader(where, lambda: target.token, self.address)
                self._set_metadata()
        return info

    async def shutdown(self, grace: float | None = None) -> None:
        await self._rpc(self.stub.Shutdown, pb.ShutdownRequest(grace=grace))

    async def close(self) -> None:
        try:
            await self.lease.stop()
            await self._mux.close()
        finally:  # the connections go even when the above is cut short
            if self._lane is not None:
                self._lane.close()
            for channel in list(self._opened):
                channel.close()
            await self.channel.close()
            wire.drop_kept()  # large received frames kept for reuse that nobody holds any more


class _BlockingStubs(NamedTuple):
    """A blocking channel and the RPCs a blocking call makes on it."""

    channel: Any
    call: Any
    read: Any
    write: Any


class _Uploads:
    """Arrow data of one request that goes as blobs: parked while encoding, uploaded, patched in."""

    def __init__(self, limit: int, shm: Any = None) -> None:
        items: list[tuple[str, list[Any], int]] = []
        self.items = items
        self.ids: dict[str, str] = {}

        def park(segments: list[Any], size: int) -> str:
            key = f"upload-{len(items)}"
            items.append((key, segments, size))
            return key

        # park is not a bound method: that would be a cycle (self -> codec -> self), which
        # would keep the caller's buffers in ``items`` until a garbage collection
        self.codec = Codec(park=park, limit=limit, packed=True, shm=shm)

    def patch(self, *values: Any) -> None:
        for value in values:
            for ref in value.blobs:
                if ref.id in self.ids:
                    ref.id = self.ids[ref.id]


class _Downloads:
    """The blobs that the values of one reply reference: read in one by one (the async and
    the blocking client each with their own stream), then a codec that decodes the values."""

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.refs = [r for v in values for r in blob_refs(v)]
        self.got: dict[str, Any] = {}

    def each(self) -> Iterator[tuple[Any, "_Receiver"]]:
        """(ref, receiver) for each blob, to be filled before the next one."""
        for ref in self.refs:
            receiver = _Receiver(ref.size)
            yield ref, receiver
            self.got[ref.id] = _complete(receiver, ref)

    def codec(self, plain: Codec) -> Codec:
        """``plain`` (how values without blobs decode here), or one that fetches the blobs."""
        if not self.refs:
            return plain
        got = self.got
        return Codec(fetch=lambda blob_id, size: got[blob_id], shm=plain.shm)


class _Receiver:
    """A blob's buffer being filled: a ``bytes`` object of ``size`` bytes filled in place (as
    the pool's wire receives a frame: no zero-fill, into kept memory when large).  Called
    with each chunk of a ``ReadBlob`` stream; the blob lane receives into :meth:`free`
    instead.  A ``bytes`` value is the buffer itself, and tables decoded from it point into
    it: one copy, from the messages (none beyond the socket's, from the blob lane)."""

    def __init__(self, size: int) -> None:
        self.size = size
        self.buffer, self._view = wire.fill_in_place(size)
        self.pos = 0

    def __call__(self, data: memoryview) -> None:
        n = len(data)
        if self.pos + n > self.size:
            raise BridgeError(f"the bridge sent more than the {self.size} bytes announced for "
                              "a blob")
        self._view[self.pos:self.pos + n] = data
        self.pos += n

    def free(self) -> memoryview:
        """The part of the buffer not filled yet."""
        return self._view[self.pos:]

    def advance(self, n: int) -> None:
        """``n`` more bytes were written into :meth:`free`."""
        self.pos += n


def _complete(receiver: _Receiver, ref: Any) -> Any:
    if receiver.pos != ref.size:
        raise BridgeError(f"blob {ref.id} ended after {receiver.pos} of {ref.size} bytes")
    return receiver.buffer
