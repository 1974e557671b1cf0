"""Python values <-> ``kernelpit.v1.Value``: JSON text plus binary buffers, or raw bytes.

The JSON uses the core's wire convention (:mod:`kernelpit.kernels.protocol`):
binary data nested anywhere inside a structure travels in ``Value.buffers``
and is replaced by a marker: ``{"$kp": "bytes", "i": N}`` for ``bytes``,
``{"$kp": "arrow", "t": KIND, ..., "i": N}`` for pyarrow Tables and
RecordBatches, pandas DataFrames and Series and NumPy arrays, whose buffer
is an Arrow IPC stream (a tensor IPC message for NumPy arrays of numbers) —
exactly what :func:`kernelpit.kernels.arrow.encode` makes for an inline
value, so both sides read them back with :func:`kernelpit.kernels.arrow.decode`.
A value that is a byte string as a whole travels in ``Value.raw``.  An unset
Value is ``None``.

Binary data that would make the message too big is not put in it: ``park``
(the bridge's blob store, or the client's upload list) takes the bytes, or an
Arrow value's IPC stream as a list of segments pointing into its own buffers,
and the Value carries a ``BlobRef`` in ``blobs[N]`` instead (see
values.proto).  A large byte string as a whole then travels as a bytes
marker in ``json`` rather than in ``raw``.

Over the local transport (a client on the bridge's machine, same user) a large Arrow
value or byte string goes by shared memory instead, as between the pool and its
workers: ``shm`` is that connection's :class:`~kernelpit.kernels.arrow.Transport`, and
the marker names a file in the pool's shared-memory directory (``{"$kp": "arrow", ...,
"shm": NAME}``, ``{"$kp": "bytes", "shm": NAME, "len": N, "a": ARENA}``).  A gRPC peer
never sends or receives such a marker (it is refused there).
"""

from __future__ import annotations

import json
import sys
from array import array
from typing import Any, Callable

from ..kernels import arrow, markers, shared_bytes
from ..kernels.markers import MARKER
from ..kernels.protocol import SUPPORTED, PackedList, pack_lists, unpacked
from ..v1 import values_pb2 as pb

_EMPTY = pb.Value()

_NO_SHM = arrow.Transport()  # never maps files: a received "shm" reference is refused

#: (segments, size) -> blob id: keeps a large buffer apart from the message
Park = Callable[[list[Any], int], str]
#: (blob id, size) -> the buffer (a pyarrow Buffer or bytes)
Fetch = Callable[[str, int], Any]


class BadValue(ValueError):
    """A value that cannot be sent, or a received Value that cannot be read."""


