"""The wire format between the pool and its worker kernels.

Every message is a list of frames (:mod:`.wire` puts them on the socket): the
first frame is a UTF-8 JSON object (the header), the following frames are raw
binary buffers that the header refers to.  ``bytes`` values anywhere inside a message travel as
their own frame, never as base64, and are replaced in the JSON by a marker
``{"$kp": "bytes", "i": N}`` (N = index among the buffers); one of at least the
transport's threshold goes by shared memory instead (:mod:`.shared_bytes`).  An
``array.array`` travels the same way as ``{"$kp": "array", "t": "q", "i": N}``
(``t`` is its typecode), and so does a list of at least ``MIN_PACKED`` plain
ints (int64) or plain floats, as ``{"$kp": "list", "t": "d", "i": N}``, read
back as a list (kept as a :class:`PackedList` where the transport says
``passes_on``: the bridge, which passes it on without making the floats):
the columns and results of a ``map`` chunk or a dict of numeric columns cost
a memcpy, not a JSON number per item.  Lists inside
dicts and lists are found too, except inside big containers that are not
lists of lists (records, large mappings), which are left to JSON as they are.

Host -> worker ops::

    {"op": "call", "id": 7, "tool": "add", "args": [...], "kwargs": {...}}
    {"op": "call", "id": 9, "tool": "add", "cols": [[...], [...]]}  # a map chunk: argument columns
    {"op": "cancel", "id": 7}
    {"op": "ping", "id": 8}
    {"op": "ping", "id": 8, "give_back": true}  # first drop kept frames and free heap
    {"op": "stop"}

Worker -> host ops::

    {"op": "hello", "pid": 123, "tools": [...]}            # ready
    {"op": "hello", "pid": 123, "error": {...}}            # cannot serve
    {"op": "ev", "id": 7, "k": "progress", "done": 1, "total": 3, "message": ""}
    {"op": "ev", "id": 7, "k": "stdout", "text": "..."}
    {"op": "ev", "id": 7, "k": "display", "data": {...}, "metadata": {...}}
    {"op": "ev", "id": 7, "k": "partial", "value": ...}
    {"op": "ev", "id": 7, "k": "result", "value": ...}      # last event of a call (a list for cols)
    {"op": "ev", "id": 7, "k": "error", "error": {...}}     # last event of a call
    {"op": "pong", "id": 8}
    {"op": "ahead", "a": 0, "t": "d", "id": 7, "k": "result"}  + 1 frame  # a long packed list,
                                                                          # ahead of its message

A packed list of at least ``AHEAD_FROM`` bytes in an event goes ahead of the event as a
message of its own, sent as soon as it is packed; the event refers to it as
``{"$kp": "list", "t": "d", "a": 0}``.  The pool (:class:`Decoder`) turns it into a list
while the worker packs the next one, so the two ends work at once on a table of columns.

Markers and the strict JSON around them are :mod:`.markers`'s (a non-finite
float travels as ``{"$kp": "float", "v": "NaN"}``).  This module is imported on
both sides, so it depends on the standard library only.
"""

from __future__ import annotations

import functools
import itertools
import marshal
import sys
from array import array
from operator import countOf
from typing import Any, Callable

from . import arrow, markers, shared_bytes
from .arrow import Transport
from .markers import MARKER

SUPPORTED = ("None, bool, int, float, str, bytes, list, tuple, dict with str keys, array.array, "
             "pyarrow Table/RecordBatch, pandas DataFrame/Series and NumPy arrays")
_INLINE = Transport()
_TYPECODES = {int: "q", float: "d"}
_LIST_TYPECODES = tuple(_TYPECODES.values())
_AHEAD_HEADER = b'{"op":"ahead",'
AHEAD_FROM = 64 * 1024  # bytes: a packed list this long goes ahead of its message
# (8 K floats: decoding one takes ~0.15 ms, ten times what its own message costs; at 256 KiB a
# 1 MB table of 4 columns went in one message, 10.3 ms a call here against 6.9)


_MARKER_BYTES = f'"{MARKER}"'.encode()
MIN_PACKED = 64  # shorter lists stay JSON text: there a frame costs more than it saves


class PackedList(array):
    """A list of plain ints or floats on its way as one binary frame; decoded as a list."""


