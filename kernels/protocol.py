"""The wire format between the pool and its worker kernels.

Every message is a list of frames (:mod:`.wire` puts them on the socket): the
first frame is a UTF-8 JSON object (the header), the following frames are raw
binary buffers that the header refers to.  ``bytes`` values anywhere inside a message travel as
their own frame, never as base64, and are replaced in the JSON by a marker
``{"$kp": "bytes", "i": N}`` (N = index among the buffers).  An
``array.array`` travels the same way as ``{"$kp": "array", "t": "q", "i": N}``
(``t`` is its typecode), and so does a list of at least ``MIN_PACKED`` plain
ints (int64) or plain floats, as ``{"$kp": "list", "t": "d", "i": N}``, read
back as a list (kept as a :class:`PackedList` where the transport says
``keep_packed``: the bridge, which passes it on without making the floats):
the columns and results of a ``map`` chunk or a dict of numeric columns cost
a memcpy, not a JSON number per item.  Lists inside
dicts and lists are found too, except inside big containers that are not
lists of lists (records, large mappings), which are left to JSON as they are.

Host -> worker ops::

    {"op": "call", "id": 7, "tool": "add", "args": [...], "kwargs": {...}}
    {"op": "call", "id": 9, "tool": "add", "cols": [[...], [...]]}  # a map chunk: argument columns
    {"op": "cancel", "id": 7}
    {"op": "ping", "id": 8}
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

Markers and the strict JSON around them are :mod:`.markers`'s (a non-finite
float travels as ``{"$kp": "float", "v": "NaN"}``).  This module is imported on
both sides, so it depends on the standard library only.
"""

from __future__ import annotations

from array import array
from operator import countOf
from typing import Any

from . import arrow, markers
from .arrow import Transport
from .markers import MARKER

SUPPORTED = ("None, bool, int, float, str, bytes, list, tuple, dict with str keys, array.array, "
             "pyarrow Table/RecordBatch, pandas DataFrame/Series and NumPy arrays")
_INLINE = Transport()
_TYPECODES = {int: "q", float: "d"}


_MARKER_BYTES = f'"{MARKER}"'.encode()
MIN_PACKED = 64  # shorter lists stay JSON text: there a frame costs more than it saves


class PackedList(array):
    """A list of plain ints or floats on its way as one binary frame; decoded as a list."""


def _packed(values: Any) -> Any:
    """``values`` (a list or tuple) as a :class:`PackedList` when it is long and all plain ints
    (that fit in 64 bits) or all plain floats; else with its nested lists packed."""
    if len(values) >= MIN_PACKED:
        first = type(values[0])
        code = _TYPECODES.get(first)
        # countOf and fromlist: C loops without a set or per-item parsing (15-20 % less time
        # than set(map(type)) and array(code, values) for a column of floats)
        if code is not None and countOf(map(type, values), first) == len(values):
            try:
                if type(values) is tuple:
                    return PackedList(code, values)
                packed = PackedList(code)
                packed.fromlist(values)
                return packed
            except OverflowError:
                return values
        if not set(map(type, values)) <= {list, tuple}:
            return values  # a long list of records or mixed values: left to JSON as it is
    return _packed_inside(values)


def _packed_inside(obj: Any) -> Any:
    """``obj`` (a container) with the long numeric lists inside it packed; containers on the
    way are copied only where something changed."""
    if type(obj) is dict and len(obj) >= MIN_PACKED:
        return obj  # a big mapping: not searched (its values are rarely long numeric lists)
    out = None
    for key, value in obj.items() if type(obj) is dict else enumerate(obj):
        kind = type(value)
        if kind is list or kind is tuple:
            new = _packed(value)
        elif kind is dict:
            new = _packed_inside(value)
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


class EncodeError(TypeError):
    """A value that the wire format cannot carry."""


def encode(msg: dict[str, Any], transport: Transport | None = None) -> list[Any]:
    """Turn a message into frames: one JSON header plus one frame per binary value.

    ``transport`` says where large Arrow values go (shared memory) and whether
    pickle may carry other objects; without it everything is inline.
    """
    buffers: list[Any] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            buffers.append(bytes(obj) if not isinstance(obj, bytes) else obj)
            return markers.buffer_ref("bytes", len(buffers) - 1)
        if isinstance(obj, array):
            buffers.append(memoryview(obj).cast("B"))
            kind = "list" if type(obj) is PackedList else "array"
            return markers.buffer_ref(kind, len(buffers) - 1, t=obj.typecode)
        if arrow.handles(obj):
            return arrow.encode(obj, buffers, transport or _INLINE)
        if transport is not None and transport.allow_pickle:
            return arrow.encode_pickle(obj, buffers)
        raise EncodeError(
            f"type {type(obj).__module__}.{type(obj).__qualname__} cannot be sent; "
            f"supported types are {SUPPORTED}"
        )

    return [markers.dumps(_packed_inside(msg), default).encode(), *buffers]


def decode(frames: list[Any], transport: Transport | None = None) -> dict[str, Any]:
    """Inverse of :func:`encode`; raises :class:`arrow.DecodeError` for unreadable values."""
    if _MARKER_BYTES not in frames[0]:
        return markers.loads(frames[0])  # the common case: plain JSON, no handlers to build
    buffers = frames[1:]
    transport = transport or _INLINE

    def from_buffer(read: Any) -> Any:
        def handler(marker: dict[str, Any]) -> Any:
            try:
                return read(marker)
            except (IndexError, KeyError, TypeError, ValueError) as exc:
                raise arrow.DecodeError(f"a {marker[MARKER]} value refers to data that was not "
                                        f"sent ({exc})") from None
        return handler

    def read_bytes(m: dict[str, Any]) -> bytes:
        inline = markers.read_inline_bytes(m)
        return inline if inline is not None else bytes(buffers[m["i"]])

    def read_array(m: dict[str, Any]) -> Any:
        packed = m[MARKER] == "list"
        values = PackedList(m["t"]) if packed else array(m["t"])
        values.frombytes(buffers[m["i"]])
        return values.tolist() if packed and not transport.keep_packed else values

    try:
        return markers.loads(frames[0], {
            "bytes": from_buffer(read_bytes),
            "array": from_buffer(read_array),
            "list": from_buffer(read_array),
            "arrow": from_buffer(lambda m: arrow.decode(m, buffers, transport)),
            "pickle": from_buffer(lambda m: arrow.decode_pickle(m, buffers, transport)),
        })
    except markers.MarkerError as exc:
        raise arrow.DecodeError(str(exc)) from None