def to_value(obj: Any, park: Park | None = None, limit: int = 4 << 20,
             packed: bool = False, shm: arrow.Transport | None = None,
             sent: dict[int, int] | None = None) -> pb.Value:
    """Encode a Python value (JSON types, bytes, Arrow tables, DataFrames, arrays).

    With ``park``, Arrow buffers beyond ``limit`` bytes in total go to ``park`` and the
    Value references them in ``blobs``; without it everything is inline.  ``packed``:
    lists of at least 64 plain ints (int64) or floats travel as one buffer each
    (``{"$kp": "list", ...}``), for peers that read that marker.  ``shm``: Arrow data of
    at least ``shm.threshold`` bytes goes by shared memory (the local transport).
    ``sent``: the packed lists already sent ahead of this value (``id(list)`` -> index, see
    :mod:`.streamed`), referred to as ``{"$kp": "list", "t": T, "a": index}``.
    """
    if obj is None:
        return _EMPTY
    if packed:
        obj = pack_lists(obj)
    if isinstance(obj, shared_bytes.BINARY):
        n = shared_bytes.nbytes(obj)
        if (park is None or n <= limit) and (shm is None or n < shm.threshold):
            return pb.Value(raw=bytes(obj))  # larger: a bytes marker (shared memory, a blob)
    buffers: list[Any] = []
    refs: dict[int, pb.BlobRef] = {}
    room = [limit]

    def add(segment: Any, n: int) -> int:
        """Put ``n`` bytes in the message, or park them as a blob when there is no room."""
        if park is not None and n > room[0]:
            refs[len(buffers)] = pb.BlobRef(id=park([segment], n), size=n)
            buffers.append(b"")
        else:
            room[0] -= n
            buffers.append(bytes(segment))
        return len(buffers) - 1

    def default(o: Any) -> Any:
        if isinstance(o, shared_bytes.BINARY):
            shared = shared_bytes.encode(o, shm) if shm is not None else None
            return shared or markers.buffer_ref("bytes", add(o, shared_bytes.nbytes(o)))
        if arrow.handles(o):
            return _encode_arrow(o, buffers, refs, park, room, shm)
        if type(o) is PackedList and packed:
            if sent and id(o) in sent:
                return {MARKER: "list", "t": o.typecode, "a": sent[id(o)]}
            data = little_endian(o)
            return markers.buffer_ref("list", add(memoryview(data).cast("B"), len(o) * o.itemsize),
                                      t=o.typecode)
        if isinstance(o, array):
            return o.tolist()
        raise BadValue(f"a value of type {type(o).__module__}.{type(o).__qualname__} cannot be "
                          f"sent to or from a bridge; supported types are {SUPPORTED}")

    outgoing = arrow.Outgoing(default, shm)
    try:
        text = markers.dumps(obj, outgoing)
    except BaseException as exc:
        outgoing.give_back()
        if isinstance(exc, BadValue) or not isinstance(exc, (TypeError, ValueError)):
            raise
        raise BadValue(f"cannot encode value: {exc}") from None
    if not buffers:
        return pb.Value(json=text)
    value = pb.Value(json=text, buffers=buffers)
    if refs:
        value.blobs.extend(refs.get(i, _NO_REF) for i in range(len(buffers)))
    return value


_NO_REF = pb.BlobRef()
_LIST_TYPES = {"q": 8, "d": 8}  # little-endian int64, float64


def little_endian(values: array) -> array:
    """``values`` with its numbers little-endian (as a packed list's buffer holds them):
    itself on a little-endian machine, else a swapped copy."""
    if sys.byteorder == "little":
        return values
    out = array(values.typecode, values)
    out.byteswap()
    return out


def _decode_list(marker: dict[str, Any], buffers: Any, what: str,
                 ahead: dict[int, list[Any]] | None = None) -> list[Any]:
    if "a" in marker:
        try:
            return (ahead or {})[marker["a"]]
        except (KeyError, TypeError):
            raise BadValue(f"{what} refers to a list sent ahead of it ({marker}) that did not "
                           "come") from None
    kind, i = marker.get("t"), marker.get("i")
    if kind not in _LIST_TYPES or not isinstance(i, int) or not 0 <= i < len(buffers):
        raise BadValue(f"{what} has a list marker {{\"$kp\": \"list\", \"t\": T, \"i\": N}} with "
                       f"an unknown type {kind!r} (\"q\": int64, \"d\": float64) or no matching "
                       f"buffer ({len(buffers)} buffer(s) sent)")
    data = buffers[i]
    if len(data) % _LIST_TYPES[kind]:
        raise BadValue(f"{what}: a list marker's buffer of {len(data)} bytes is not a whole "
                       "number of 8-byte values")
    return numbers(data, kind)


def numbers(data: Any, typecode: str) -> list[Any]:
    """A packed list's buffer (little-endian ``typecode`` numbers) as a list."""
    if sys.byteorder == "little":
        return unpacked(data, typecode)
    values = array(typecode)
    values.frombytes(data)
    values.byteswap()
    return values.tolist()