def _floats_packed(values: list[Any]) -> PackedList | None:
    """A list of plain floats as a :class:`PackedList`, or None when an item is anything
    else (an int, a bool, a float subclass, ...).

    One pass over the items: ``marshal`` (version 2, without back-references) writes each
    plain float as ``b"g"`` and its 8 little-endian bytes after a 5-byte list header, and
    anything else otherwise, so the list is all plain floats exactly when the stream is
    5 + 9n bytes and every 9th byte from the header on is ``b"g"``.  The doubles are then
    lifted out of their 9-byte records: by NumPy's strided copy where NumPy is imported
    (or installed, and the list is long: :data:`IMPORT_NUMPY_FROM`), else by byte-lane
    slices.  For a 100 MB column (3.3 M floats) a type check pass plus ``array.fromlist``
    took 200 ms here; this takes 97 with NumPy, 170 without.
    """
    n = len(values)
    try:
        stream = marshal.dumps(values, 2)
    except ValueError:
        return None  # an object marshal cannot write (a float subclass, for one)
    if len(stream) != 5 + 9 * n or stream[5::9] != b"g" * n:
        return None
    numpy = sys.modules.get("numpy") or (_numpy() if n >= IMPORT_NUMPY_FROM else None)
    if numpy is not None and sys.byteorder == "little":
        packed = PackedList("d", (0.0,))
        packed *= n  # sized in place, its pages filled once
        records = numpy.frombuffer(stream, numpy.dtype([("t", "u1"), ("v", "<f8")]), offset=5)
        numpy.frombuffer(packed, "<f8")[:] = records["v"]
        return packed
    packed = PackedList("d")
    packed.frombytes(_doubles(stream, n))
    if sys.byteorder != "little":
        packed.byteswap()  # marshal's doubles are little-endian everywhere
    return packed


# floats in one list from which NumPy, if installed, is imported to lift them out (once per
# process, about 0.1 s): 2.7x faster than byte lanes at 32 K floats (0.52 against 1.39 ms),
# and at 8 K the lists that go ahead are packed while the pool decodes the last one
IMPORT_NUMPY_FROM = 1 << 13


@functools.lru_cache(maxsize=None)
def _numpy() -> Any:
    """NumPy, imported once it pays (its import costs about 0.1 s), or None without it."""
    try:
        import numpy
    except ImportError:
        return None
    return numpy


_LANE_BLOCK = 16384  # records per block: a block's stream and doubles stay in the L2 cache


def _doubles(stream: bytes, n: int) -> bytearray:
    """The 8 bytes of each of the n 9-byte float records after ``stream``'s 5-byte header,
    copied lane by lane (each of the 8 byte positions is one strided slice), a block at a
    time (block by block is 1.7x faster than whole lanes here)."""
    out = bytearray(8 * n)
    for first in range(0, n, _LANE_BLOCK):
        last = min(n, first + _LANE_BLOCK)
        block = stream[5 + 9 * first:5 + 9 * last]
        for k in range(8):
            out[8 * first + k:8 * last:8] = block[1 + k::9]
    return out


def _numbers_packed(values: Any) -> PackedList | None:
    """``values`` (a long list or tuple) as a :class:`PackedList` when it is all plain
    floats or all plain ints that fit in 64 bits; else None."""
    first = type(values[0])
    if first is float and type(values) is list:
        return _floats_packed(values)
    code = _TYPECODES.get(first)
    # countOf and fromlist: C loops without a set or per-item parsing (15-20 % less time
    # than set(map(type)) and array(code, values))
    if code is None or countOf(map(type, values), first) != len(values):
        return None
    try:
        if type(values) is tuple:
            return PackedList(code, values)
        packed = PackedList(code)
        packed.fromlist(values)
        return packed
    except OverflowError:
        return None


Ship = Callable[[PackedList], Any]


def _packed(values: Any, ship: Ship | None = None) -> Any:
    """``values`` (a list or tuple) as a :class:`PackedList` (or what ``ship`` makes of it)
    when it is long and all plain ints or all plain floats; else with its nested lists
    packed."""
    if len(values) >= MIN_PACKED:
        packed = _numbers_packed(values)
        if packed is not None:
            return packed if ship is None else ship(packed)
        if not set(map(type, values)) <= {list, tuple}:
            return values  # a long list of records or mixed values: left to JSON as it is
    return _packed_inside(values, ship)


def _packed_inside(obj: Any, ship: Ship | None = None) -> Any:
    """``obj`` (a container) with the long numeric lists inside it packed; containers on the
    way are copied only where something changed."""
    if type(obj) is dict and len(obj) >= MIN_PACKED:
        return obj  # a big mapping: not searched (its values are rarely long numeric lists)
    out = None
    for key, value in obj.items() if type(obj) is dict else enumerate(obj):
        kind = type(value)
        if kind is list or kind is tuple:
            new = _packed(value, ship)
        elif kind is dict:
            new = _packed_inside(value, ship)
        else:
            continue
        if new is not value:
            if out is None:
                out = dict(obj) if type(obj) is dict else list(obj)
            out[key] = new
    return obj if out is None else out


