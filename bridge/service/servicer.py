"""The ``kernelpit.v1.Bridge`` RPC handlers, over a :class:`~kernelpit.pool.PoolManager`.

Every handler turns whatever it raises into a status with the structured
error attached (:mod:`.errors`), so bad input fails one RPC and nothing else.
"""

from __future__ import annotations

import asyncio
import difflib
import functools
import logging
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ..exceptions import KernelpitError, ToolNotFound
from ..pool import PoolManager
from ..v1 import bridge_pb2 as pb
from ..v1 import bridge_pb2_grpc as pb_grpc
from . import convert, errors
from .multiplex import serve_calls
from .pump import EventPump
from .values import to_value
from .watch import WatchHub

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
    def __init__(self, manager: PoolManager, closing: asyncio.Event,
                 server_info: Callable[[], pb.ServerInfo],
                 shutdown: Callable[[float | None], None]) -> None:
        self._manager = manager
        self._closing = closing
        self._server_info = server_info
        self._shutdown = shutdown
        self._watch = WatchHub(self._worker_states, manager.workers, manager.list_sessions,
                               closing)

    # -- calls -----------------------------------------------------------------------
    async def Call(self, request: pb.CallRequest, context: grpc.aio.ServicerContext) -> pb.CallResponse:
        try:
            args, kwargs, options = convert.call_from_request(request)
            value = await self._manager.call(request.tool, args, kwargs, options)
            if value is None:
                return pb.CallResponse()
            return pb.CallResponse(result=to_value(value))
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:
            await abort(context, exc)
            raise  # unreachable: abort raises

    async def Calls(self, requests: AsyncIterator[pb.CallBatch],
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.ReplyBatch]:
        async for batch in serve_calls(requests, self._run, self._closing):
            yield batch

    async def _run(self, request: pb.CallRequest) -> Any:
        args, kwargs, options = convert.call_from_request(request)
        return await self._manager.call(request.tool, args, kwargs, options)

    @handles_errors
    async def Map(self, request: pb.MapRequest, context: Any) -> pb.MapResponse:
        items, options, chunksize = convert.map_from_request(request)
        results = await self._manager.map(request.tool, items, options, chunksize)
        return pb.MapResponse(results=to_value(results))

    async def CallStream(self, request: pb.CallRequest,
                         context: grpc.aio.ServicerContext) -> AsyncIterator[pb.EventBatch]:
        try:
            args, kwargs, options = convert.call_from_request(request)
        except Exception as exc:
            await abort(context, exc)
        # Events that pile up while a batch is being written go out together in the next.
        # Leaving this generator early (client gone, RPC cancelled) cancels the pump, which
        # closes the core's stream: that cancels the call and interrupts the tool.
        pump = EventPump(self._manager.stream(request.tool, args, kwargs, options))
        try:
            while True:
                batch, failure = await pump.next_batch()
                if batch:
                    yield pb.EventBatch(events=[convert.event_to_proto(e) for e in batch])
                if failure is not None:
                    await abort(context, failure)
                if pump.finished:
                    return
        finally:
            pump.close()

    # -- tools -----------------------------------------------------------------------
    @handles_errors
    async def ListTools(self, request: pb.ListToolsRequest, context: Any) -> pb.ListToolsResponse:
        if request.pool and request.pool not in self._manager.groups:
            raise ToolNotFound(f"no pool named '{request.pool}' "
                               f"(pools: {', '.join(self._manager.groups)})")
        tools = self._manager.tools(request.pool or None)
        return pb.ListToolsResponse(tools=[convert.tool_to_proto(t) for t in tools])

    @handles_errors
    async def DescribeTool(self, request: pb.DescribeToolRequest, context: Any) -> pb.Tool:
        tools = self._manager.tools(request.pool or None)
        for t in tools:
            if t.name == request.name:
                return convert.tool_to_proto(t)
        close = difflib.get_close_matches(request.name, [t.name for t in tools], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ToolNotFound(f"no tool named '{request.name}'{hint}", tool=request.name)

    # -- sessions --------------------------------------------------------------------
    @handles_errors
    async def CreateSession(self, request: pb.CreateSessionRequest, context: Any) -> pb.Session:
        info = await self._manager.open_session(
            request.pool or None, request.ttl if request.HasField("ttl") else None,
            dict(request.metadata), request.id or None)
        return convert.session_to_proto(info)

    @handles_errors
    async def GetSession(self, request: pb.GetSessionRequest, context: Any) -> pb.Session:
        return convert.session_to_proto(self._manager.get_session(request.id))

    @handles_errors
    async def ListSessions(self, request: Any, context: Any) -> pb.ListSessionsResponse:
        return pb.ListSessionsResponse(
            sessions=[convert.session_to_proto(s) for s in self._manager.list_sessions()])

    @handles_errors
    async def CloseSession(self, request: pb.CloseSessionRequest, context: Any) -> pb.Session:
        return convert.session_to_proto(await self._manager.close_session(request.id))

    # -- workers ---------------------------------------------------------------------
    @handles_errors
    async def ListWorkers(self, request: pb.ListWorkersRequest, context: Any) -> pb.ListWorkersResponse:
        workers = [w for w in self._manager.workers() if not request.pool or w.pool == request.pool]
        return pb.ListWorkersResponse(workers=[convert.worker_to_proto(w) for w in workers])

    @handles_errors
    async def RestartWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._manager.restart(request.id)
        return pb.WorkerResponse()

    @handles_errors
    async def InterruptWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._manager.interrupt(request.id)
        return pb.WorkerResponse()

    @handles_errors
    async def RecycleWorker(self, request: pb.WorkerRequest, context: Any) -> pb.WorkerResponse:
        await self._manager.recycle(request.id)
        return pb.WorkerResponse()

    # -- watch -----------------------------------------------------------------------
    async def Watch(self, request: pb.WatchRequest,
                    context: grpc.aio.ServicerContext) -> AsyncIterator[pb.WatchEvent]:
        async for event in self._watch.subscribe(request.snapshot_interval):
            yield convert.watch_to_proto(event)

    def _worker_states(self) -> dict[int, str]:
        return {w.id: w.state for g in self._manager.groups.values() for w in g.workers.values()}

    # -- the bridge ------------------------------------------------------------------
    async def GetServerInfo(self, request: Any, context: Any) -> pb.ServerInfo:
        return self._server_info()

    async def Shutdown(self, request: pb.ShutdownRequest, context: Any) -> pb.ShutdownResponse:
        self._shutdown(request.grace if request.HasField("grace") else None)
        return pb.ShutdownResponse()