def _encode_arrow(o: Any, buffers: list[Any], refs: dict[int, pb.BlobRef], park: Park | None,
                  room: list[int], shm: arrow.Transport | None) -> Any:
    import numpy as np

    if isinstance(o, np.generic):
        return o.item()
    import pyarrow as pa

    kind, meta, payload = arrow.to_arrow(o, pa, np)
    estimate = arrow.payload_nbytes(payload, pa)
    marker: dict[str, Any] = {MARKER: "arrow", "t": kind, **meta}
    if shm is not None and estimate >= shm.threshold:
        shared = arrow.in_shared_memory(o, kind, payload, pa, shm)
        if shared is not None:  # else no room in shared memory: inline, as below
            marker.update(shared, n=estimate)
            return marker
    marker["i"] = len(buffers)
    # the IPC stream as pieces pointing into the table (no copy): joined once into the
    # message's bytes when it fits there (0.06 ms per MB, 0.10 through an Arrow buffer and
    # to_pybytes), else parked as they are
    segments = arrow.Segments()
    arrow.write_ipc(pa, payload, pa.PythonFile(segments, mode="w"), file_format=False)
    parts, size = segments.parts, segments.size
    if park is None or size <= room[0]:
        room[0] -= size
        buffers.append(b"".join(parts))
        return marker
    refs[len(buffers)] = pb.BlobRef(id=park(parts, size), size=size)
    buffers.append(b"")
    return marker


def blob_refs(value: pb.Value) -> list[pb.BlobRef]:
    """The blobs a Value references (to fetch before :func:`from_value`)."""
    return [r for r in value.blobs if r.id]


