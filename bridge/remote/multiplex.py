"""The client end of the multiplexed call path (the ``Calls`` RPC): many calls of one client
over one stream, tagged with ids; the bridge's end is :mod:`kernelpit.service.multiplex`."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import threading
from typing import Any, Awaitable, Callable

import grpc

from ..contract import errors
from ..contract.framing import batch as message_batch, split
from ..contract.values import PLAIN, Codec
from ..exceptions import BridgeError, PoolClosed
from ..v1 import bridge_pb2 as pb


class CallMultiplexer:
    """Sends calls over one ``Calls`` stream (opened on first use, reopened after a failure)."""

    def __init__(self, stub: Any, metadata: Any, address: str) -> None:
        self._stub = stub
        self.metadata = metadata
        self._address = address
        self._ids = itertools.count(1)
        self._pending: dict[int, asyncio.Future[pb.Reply]] = {}
        self._outbox: list[pb.TaggedCall] = []
        self._cancels: list[int] = []
        self._wake: asyncio.Event | None = None
        self._rpc: Any = None
        self._tasks: list[asyncio.Task[None]] = []
        self.max_batch_bytes = 1 << 20  # a batch above this is split (the bridge's limit / 2)
        # calls handed over by threads (call_from_thread), admitted on the loop in one go
        self._handoff = threading.Lock()
        self._arrivals: list[tuple[pb.CallRequest, Waiter]] = []

    async def call(self, request: pb.CallRequest) -> pb.Reply:
        if self._rpc is None:
            self._open()
        fut: asyncio.Future[pb.Reply] = asyncio.get_running_loop().create_future()
        call_id = self._enqueue(request, fut)
        self._wake.set()  # type: ignore[union-attr]
        try:
            return await fut
        except asyncio.CancelledError:
            self._cancel(call_id)
            raise

    def call_from_thread(self, request: pb.CallRequest, loop: asyncio.AbstractEventLoop) -> pb.Reply:
        """:meth:`call` from a thread other than ``loop``'s (the loop this stream runs on).

        The thread waits on a lock of its own, not on a task of the loop: a call costs the
        loop one callback per batch of arrivals and one lock release per reply, where a
        coroutine run from the thread costs a task, a loop wake-up and a Condition each.
        Ctrl-C while waiting cancels the call (the tool is interrupted) and is re-raised.
        """
        waiter = Waiter()
        with self._handoff:
            self._arrivals.append((request, waiter))
            first = len(self._arrivals) == 1  # else _admit is already on its way
        if first:
            loop.call_soon_threadsafe(self._admit)
        try:
            return waiter.wait()
        except BaseException:
            loop.call_soon_threadsafe(self._abandon, waiter)
            raise

    def _admit(self) -> None:
        with self._handoff:
            arrivals, self._arrivals = self._arrivals, []
        if self._rpc is None:
            self._open()
        for request, waiter in arrivals:
            waiter.call_id = self._enqueue(request, waiter)
        self._wake.set()  # type: ignore[union-attr]

    def _abandon(self, waiter: "Waiter") -> None:
        if not waiter.done():
            self._cancel(waiter.call_id)

    def _enqueue(self, request: pb.CallRequest, fut: Any) -> int:
        call_id = next(self._ids)
        self._pending[call_id] = fut
        tagged = pb.TaggedCall(id=call_id)
        tagged.request.CopyFrom(request)  # not TaggedCall(request=...): see framing.batch
        self._outbox.append(tagged)
        return call_id

    def _cancel(self, call_id: int) -> None:
        if self._pending.pop(call_id, None) is not None and self._rpc is not None:
            self._cancels.append(call_id)  # the bridge cancels the call: tool interrupted
            self._wake.set()  # type: ignore[union-attr]

    def _open(self) -> None:
        self._rpc = self._stub.Calls(metadata=self.metadata)
        self._wake = asyncio.Event()
        self._tasks = [asyncio.ensure_future(self._write(self._rpc)),
                       asyncio.ensure_future(self._read(self._rpc))]

    async def _write(self, rpc: Any) -> None:
        wake = self._wake
        assert wake is not None
        try:
            # Write nothing until the bridge has accepted the stream (it sends its headers at
            # once): a write racing with a refusal (PERMISSION_DENIED, UNAUTHENTICATED) would
            # make gRPC report "Internal error from Core" instead of the refusal.
            await rpc.initial_metadata()
            if rpc.done():
                return  # refused: _read reports why
            while True:
                await wake.wait()
                await asyncio.sleep(0)  # let calls submitted in the same moment join the batch
                wake.clear()
                if self._outbox or self._cancels:
                    calls, cancels = self._outbox, self._cancels
                    self._outbox, self._cancels = [], []
                    parts = split(calls, self.max_batch_bytes) or [[]]
                    for i, part in enumerate(parts):
                        await rpc.write(message_batch(pb.CallBatch, "calls", part,
                                                      cancel=cancels if i == 0 else ()))
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
        tasks, self._tasks = self._tasks, []
        for task in tasks:
            task.cancel()
        if rpc is not None:
            rpc.cancel()
        # Wait until they have ended: gRPC completes a cancelled stream's operations later,
        # and on a loop that asyncio.run has closed by then it would print "Event loop is
        # closed" tracebacks (grpc issue 25364).
        await asyncio.gather(*tasks, return_exceptions=True)
        if rpc is not None:
            with contextlib.suppress(Exception):
                await rpc.code()  # its status: the stream is done with on gRPC's side too
        pending, self._pending = self._pending, {}
        for fut in pending.values():  # a thread waiting on one would otherwise wait forever
            if not fut.done():
                fut.set_exception(BridgeError(
                    f"the client of {self._address} was closed while this call was in flight"))


class Waiter:
    """The reply slot of a call made from a thread (:meth:`CallMultiplexer.call_from_thread`):
    set on the loop like a future, waited for on a plain lock."""

    __slots__ = ("_lock", "_done", "reply", "error", "call_id")

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._lock.acquire()  # released once, by the outcome
        self._done = False
        self.reply: pb.Reply | None = None
        self.error: BaseException | None = None
        self.call_id = 0

    def done(self) -> bool:
        return self._done

    def set_result(self, reply: pb.Reply) -> None:
        self.reply = reply
        self._done = True
        self._lock.release()

    def set_exception(self, error: BaseException) -> None:
        self.error = error
        self._done = True
        self._lock.release()

    def wait(self) -> pb.Reply:
        self._lock.acquire()
        if self.error is not None:
            raise self.error
        assert self.reply is not None
        return self.reply


def reply_result(reply: pb.Reply) -> Any:
    """The result Value of a reply, or raise its error."""
    if reply.WhichOneof("outcome") == "error":
        raise errors.from_proto(reply.error)
    return reply.result


def reply_value(reply: pb.Reply, codec: Codec = PLAIN) -> Any:
    """The result of a reply, or raise its error."""
    return codec.decode(reply_result(reply), "result")
