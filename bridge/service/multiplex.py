"""The multiplexed call path (the ``Calls`` RPC), the bridge's end: many calls over one stream.

A unary ``Call`` costs a full RPC each (a few hundred microseconds of CPU in
the Python gRPC server); with many calls in flight that cost, not the pool,
is the limit.  Here a client keeps one bidirectional stream open and sends
calls tagged with ids, in batches of whatever is ready; the bridge runs each
as the unary path would and sends tagged replies back, batched the same way.  The
client's end is :mod:`kernelpit.remote.multiplex`.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator, Awaitable, Callable

from ..contract import errors
from ..contract.framing import batch as message_batch, split
from ..exceptions import PoolClosed
from ..v1 import bridge_pb2 as pb
from ..v1 import values_pb2 as values_pb

#: runs a call; its result as a Value (None: none)
Runner = Callable[[pb.CallRequest], Awaitable["values_pb.Value | None"]]


async def serve_calls(requests: AsyncIterator[pb.CallBatch], run: Runner,
                      closing: asyncio.Event, limit: int) -> AsyncIterator[pb.ReplyBatch]:
    """Run every call that arrives on ``requests``; yield their replies as they finish, in
    batches of at most ``limit`` bytes.

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
                reply.result.CopyFrom(value)
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
            for part in split(batch, limit):
                yield message_batch(pb.ReplyBatch, "replies", part)
    finally:
        reader.cancel()
        stopper.cancel()
        for task in list(tasks.values()):
            task.cancel()