def from_value(value: pb.Value, what: str = "value", blobs: Fetch | None = None,
               untrusted: bool = False, shm: arrow.Transport | None = None,
               ahead: dict[int, list[Any]] | None = None) -> Any:
    """Decode a Value; a malformed one raises BadValue naming ``what`` it was.

    ``blobs`` gives the data of the blobs it references.  ``untrusted``: the value
    came from a client, so Arrow data is validated in full before it is used.  ``shm``:
    the local transport's, to map Arrow data sent by shared memory (refused without it).
    ``ahead``: the lists of a streamed result that came before it, by index (:mod:`.streamed`).
    """
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "raw":
        if value.encoding not in ("", "bytes"):
            raise BadValue(f"{what}: encoding '{value.encoding}' is not supported by this "
                              "bridge; send JSON or raw bytes")
        return value.raw
    if value.encoding not in ("", "json"):
        raise BadValue(f"{what}: a json value with encoding '{value.encoding}'; "
                          "leave encoding empty or set it to 'json'")
    buffers: Any = value.buffers
    if value.blobs:
        buffers = _resolve(value, what, blobs)
    try:
        return _loads(value.json, buffers, what, untrusted, shm, ahead)
    except markers.MarkerError as exc:
        raise BadValue(f"{what}: {exc}") from None
    except json.JSONDecodeError as exc:
        raise BadValue(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadValue(f"{what} is nested too deeply to decode (JSON arrays/objects more "
                       "than about 1,000 levels deep); flatten it") from None


def _loads(text: str, buffers: Any, what: str, untrusted: bool,
           shm: arrow.Transport | None, ahead: dict[int, list[Any]] | None) -> Any:
    if MARKER not in text:
        return markers.loads(text)

    def buffer(i: Any) -> Any:
        if not isinstance(i, int) or not 0 <= i < len(buffers):
            raise BadValue(f"{what} has a bytes marker {{\"$kp\": \"bytes\", \"i\": N}} with "
                           f"no matching buffer ({len(buffers)} buffer(s) sent)")
        return buffers[i]

    def read_bytes(marker: dict[str, Any]) -> Any:
        if "shm" in marker:
            return _decode_shared_bytes(marker, what, shm)
        inline = markers.read_inline_bytes(marker)
        return inline if inline is not None else bytes(buffer(marker.get("i")))

    return markers.loads(text, {
        "bytes": arrow.once_per_file(read_bytes),
        "arrow": arrow.once_per_file(lambda marker: _decode_arrow(marker, buffers, what,
                                                                  untrusted, shm)),
        "list": lambda marker: _decode_list(marker, buffers, what, ahead),
    })


def _decode_shared_bytes(marker: dict[str, Any], what: str, shm: arrow.Transport | None) -> Any:
    if shm is None:
        raise BadValue(f"{what} refers to a shared-memory file; over gRPC bytes travel in "
                       "Value.raw, buffers or blobs")
    try:
        return shared_bytes.decode(marker, shm)
    except (arrow.DecodeError, KeyError, TypeError, ValueError) as exc:
        raise BadValue(f"{what}: {exc}") from None


def _resolve(value: pb.Value, what: str, blobs: Fetch | None) -> list[Any]:
    """The buffers with every referenced blob's data in place (each blob is used up here)."""
    refs = list(value.blobs)
    if len(refs) != len(value.buffers):
        raise BadValue(f"{what} has {len(refs)} blob reference(s) for {len(value.buffers)} "
                       "buffer(s); blobs must be empty or as long as buffers")
    buffers: list[Any] = list(value.buffers)
    failure = None
    for i, ref in enumerate(refs):
        if not ref.id:
            continue
        if blobs is None:
            failure = failure or f"{what} references blob '{ref.id}' but none can be read here"
            continue
        try:
            buffers[i] = blobs(ref.id, ref.size)
        except LookupError as exc:  # keep going: every referenced blob is used up either way
            failure = failure or f"{what}: {exc}"
    if failure:
        raise BadValue(failure)
    return buffers


def _decode_arrow(marker: dict[str, Any], buffers: Any, what: str, untrusted: bool,
                  shm: arrow.Transport | None) -> Any:
    import pyarrow as pa

    if "shm" in marker:
        if shm is None:
            raise BadValue(f"{what} refers to a shared-memory file; over gRPC Arrow data "
                           "travels in buffers or blobs")
        try:
            return arrow.decode(marker, buffers, shm, validate=untrusted)
        except Exception as exc:  # noqa: BLE001 - gone, refused or malformed: say which value
            raise BadValue(f"{what}: {exc}") from None
    i = marker.get("i")
    if not isinstance(i, int) or not 0 <= i < len(buffers):
        raise BadValue(f"{what} has an arrow marker {{\"$kp\": \"arrow\", ..., \"i\": N}} with "
                       f"no matching buffer ({len(buffers)} buffer(s) sent)")
    try:
        if untrusted and marker.get("t") != "tensor":
            # a crafted IPC stream could point outside its buffers: check before anyone reads it
            pa.ipc.open_stream(pa.py_buffer(buffers[i])).read_all().validate(full=True)
        return arrow.decode(marker, buffers, _NO_SHM)
    except Exception as exc:  # noqa: BLE001 - whatever pyarrow raises, the value is malformed
        raise BadValue(f"{what} holds a malformed Arrow value ({type(exc).__name__}: {exc}); "
                       "its buffer must be an Arrow IPC stream (a tensor IPC message for "
                       "\"t\": \"tensor\")") from None


class Codec:
    """How one end encodes and decodes Values: where large buffers go and come from."""

    def __init__(self, park: Park | None = None, limit: int = 4 << 20, fetch: Fetch | None = None,
                 untrusted: bool = False, packed: bool = False,
                 shm: arrow.Transport | None = None) -> None:
        self.park = park
        self.limit = limit
        self.fetch = fetch
        self.untrusted = untrusted
        self.packed = packed
        self.shm = shm  # the local transport's shared memory (see the module's docstring)

    def encode(self, obj: Any, sent: dict[int, int] | None = None) -> pb.Value:
        return to_value(obj, self.park, self.limit, self.packed, self.shm, sent)

    def decode(self, value: pb.Value, what: str = "value",
               ahead: dict[int, list[Any]] | None = None) -> Any:
        return from_value(value, what, self.fetch, self.untrusted, self.shm, ahead)


PLAIN = Codec()
