"""The multiplexed call path (the ``Calls`` RPC): many calls over one stream, both ends.

A unary ``Call`` costs a full RPC each (a few hundred microseconds of CPU in
the Python gRPC server); with many calls in flight that cost, not the pool,
is the limit.  Here a client keeps one bidirectional stream open and sends
calls tagged with ids, in batches of whatever is ready; the bridge runs each
as the unary path would and sends tagged replies back, batched the same way.
"""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, AsyncIterator, Awaitable, Callable

import grpc

from ..exceptions import BridgeError, PoolClosed
from ..v1 import bridge_pb2 as pb
from . import errors
from .values import PLAIN, Codec

def split(messages: list[Any], limit: int) -> list[list[Any]]:
    """Consecutive groups of ``messages`` of at most ``limit`` serialized bytes each (a
    message bigger than that alone makes a group), so no batch exceeds a message limit."""
    groups: list[list[Any]] = []
    group: list[Any] = []
    size = 0
    for m in messages:
        n = m.ByteSize()
        if group and size + n > limit:
            groups.append(group)
            group, size = [], 0
        group.append(m)
        size += n
    if group:
        groups.append(group)
    return groups


# -- the bridge's end --------------------------------------------------------------------------

Runner = Callable[[pb.CallRequest], Awaitable[Any]]


async def serve_calls(requests: AsyncIterator[pb.CallBatch], run: Runner,
                      closing: asyncio.Event, codec: Codec = PLAIN) -> AsyncIterator[pb.ReplyBatch]:
    """Run every call that arrives on ``requests``; yield their replies as they finish.

    Once ``closing`` is set (the bridge is stopping) new calls are refused, and the
    stream ends as soon as the calls already running have replied.
    """
    replies: asyncio.Queue[pb.Reply | None] = asyncio.Queue()
    tasks: dict[int, asyncio.Task[None]] = {}

    async def one(call_id: int, request: pb.CallRequest) -> None:
        reply = pb.Reply(id=call_id)
        try:
            value = await run(request)
            if value is not None:
                reply.result.CopyFrom(codec.encode(value))
            reply.result.SetInParent()
        except asyncio.CancelledError:
            return  # cancelled by the client (or the stream ended): no reply wanted
        except Exception as exc:  # noqa: BLE001 - every failure becomes a tagged error reply
            reply.error.CopyFrom(errors.to_proto(exc))
        finally:
            tasks.pop(call_id, None)
        replies.put_nowait(reply)

    async def read() -> None:
        try:
            async for batch in requests:
                for call_id in batch.cancel:
                    task = tasks.get(call_id)
                    if task is not None:
                        task.cancel()
                for tagged in batch.calls:
                    if closing.is_set():
                        replies.put_nowait(pb.Reply(id=tagged.id, error=errors.to_proto(
                            PoolClosed("the bridge is shutting down and takes no new calls; retry "
                                   "once a bridge is running again"))))
                    else:
                        tasks[tagged.id] = asyncio.ensure_future(one(tagged.id, tagged.request))
        finally:
            replies.put_nowait(None)  # the client is done sending: finish what is running

    async def close_when_stopping() -> None:
        await closing.wait()
        replies.put_nowait(None)

    reader = asyncio.ensure_future(read())
    stopper = asyncio.ensure_future(close_when_stopping())
    draining = False
    try:
        while not (draining and not tasks and replies.empty()):
            item = await replies.get()
            batch = []
            while True:
                if item is None:
                    draining = True
                else:
                    batch.append(item)
                if replies.empty():
                    break
                item = replies.get_nowait()
            for part in split(batch, codec.limit):
                yield pb.ReplyBatch(replies=part)
    finally:
        reader.cancel()
        stopper.cancel()
        for task in list(tasks.values()):
            task.cancel()


# -- the client's end --------------------------------------------------------------------------

class CallMultiplexer:
    """Sends calls over one ``Calls`` stream (opened on first use, reopened after a failure)."""

    def __init__(self, stub: Any, metadata: Any, address: str) -> None:
        self._stub = stub
        self._metadata = metadata
        self._address = address
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[pb.Reply]] = {}
        self._outbox: list[pb.TaggedCall] = []
        self._cancels: list[int] = []
        self._wake: asyncio.Event | None = None
        self._rpc: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.max_batch_bytes = 1 << 20  # a batch above this is split (the bridge's limit / 2)

    async def call(self, request: pb.CallRequest) -> pb.Reply:
        if self._rpc is None:
            self._open()
        call_id = next(self._ids)
        fut: asyncio.Future[pb.Reply] = asyncio.get_running_loop().create_future()
        self._pending[call_id] = fut
        self._outbox.append(pb.TaggedCall(id=call_id, request=request))
        self._wake.set()  # type: ignore[union-attr]
        try:
            return await fut
        except asyncio.CancelledError:
            if self._pending.pop(call_id, None) is not None and self._rpc is not None:
                self._cancels.append(call_id)  # the bridge cancels the call: tool interrupted
                self._wake.set()  # type: ignore[union-attr]
            raise

    def _open(self) -> None:
        self._rpc = self._stub.Calls(metadata=self._metadata)
        self._wake = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._write(self._rpc)),
                       asyncio.ensure_future(self._read(self._rpc))]

    async def _write(self, rpc: Any) -> None:
        wake = self._wake
        assert wake is not None
        try:
            while True:
                await wake.wait()
                await asyncio.sleep(0)  # let calls submitted in the same moment join the batch
                wake.clear()
                if self._outbox or self._cancels:
                    calls, cancels = self._outbox, self._cancels
                    self._outbox, self._cancels = [], []
                    parts = split(calls, self.max_batch_bytes) or [[]]
                    for i, part in enumerate(parts):
                        await rpc.write(pb.CallBatch(calls=part, cancel=cancels if i == 0 else ()))
        except (grpc.aio.AioRpcError, asyncio.InvalidStateError) as exc:
            self._failed(rpc, exc)

    async def _read(self, rpc: Any) -> None:
        try:
            while True:
                batch = await rpc.read()
                if batch is grpc.aio.EOF:
                    raise BridgeError(f"the bridge at {self._address} ended the call stream (it is "
                                      "stopping?); calls in flight on it are lost, retry them "
                                      "once a bridge is running again")
                for reply in batch.replies:
                    fut = self._pending.pop(reply.id, None)
                    if fut is not None and not fut.done():
                        fut.set_result(reply)
        except Exception as exc:  # noqa: BLE001 - fails the pending calls
            self._failed(rpc, exc)

    def _failed(self, rpc: Any, exc: BaseException) -> None:
        if rpc is not self._rpc:
            return
        self._rpc = None
        for task in self._tasks:
            if task is not asyncio.current_task():
                task.cancel()
        err = errors.from_rpc_error(exc, self._address) if isinstance(exc, grpc.RpcError) else exc
        pending, self._pending = self._pending, {}
        for fut in pending.values():
            if not fut.done():
                fut.set_exception(err)
        self._outbox, self._cancels = [], []
        rpc.cancel()

    async def close(self) -> None:
        rpc, self._rpc = self._rpc, None
        for task in self._tasks:
            task.cancel()
        if rpc is not None:
            rpc.cancel()


def reply_value(reply: pb.Reply, codec: Codec = PLAIN) -> Any:
    """The result of a reply, or raise its error."""
    if reply.WhichOneof("outcome") == "error":
        raise errors.from_proto(reply.error)
    return codec.decode(reply.result, "result")
