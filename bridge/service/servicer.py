"""The ``kernelpit.v1.Bridge`` RPC handlers, over the embedded pool's
:class:`~kernelpit.local.LocalBackend`: a bridge answers exactly as an embedded pool does.

Every handler turns whatever it raises into a status with the structured
error attached (:mod:`.errors`), so bad input fails one RPC and nothing else.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ..exceptions import InvalidArguments, KernelpitError
from ..local import LocalBackend
from ..v1 import bridge_pb2 as pb
from ..v1 import bridge_pb2_grpc as pb_grpc
from ..v1 import values_pb2 as values_pb
from ..contract import convert, errors
from ..contract.framing import BLOB_SIZE_KEY, batch as message_batch, chunk_size, split
from ..contract.metadata import ACCEPT_KEY, ACCEPT_PACKED, ACCEPT_STREAMED, STREAM_FROM_KEY
from ..kernels.protocol import AHEAD_FROM
from ..contract.values import Codec
from . import streamed
from .blobs import BlobError, BlobStore
from .multiplex import serve_calls
from .idle import IdleMonitor
from .pump import EventPump
from .auth import caller_identity
from .tokens import TokenStore
from .tenancy import Resolver, Tenancy
from ..telemetry import tracing

log = logging.getLogger("kernelpit.service")


async def abort(context: grpc.aio.ServicerContext, exc: BaseException) -> None:
    """End the RPC with the status and structured error of ``exc``."""
    if not isinstance(exc, (KernelpitError, ValueError, TypeError)) \
            and not hasattr(exc, "remote_traceback"):
        log.exception("internal error while serving an RPC", exc_info=exc)
    code, details, trailing = errors.to_status(exc)
    await context.abort(code, details, trailing_metadata=trailing)


def handles_errors(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    @functools.wraps(fn)
    async def handler(self: Any, request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await fn(self, request, context)
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)
    return handler


class BridgeServicer(pb_grpc.BridgeServicer):
    def __init__(self, backend: LocalBackend, server_info: Callable[[], pb.ServerInfo],
                 shutdown: Callable[[float | None], None], blobs: BlobStore | None = None,
                 max_message_size: int | None = None, leases: IdleMonitor | None = None,
                 tokens: TokenStore | None = None) -> None:
        self._backend = backend
        self.leases = leases if leases is not None else IdleMonitor(None, lambda idle_for: None)
        self._manager = manager = backend.manager  # calls go straight to it: the hot path
        # Arrow data beyond one chunk travels as blobs (ReadBlob/WriteBlob), so no message
        # is bigger than about max_message_size / 2 however large the value.
        self.blobs = blobs if blobs is not None else BlobStore(manager.shm_dir)
        self._limit = chunk_size(max_message_size)
        self._results = Codec(park=self.blobs.put, limit=self._limit)
        self._packed_results = Codec(park=self.blobs.put, limit=self._limit, packed=True)
        self._requests = Codec(fetch=self.blobs.take, untrusted=True)
        self._shared_requests = Codec(fetch=self.blobs.take, untrusted=True,
                                      shm=manager.transport)
        self._closing = backend.closing
        self._server_info = server_info
        self._shutdown = shutdown
        self._tokens = tokens
        self._tenancy = Tenancy()  # whose call it is: fair queuing and quotas

    # -- calls -----------------------------------------------------------------------
    @staticmethod
    def _accepted(context: grpc.aio.ServicerContext) -> tuple[list[str], int]:
        """What the client reads in results beyond the plain Value (``kernelpit-accept``), and
        from how long a list it wants a result streamed (``kernelpit-stream-from``, bytes;
        not below the lists that come ahead at all)."""
        accepted, stream_from = [], streamed.STREAM_FROM
        for key, value in context.invocation_metadata() or ():
            if key == ACCEPT_KEY:
                accepted = value.split(",")
            elif key == STREAM_FROM_KEY:
                with contextlib.suppress(ValueError):  # not a number: the default
                    stream_from = max(int(value), AHEAD_FROM)
        return accepted, stream_from

    def _replies(self, context: grpc.aio.ServicerContext) -> tuple[Codec, int | None]:
        """How the results of an RPC's calls go back, from its metadata: their codec, and
        from how long a list a result is streamed (None: never; see .streamed) to a client
        that reads packed lists and streamed results."""
        accepted, stream_from = self._accepted(context)
        packed = ACCEPT_PACKED in accepted
        streams = packed and ACCEPT_STREAMED in accepted
        return self._codec(context, packed), stream_from if streams else None

    def _result_codec(self, context: grpc.aio.ServicerContext, park: Any = None) -> Codec:
        """How results go back (see :meth:`_codec`), to a client that reads packed lists if
        it said so (values.proto)."""
        return self._codec(context, ACCEPT_PACKED in self._accepted(context)[0], park)

    def _codec(self, context: grpc.aio.ServicerContext, packed: bool, park: Any = None) -> Codec:
        """Large Arrow data by shared memory to a local-transport client
        (``context.shared_memory``), else as blobs (``park``: the stream's own)."""
        shm = getattr(context, "shared_memory", None)
        if shm is None and park is None:
            return self._packed_results if packed else self._results
        return Codec(park=park or self.blobs.put, limit=self._limit, packed=packed, shm=shm)

    def _request_codec(self, context: grpc.aio.ServicerContext) -> Codec:
        """How arguments are read: a local-transport client may send Arrow data by shared
        memory (mapped here, validated like any client's data)."""
        if getattr(context, "shared_memory", None) is None:
            return self._requests
        return self._shared_requests

    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallResponse:
        try:
            args, kwargs, options = convert.call_from_request(request,
                                                              self._request_codec(context))
            options = self._tenancy.options(options, context)
            replies = self._replies(context)
            if tracing.tracer() is None:
                result = await self._result(request.tool, args, kwargs, options, *replies)
            else:
                with tracing.server_span(request.tool, request.options.trace_context,
                                         context.invocation_metadata()):
                    result = await self._result(request.tool, args, kwargs, options, *replies)
            response = pb.CallResponse()
            if result is not None:  # CopyFrom, not CallResponse(result=...): see framing.batch
                response.result.CopyFrom(result)
            return response
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def _result(self, tool: str, args: Any, kwargs: dict[str, Any], options: Any,
                      codec: Codec, stream_from: int | None) -> values_pb.Value | None:
        """A call's result as a Value (see :meth:`_replies`): streamed once a list of at
        least ``stream_from`` bytes comes before the result (.streamed), else whole."""
        if stream_from is not None:
            return await streamed.run_call(self._manager, self.blobs, codec, tool, args, kwargs,
                                           options, stream_from)
        value = await self._manager.call(tool, args, kwargs, options)
        return None if value is None else codec.encode(value)

    async def Calls(self, requests: AsyncIterator[pb.CallBatch],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReplyBatch]:
        # Headers at once: the client writes its first calls only after them (see
        # kernelpit.remote.multiplex), so a refused stream is never raced by a write.
        await context.send_initial_metadata(())
        resolve = self._tenancy.resolver(context)  # one caller for the whole stream
        codec = self._request_codec(context)
        replies = self._replies(context)
        async for batch in serve_calls(
                requests, lambda request: self._run(request, resolve, codec, replies),
                self._closing, self._limit):
            yield batch

    async def _run(self, request: pb.CallRequest, resolve: Resolver, codec: Codec,
                   replies: tuple[Codec, int | None]) -> values_pb.Value | None:
        args, kwargs, options = convert.call_from_request(request, codec)
        options = resolve(options)
        if tracing.tracer() is None:
            return await self._result(request.tool, args, kwargs, options, *replies)
        with tracing.server_span(request.tool, request.options.trace_context):
            return await self._result(request.tool, args, kwargs, options, *replies)

    @handles_errors
    async def Map(self, request: pb.MapRequest, context: Any) -> pb.MapResponse:
        columns, options, chunksize = convert.map_from_request(request,
                                                               self._request_codec(context))
        options = self._tenancy.options(options, context)
        with tracing.server_span(request.tool, request.options.trace_context,
                                 context.invocation_metadata()):
            results = await self._manager.map(request.tool, columns, options, chunksize)
        response = pb.MapResponse()
        response.results.CopyFrom(self._result_codec(context).encode(results))
        return response

    async def CallStream(self, request: pb.CallRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EventBatch]:
        try:
            args, kwargs, options = convert.call_from_request(request,
                                                              self._request_codec(context))
            options = self._tenancy.options(options, context)
        except Exception as exc:
            await abort(context, exc)
        # Blobs of this stream's partials and result; freed if the stream is cut short.
        owner = object()
        codec = self._result_codec(
            context, lambda segments, size: self.blobs.put(segments, size, owner))
        complete = False
        # Events that pile up while a batch is being written go out together in the next.
        # Leaving this generator early (client gone, RPC cancelled) cancels the pump, which
        # closes the core's stream: that cancels the call and interrupts the tool.
        span = tracing.server_span(request.tool, request.options.trace_context,
                                   context.invocation_metadata())
        with span:  # the pump's task (so the call) starts inside it: context is copied
            pump = EventPump(self._manager.stream(request.tool, args, kwargs, options))
        try:
            while True:
                batch, failure = await pump.next_batch()
                # several partials of up to a chunk each: never one message above the limit
                parts = split([convert.event_to_proto(e, codec) for e in batch], self._limit)
                del batch  # its values (a mapped table) are not kept while the client reads
                for part in parts:
                    yield message_batch(pb.EventBatch, "events", part)
                if failure is not None:
                    complete = True
                    await abort(context, failure)
                if pump.finished:
                    complete = True
                    return
        finally:
            pump.close()
            if not complete:
                self.blobs.release(owner)

    # -- blobs -----------------------------------------------------------------------
    # Registered with hand-made framing (see server.add_servicer): ReadBlob yields
    # serialized BlobChunks, WriteBlob receives each chunk's data as a memoryview.
    async def ReadBlob(self, request: pb.ReadBlobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[bytes]:
        chunks = self.blobs.read(request.id)
        try:
            async for chunk in chunks:
                yield chunk
        except BlobError as exc:
            await context.abort(grpc.StatusCode.NOT_FOUND, str(exc))
        finally:
            await chunks.aclose()  # a read cut short (client gone) frees the blob now

    async def WriteBlob(self, requests: AsyncIterator[memoryview],
                        context: grpc.aio.ServicerContext) -> values_pb.BlobRef:
        expected = dict(context.invocation_metadata() or ()).get(BLOB_SIZE_KEY)
        try:
            announced = int(expected) if expected is not None else None
        except ValueError:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"{BLOB_SIZE_KEY} must be a number of bytes, got {expected!r}")
            raise  # unreachable
        try:
            blob_id, size = await self.blobs.write(requests, announced)
        except OSError as exc:  # no room: the client is told why (INVALID_ARGUMENT)
            await abort(context, InvalidArguments(f"the bridge cannot store the upload: {exc}"))
            raise  # unreachable
        # A client that goes away mid-upload may look like one that finished: check.
        if context.cancelled() or (announced is not None and announced != size):
            self.blobs.drop([blob_id])
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT,
                                f"the upload ended after {size} bytes of {expected or 'unknown'}")
        return values_pb.BlobRef(id=blob_id, size=size)

    # -- tools -----------------------------------------------------------------------
    @handles_errors
    async def ListTools(self, request: pb.ListToolsRequest, context: Any) -> pb.ListToolsResponse:
        tools = await self._backend.tools(request.pool or None)
        return pb.ListToolsResponse(tools=[convert.tool_to_proto(t) for t in tools])

    @handles_errors
    async def DescribeTool(self, request: pb.DescribeToolRequest, context: Any) -> pb.Tool:
        return convert.tool_to_proto(await self._backend.describe(request.name,
                                                                  request.pool or None))

    # -- sessions --------------------------------------------------------------------
    @handles_errors
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        info = await self._manager.open_session(
            request.pool or None, request.ttl if request.HasField("ttl") else None,
            dict(request.metadata), request.id or None,
            tenant=self._tenancy.resolver(context).tenant)
        return convert.session_to_proto(info)

    @handles_errors
    async def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.Session:
        return convert.session_to_proto(await self._backend.get_session(request.id))

    @handles_errors
    async def ListSessions(self, request: Any, context: Any) -> pb.ListSessionsResponse:
        return pb.ListSessionsResponse(
            sessions=[convert.session_to_proto(s) for s in await self._backend.sessions()])

    @handles_errors
    async def CloseSession(self, request: pb.CloseSessionRequest, context: Any) -> pb.Session:
        return convert.session_to_proto(await self._backend.close_session(request.id))

    # -- workers ---------------------------------------------------------------------
    @handles_errors
    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Any) -> pb.ListWorkersResponse:
        workers = await self._backend.workers(request.pool or None)
        return pb.ListWorkersResponse(workers=[convert.worker_to_proto(w) for w in workers])

    @handles_errors
    async def RestartWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._backend.restart(request.id)
        return pb.WorkerResponse()

    @handles_errors
    async def InterruptWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._backend.interrupt(request.id)
        return pb.WorkerResponse()

    @handles_errors
    async def RecycleWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._backend.recycle(request.id)
        return pb.WorkerResponse()

    @handles_errors
    async def Reload(self, request: pb.ReloadRequest, context: Any) -> pb.ReloadResponse:
        return pb.ReloadResponse(workers=await self._backend.reload(request.pool or None))

    @handles_errors
    async def Untaint(self, request: pb.UntaintRequest, context: Any) -> pb.UntaintResponse:
        return pb.UntaintResponse(lifted=await self._backend.untaint(request.tool,
                                                                     request.pool or None))

    # -- watch -----------------------------------------------------------------------
    async def Watch(self, request: pb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEvent]:
        async for event in self._backend.watch(request.snapshot_interval):
            yield convert.watch_to_proto(event)

    # -- observability -----------------------------------------------------------------
    async def Subscribe(self, request: pb.SubscribeRequest,
                        context: grpc.aio.ServicerContext) -> AsyncIterator[pb.TelemetryBatch]:
        try:
            subscription = self._backend.subscribe(list(request.kinds) or None)
        except ValueError as exc:
            await abort(context, InvalidArguments(str(exc)))
            raise  # unreachable
        try:
            while True:
                batch = await subscription.next_batch()
                if not batch:
                    return
                yield pb.TelemetryBatch(events=[convert.telemetry_to_proto(e) for e in batch])
        finally:
            await subscription.aclose()

    # -- the bridge ------------------------------------------------------------------
    async def GetServerInfo(self, request: Any, context: Any) -> pb.ServerInfo:
        info = self._server_info()
        who = caller_identity(context)
        info.security.role, info.security.token_name = who.role, who.name
        return info

    async def Shutdown(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownResponse:
        self._shutdown(request.grace if request.HasField("grace") else None)
        return pb.ShutdownResponse()

    @handles_errors
    async def RenewLease(self, request: pb.RenewLeaseRequest,
                         context: Any) -> pb.RenewLeaseResponse:
        """A client says it is still connected (``self.leases``: the bridge's idle.IdleMonitor)."""
        return self.leases.renew(request, context.invocation_metadata())

    # -- tokens (admin) ----------------------------------------------------------------
    def _store(self) -> TokenStore:
        if self._tokens is None:
            raise ValueError("this bridge runs without authentication (--no-auth): it has no "
                             "tokens to manage; restart it without --no-auth")
        return self._tokens

    @handles_errors
    async def AddToken(self, request: pb.AddTokenRequest, context: Any) -> pb.TokenSecret:
        token, secret = self._store().add(request.name, request.role)
        return pb.TokenSecret(token=convert.token_to_proto(token), secret=secret)

    @handles_errors
    async def ListTokens(self, request: Any, context: Any) -> pb.ListTokensResponse:
        return pb.ListTokensResponse(tokens=[convert.token_to_proto(t) for t in self._store().list()])

    @handles_errors
    async def RevokeToken(self, request: pb.TokenRequest, context: Any) -> pb.TokenInfo:
        return convert.token_to_proto(self._store().revoke(request.name))

    @handles_errors
    async def RotateToken(self, request: pb.TokenRequest, context: Any) -> pb.TokenSecret:
        token, secret = self._store().rotate(request.name)
        return pb.TokenSecret(token=convert.token_to_proto(token), secret=secret)
