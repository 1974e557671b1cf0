"""Streamed results, the bridge's end: a call (``Call`` or one of ``Calls``) whose result is
sent on while the worker is still making it.

The format, and why, is :mod:`kernelpit.contract.streamed`.  :func:`run_call` runs a call
for a client that accepts streamed results.  When the call ends before a long enough list
of its result has come ahead of it (every small result), it answers as a plain call does.
When a list of at least :data:`STREAM_FROM` bytes (or what the client asks) comes first,
it answers at once with a streamed Value and puts the result's records on a blob of the
:class:`~kernelpit.service.blobs.BlobStore` as they arrive: the lists so far, each later
list as it comes, then the result (or the error) when the call ends.  A blob that is not
read to its end (the client went away, or never read it within the store's ``ttl``)
cancels the call.
"""

from __future__ import annotations

import asyncio
from typing import Any

from ..contract import errors
from ..contract.streamed import last_head, list_head, streamed_value
from ..contract.values import Codec, little_endian
from ..kernels.protocol import PackedList
from ..options import CallOptions
from ..pool.call import Call
from ..pool.manager import PoolManager
from ..v1 import values_pb2 as pb
from .blobs import BlobStore


#: bytes of one list from which a result is streamed, unless the client says
#: (``kernelpit-stream-from``).  Read with ReadBlob, streaming costs an RPC and a message per
#: record: about 1.2 ms more than the plain reply for a 1 MB table of four 256 KB columns
#: (5.5 against 4.3 ms here), while it saves ~0.25 ms of decoding per MB of numbers that
#: come before the last list (a 100 MB table: 328 ms, against 406).  Over the blob lane a
#: stream costs about 0.1 ms, so Kernelpit's client asks from AHEAD_FROM (64 KiB) there:
#: the same 1 MB table took 3.6-4.0 ms streamed, against 5.0-5.2 ms whole.
STREAM_FROM = 1 << 20


async def run_call(manager: PoolManager, blobs: BlobStore, codec: Codec, tool: str,
                   args: Any, kwargs: dict[str, Any], options: CallOptions,
                   stream_from: int = STREAM_FROM) -> pb.Value | None:
    """Run ``tool``; its result as a Value (None for None), or a streamed Value once a list
    of at least ``stream_from`` bytes of the result has come ahead of it.  Raises what the
    call raises, when it fails before."""
    call = manager.begin(tool, args, kwargs, options)
    stream = _Stream(call, codec, stream_from)
    try:
        await stream.first
    except asyncio.CancelledError:
        manager.cancel(call)
        raise
    if call.future.done():  # the usual case: the whole result came at once (or the error)
        call.listener = None
        value = call.future.result()
        return None if value is None else codec.encode(value)
    blob_id = stream.open(blobs, lambda: call.done or manager.cancel(call))
    return streamed_value(blob_id)


class _Stream:
    """One call's result on its way: listens to the call (``Call.listener``)."""

    def __init__(self, call: Call, codec: Codec, stream_from: int) -> None:
        self.call = call
        self.codec = codec
        self.stream_from = stream_from
        self.first: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.lists: dict[int, PackedList] = {}  # the result's lists that came, by index
        self.feed: asyncio.Queue[Any] | None = None
        call.listener = self

    def open(self, blobs: BlobStore, on_free: Any) -> str:
        """Start the blob: the lists that came so far go on it now, the rest as they come."""
        blob_id, self.feed = blobs.open_feed(on_free)
        for index, values in self.lists.items():
            self._put(index, values)
        return blob_id

    # -- Call.listener -------------------------------------------------------------------
    def ahead(self, index: int, values: Any) -> None:
        if type(values) is not PackedList:
            return  # (a pool that makes lists of what it receives: nothing to stream)
        self.lists[index] = values
        if self.feed is not None:
            self._put(index, values)
        elif not self.first.done() and len(values) * values.itemsize >= self.stream_from:
            self.first.set_result(None)

    def ended(self) -> None:
        if self.feed is None:
            if not self.first.done():
                self.first.set_result(None)
            return
        self.call.listener = None
        exc = self.call.future.exception()
        if exc is None:
            sent = {id(values): index for index, values in self.lists.items()}
            try:
                body = self.codec.encode(self.call.future.result(), sent).SerializeToString()
            except Exception as bad:  # noqa: BLE001 - the client is told, as for a plain Call
                exc = bad
        if exc is not None:
            body = errors.to_proto(exc).SerializeToString()
        self.lists = {}
        self.feed.put_nowait((last_head(exc is not None, len(body)), body))
        self.feed.put_nowait(None)

    def _put(self, index: int, values: PackedList) -> None:
        assert self.feed is not None
        data = little_endian(values)
        size = len(data) * data.itemsize
        self.feed.put_nowait((list_head(index, data.typecode, size), memoryview(data).cast("B")))