def pack_lists(obj: Any) -> Any:
    """``obj`` with its long lists of plain ints or floats (``obj`` itself included) as
    :class:`PackedList`; containers on the way are copied only where something changed."""
    kind = type(obj)
    if kind is list or kind is tuple:
        return _packed(obj)
    if kind is dict:
        return _packed_inside(obj)
    return obj


class _Shipped:
    """Where a list sent ahead of its message stands in that message."""

    __slots__ = ("index", "typecode")

    def __init__(self, index: int, typecode: str) -> None:
        self.index, self.typecode = index, typecode


def _owner(msg: dict[str, Any]) -> bytes:
    """The end of a list's ``ahead`` header that names the event it goes ahead of: its
    call's id and its kind (``,"id":7,"k":"result"``); empty for a message of no call."""
    call_id = msg.get("id")
    if type(call_id) is not int:
        return b""
    return b',"id":%d,"k":%s' % (call_id, markers.dumps(msg.get("k")).encode())


class EncodeError(TypeError):
    """A value that the wire format cannot carry."""


def encode(msg: dict[str, Any], transport: Transport | None = None,
           ahead: Callable[[list[Any]], None] | None = None) -> list[Any]:
    """Turn a message into frames: one JSON header plus one frame per binary value.

    ``transport`` says where large Arrow values go (shared memory) and whether
    pickle may carry other objects; without it everything is inline.  ``ahead``: each
    packed list of at least :data:`AHEAD_FROM` bytes is handed to it as a message of its
    own as soon as it is packed, ``{"op": "ahead", "a": K, "t": "d"}`` and the list's frame
    (with ``"id"`` and ``"k"``, the message's call and kind, when it has them), and the
    message refers to it as ``{"$kp": "list", "t": "d", "a": K}``; a :class:`Decoder` turns
    it into its list while this side packs the next one.
    """
    buffers: list[Any] = []
    indexes = itertools.count()  # of the lists sent ahead of this message

    def ship(packed: PackedList) -> Any:
        if ahead is None or len(packed) * packed.itemsize < AHEAD_FROM:
            return packed
        stand_in = _Shipped(next(indexes), packed.typecode)
        ahead([b'{"op":"ahead","a":%d,"t":"%s"%s}' % (stand_in.index, packed.typecode.encode(),
                                                      _owner(msg)),
               memoryview(packed).cast("B")])
        return stand_in

    def default(obj: Any) -> Any:
        if isinstance(obj, shared_bytes.BINARY):
            shared = shared_bytes.encode(obj, transport) if transport is not None else None
            if shared is not None:
                return shared
            # a mutable buffer is copied: the message may be sent after the sender returns
            immutable = type(obj) is bytes or shared_bytes.received(obj)
            buffers.append(obj if immutable else bytes(obj))
            return markers.buffer_ref("bytes", len(buffers) - 1)
        if isinstance(obj, array):
            buffers.append(memoryview(obj).cast("B"))
            kind = "list" if type(obj) is PackedList else "array"
            return markers.buffer_ref(kind, len(buffers) - 1, t=obj.typecode)
        if type(obj) is _Shipped:
            return {MARKER: "list", "t": obj.typecode, "a": obj.index}
        if arrow.handles(obj):
            return arrow.encode(obj, buffers, transport or _INLINE)
        if transport is not None and transport.allow_pickle:
            return arrow.encode_pickle(obj, buffers)
        raise EncodeError(
            f"type {type(obj).__module__}.{type(obj).__qualname__} cannot be sent; "
            f"supported types are {SUPPORTED}"
        )

    outgoing = arrow.Outgoing(default, transport)
    try:
        text = markers.dumps(_packed_inside(msg, ship), outgoing)
    except BaseException:
        outgoing.give_back()
        raise
    return [text.encode(), *buffers]


def unpacked(frame: Any, typecode: str) -> list[Any]:
    """A packed list's frame (``typecode`` numbers in this machine's byte order) as a list.

    ``list()`` over a cast memoryview makes the numbers straight from the frame, with no
    copy first, and twice as fast as ``memoryview.tolist()`` for floats: 9.5 against 20 ns
    a float for a 32 K-float column here, 21.6 against 31.6 for 3.1 M floats, where the
    new floats' fresh pages cost the rest (ints: the same either way).
    """
    return list(memoryview(frame).cast("B").cast(typecode))


