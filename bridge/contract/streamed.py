"""A streamed result, for both ends: a large result read as the worker makes it.

A tool's result with long numeric lists (a dict of float columns) is packed by its worker
one list at a time, and each list goes to the pool ahead of the result (see
:mod:`kernelpit.kernels.protocol`).  A client that sends the request metadata
``kernelpit-accept: packed-lists,streamed-results`` on ``Call`` or ``Calls`` may get,
instead of a result, a Value whose ``encoding`` is ``"kernelpit-streamed"``, whose ``raw``
is empty and whose ``blobs[0]`` names a blob: it reads that blob (with ``ReadBlob``, or on
the blob lane) while the bridge is still receiving the rest.  The bridge answers so only
when a list of the result of at least 1 MiB (or of the bytes the client names in
``kernelpit-stream-from``) has arrived and the result has not, so the client turns each
list into numbers while the worker packs the next one, instead of after the last one.  The
bridge's end is :mod:`kernelpit.service.streamed`.

The blob is a sequence of records.  Each starts with the 14-byte head ``kind (1 byte),
typecode (1 byte), index (uint32), size (uint64)`` (little-endian), and its ``size`` bytes
of body follow; over ``ReadBlob`` the head is a chunk of its own and the body the chunks
after it, on the blob lane they come back to back::

    b"L" typecode index size  + the list: size bytes of little-endian int64 ("q") or
                                float64 ("d") numbers, list ``index`` of the result
    b"V" b"-" 0 size          + a serialized Value: the result, whose list markers
                                {"$kp": "list", "t": T, "a": index} are those lists (its
                                other blobs, if any, are read after it as usual)
    b"E" b"-" 0 size          + a serialized RemoteException: the call failed

``V`` or ``E`` is the last record.  The bridge frees the blob once it has been read, and
cancels the call when the blob is not read to its end (the client went away).
"""

from __future__ import annotations

import struct
from typing import Any

from ..kernels import wire
from ..v1 import values_pb2 as pb
from . import errors
from .values import numbers

#: Value.encoding of a result that follows in a blob
STREAMED = "kernelpit-streamed"

HEAD = struct.Struct("<ccIQ")
_LIST, _VALUE, _ERROR = b"L", b"V", b"E"
_SIZES = {b"q": 8, b"d": 8}


def list_head(index: int, typecode: str, size: int) -> bytes:
    """The head of a list record (its ``size`` bytes of numbers follow)."""
    return HEAD.pack(_LIST, typecode.encode(), index, size)


def last_head(error: bool, size: int) -> bytes:
    """The head of the last record: the result's Value, or (``error``) a RemoteException."""
    return HEAD.pack(_ERROR if error else _VALUE, b"-", 0, size)


def streamed_value(blob_id: str) -> pb.Value:
    """The Value that says "the result follows in blob ``blob_id``"."""
    value = pb.Value(raw=b"", encoding=STREAMED)
    value.blobs.add(id=blob_id)
    return value


def is_streamed(value: pb.Value) -> bool:
    return value.encoding == STREAMED


class StreamError(ValueError):
    """A streamed result that does not follow the format above."""


class StreamReader:
    """The client's end: call it with each chunk of the blob in order (as a blob's receiver
    is called); each list is turned into numbers as soon as it is complete.  :meth:`result` is the result's Value
    (and the lists it refers to), or raises the call's error."""

    def __init__(self) -> None:
        self.lists: dict[int, list[Any]] = {}
        self._head: tuple[bytes, bytes, int, int] | None = None
        self._body: Any = None      # a body that came in several chunks, filled in place
        self._view: memoryview | None = None
        self._filled = 0
        self._last: tuple[bytes, Any] | None = None

    def __call__(self, data: memoryview) -> None:
        if self._last is not None:
            raise StreamError("a streamed result went on after its last record")
        if self._head is None:
            if len(data) != HEAD.size:
                raise StreamError(f"a streamed result's record head is {HEAD.size} bytes, "
                                  f"not {len(data)}")
            kind, typecode, index, size = self._head = HEAD.unpack(data)
            if kind not in (_LIST, _VALUE, _ERROR):
                raise StreamError(f"unknown record kind {kind!r} in a streamed result")
            if kind == _LIST and (typecode not in _SIZES or size % _SIZES[typecode]):
                raise StreamError(f"a list record of {size} bytes of {typecode!r} numbers "
                                  "(int64 'q' or float64 'd')")
            if size == 0:
                self._complete(b"")
            return
        size = self._head[3]
        if self._filled == 0 and len(data) == size:
            self._complete(data)  # the whole body in one chunk (the usual case): no copy
            return
        if self._body is None:
            self._body, self._view = wire.fill_in_place(size)
        if self._filled + len(data) > size:
            raise StreamError(f"a record of {size} bytes got more")
        assert self._view is not None
        self._view[self._filled:self._filled + len(data)] = data
        self._filled += len(data)
        if self._filled == size:
            self._complete(self._body)

    def _complete(self, body: Any) -> None:
        assert self._head is not None
        kind, typecode, index, _ = self._head
        self._head, self._body, self._view, self._filled = None, None, None, 0
        if kind == _LIST:
            self.lists[index] = numbers(body, typecode.decode())
        else:
            self._last = (kind, body)

    @property
    def done(self) -> bool:
        """Whether the last record has come."""
        return self._last is not None

    def result(self) -> pb.Value:
        """The result's Value; raises the call's error, or StreamError when the stream ended
        before its last record."""
        if self._last is None:
            raise StreamError("a streamed result ended before its last record")
        kind, body = self._last
        if kind == _ERROR:
            raise errors.from_proto(pb.RemoteException.FromString(bytes(body)))
        return pb.Value.FromString(bytes(body))

