"""The client end of the multiplexed call path (the ``Calls`` RPC): many calls of one client
over one stream, tagged with ids; the bridge's end is :mod:`kernelpit.service.multiplex`."""

from __future__ import annotations

import asyncio
import itertools
from typing import Any, Awaitable, Callable

import grpc

from ..contract import errors
from ..contract.framing import split
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