def _read_list(frame: Any, typecode: str, passes_on: bool) -> Any:
    """A packed list's frame as a list (its numbers made straight from the frame), or as a
    :class:`PackedList` where the transport keeps them packed."""
    if typecode not in _LIST_TYPECODES:
        raise ValueError(f"a packed list holds {'/'.join(_LIST_TYPECODES)} values, "
                         f"not {typecode!r}")
    if not passes_on:
        return unpacked(frame, typecode)
    values = PackedList(typecode)
    values.frombytes(frame)
    return values


def decode(frames: list[Any], transport: Transport | None = None,
           ahead: dict[int, Any] | None = None) -> dict[str, Any]:
    """Inverse of :func:`encode`; raises :class:`arrow.DecodeError` for unreadable values.
    ``ahead``: the lists sent ahead of this message, by index (kept by a :class:`Decoder`)."""
    if _MARKER_BYTES not in frames[0]:
        return markers.loads(frames[0])  # the common case: plain JSON, no handlers to build
    buffers = frames[1:]
    transport = transport or _INLINE

    def from_buffer(read: Any) -> Any:
        def handler(marker: dict[str, Any]) -> Any:
            try:
                return read(marker)
            except arrow.DecodeError:
                raise  # says what is wrong already
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                raise arrow.DecodeError(f"a {marker[MARKER]} value refers to data that was not "
                                        f"sent ({exc})") from None
        return handler

    def read_bytes(m: dict[str, Any]) -> Any:
        if "shm" in m:
            return shared_bytes.decode(m, transport)
        inline = markers.read_inline_bytes(m)
        return inline if inline is not None else bytes(buffers[m["i"]])

    def read_list(m: dict[str, Any]) -> Any:
        if "a" in m:
            return (ahead or {})[m["a"]]
        return _read_list(buffers[m["i"]], m["t"], transport.passes_on)

    def read_array(m: dict[str, Any]) -> Any:
        values = array(m["t"])
        values.frombytes(buffers[m["i"]])
        return values

    def read_arrow(m: dict[str, Any]) -> Any:
        return arrow.decode(m, buffers, transport)

    try:
        return markers.loads(frames[0], {
            "bytes": from_buffer(arrow.once_per_file(read_bytes)),
            "array": from_buffer(read_array),
            "list": from_buffer(read_list),
            "arrow": from_buffer(arrow.once_per_file(read_arrow)),
            "pickle": from_buffer(lambda m: arrow.decode_pickle(m, buffers, transport)),
        })
    except markers.MarkerError as exc:
        raise arrow.DecodeError(str(exc)) from None


class Decoder:
    """Decodes one connection's messages in the order they came.

    A list sent ahead of its message (see :func:`encode`) is turned into its value as it
    arrives, so that this side's work overlaps the sender's packing of the next list, and
    is kept for the next message, which refers to it by index.  Whatever that message does
    not use is dropped with it: a sender that gave up on a message halfway (a cancel, a
    value it could not encode) leaves nothing behind, and a later message's lists replace
    the same indexes before it refers to them.
    """

    def __init__(self, transport: Transport | None = None,
                 on_ahead: Callable[[dict[str, Any], Any], None] | None = None) -> None:
        self.transport = transport
        self._ahead: dict[int, Any] = {}
        #: told ``(header, value)`` of each list that came ahead of its message, as it comes
        #: (the bridge sends a result's lists on to its client before the result is complete)
        self.on_ahead = on_ahead

    def decode(self, frames: list[Any]) -> dict[str, Any] | None:
        """The message in ``frames``, or None for a list sent ahead (kept for the next)."""
        if frames[0].startswith(_AHEAD_HEADER):
            self._keep_ahead(frames)
            return None
        ahead, self._ahead = self._ahead, {}
        return decode(frames, self.transport, ahead)

    def _keep_ahead(self, frames: list[Any]) -> None:
        try:
            head = markers.loads(frames[0])
            index = head["a"]
            if type(index) is not int or len(frames) != 2:
                raise ValueError(f"a list sent ahead is one frame with an int index, not {head}")
            value = self._ahead[index] = _read_list(frames[1], head["t"],
                                                    (self.transport or _INLINE).passes_on)
        except (KeyError, TypeError, ValueError) as exc:
            raise arrow.DecodeError(f"a list sent ahead of its message cannot be read: {exc}") \
                from None
        if self.on_ahead is not None:
            self.on_ahead(head, value)
