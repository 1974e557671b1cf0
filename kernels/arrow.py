"""The Arrow data plane: tables, DataFrames and arrays travel as Arrow IPC.

Values of these types are encoded here (everything else stays JSON, see
:mod:`kernelpit.kernels.protocol`):

=========================  ===============================  ==========================
sent                       travels as                       arrives as
=========================  ===============================  ==========================
``pyarrow.Table``          IPC stream/file                  ``pyarrow.Table``
``pyarrow.RecordBatch``    IPC stream/file                  ``pyarrow.RecordBatch``
``pandas.DataFrame``       IPC, index and dtypes in schema  ``pandas.DataFrame``
``pandas.Series``          IPC, one column                  ``pandas.Series``
``numpy.ndarray`` numeric  Arrow tensor IPC                 ``numpy.ndarray`` (dtype, shape)
``numpy.ndarray`` 1-D      one Arrow column                 ``numpy.ndarray``
numpy scalars              JSON numbers                     ``int`` / ``float`` / ``bool``
=========================  ===============================  ==========================

A value smaller than the transport's ``threshold`` is an inline frame of the
message.  A larger one is written once as an Arrow IPC *file* into the
run's shared-memory directory (``/dev/shm/kernelpit-<run id>``, mode 0700)
and handed over by reference: the receiver memory-maps it, so its buffers
point into the mapping (no copy).  Once the receiver is done with it, the
file's pages are reused for the writer's next value (:mod:`.arena`), and a
table received that way and passed on as an argument is lent, not written
again.  A dead process's files are removed by the pool; the whole directory
goes when the pool closes.

pyarrow is imported only when such a value is actually sent.
"""

from __future__ import annotations

import contextlib
import os
import pickle
from dataclasses import dataclass
from typing import Any, Callable

from . import arena as arena_
from .markers import MARKER

ROOTS = ("pyarrow", "pandas", "numpy")


@dataclass
class Transport:
    """How large values travel for one sender/receiver pair."""

    shm_dir: str | None = None       # where by-reference files go; None: always inline
    threshold: int = 1 << 20         # bytes; at or above: by reference
    prefix: str = "host"             # file name prefix of this writer (workers: "w<id>")
    allow_pickle: bool = False       # encode/decode other objects with pickle (runs code on load)
    arena: str = ""                  # whose free slabs this writer reuses (default: prefix)
    arena_cap: int = arena_.DEFAULT_CAP  # bytes of free slabs a run keeps, at most
    #: this end passes received values on (a bridge): lists of numbers stay packed (it never
    #: builds the floats) and large byte strings stay in shared memory (it never copies them)
    passes_on: bool = False

    @classmethod
    def from_env(cls, prefix: str) -> "Transport":
        env = os.environ
        shm_dir = env.get("KERNELPIT_SHM_DIR") or None
        return cls(shm_dir=shm_dir, threshold=int(env.get("KERNELPIT_SHM_THRESHOLD", 1 << 20)),
                   prefix=prefix, allow_pickle=env.get("KERNELPIT_PICKLE") == "1",
                   arena_cap=int(env.get("KERNELPIT_SHM_ARENA", arena_.DEFAULT_CAP)))

    def env(self) -> dict[str, str]:
        out = {"KERNELPIT_SHM_THRESHOLD": str(self.threshold),
               "KERNELPIT_SHM_ARENA": str(self.arena_cap),
               "KERNELPIT_PICKLE": "1" if self.allow_pickle else "0"}
        if self.shm_dir:
            out["KERNELPIT_SHM_DIR"] = self.shm_dir
        return out


SHM_BASE = "/dev/shm"


def shared_dir(run_id: str) -> str:
    """The shared-memory directory of a run (created by the pool, removed when it closes)."""
    return os.path.join(SHM_BASE, f"kernelpit-{run_id}")


class DecodeError(ValueError):
    """A received value could not be read back."""


def handles(obj: Any) -> bool:
    """True when ``obj`` is a value this module encodes (judged without importing anything)."""
    return type(obj).__module__.partition(".")[0] in ROOTS


def encode(obj: Any, buffers: list[Any], transport: Transport) -> Any:
    """A JSON-able stand-in for ``obj``; its data goes into ``buffers`` or shared memory."""
    import numpy as np

    if isinstance(obj, np.generic):
        return obj.item()
    import pyarrow as pa

    kind, meta, payload = to_arrow(obj, pa, np)
    nbytes = payload_nbytes(payload, pa)
    marker: dict[str, Any] = {MARKER: "arrow", "t": kind, **meta}
    if transport.shm_dir and nbytes >= transport.threshold:
        shared = in_shared_memory(obj, kind, payload, pa, transport)
        if shared is not None:
            marker.update(shared, n=nbytes)
            return marker
    if nbytes >= transport.threshold:
        # large and no shared memory (a worker on another node, or no room left in it): the
        # IPC stream's pieces as pyarrow hands them out, pointing into the value's own
        # buffers; sent without a copy
        from .wire import Gather

        segments = Segments()
        write_ipc(pa, payload, pa.PythonFile(segments, mode="w"), file_format=False)
        buffers.append(Gather(segments.parts))
    else:
        sink = pa.BufferOutputStream()
        write_ipc(pa, payload, sink, file_format=False)
        buffers.append(sink.getvalue())
    marker["i"] = len(buffers) - 1
    return marker


def payload_nbytes(payload: Any, pa: Any) -> int:
    """The data bytes of a payload of :func:`to_arrow` (a Table, RecordBatch or Tensor)."""
    if isinstance(payload, pa.Tensor):
        return payload.size * payload.type.bit_width // 8
    return payload.nbytes


def in_shared_memory(obj: Any, kind: str, payload: Any, pa: Any,
                     transport: Transport) -> dict[str, Any] | None:
    """The reference fields of ``obj`` (of :func:`to_arrow`'s ``kind`` and ``payload``) in
    shared memory: the file it was received in, lent (a table), or a slab it is written
    into; None when shared memory has no room for it (it then goes inline)."""
    assert transport.shm_dir is not None
    if kind == "table":
        lent = arena_.lend(obj, transport.shm_dir, transport.prefix)
        if lent is not None:
            return lent
    arena = transport.arena or transport.prefix
    size = pa.MockOutputStream()  # the exact size first: no data is copied
    write_ipc(pa, payload, size, file_format=True)
    name = arena_.write_arrow(pa, transport.shm_dir, arena, transport.prefix, size.size(),
                              lambda sink: write_ipc(pa, payload, sink, file_format=True))
    return None if name is None else arena_.reference(name, size.size(), arena)


class Segments:
    """A write-only file that keeps what it is given, uncopied: Arrow's IPC writer hands
    it the body buffers of a table as they are, so the segments point into the table."""

    closed = False

    def __init__(self) -> None:
        self.parts: list[Any] = []
        self.size = 0

    def write(self, data: Any) -> int:
        n = data.size if hasattr(data, "size") and not isinstance(data, memoryview) \
            else memoryview(data).nbytes
        if n:
            self.parts.append(data)
            self.size += n
        return n

    def writable(self) -> bool:
        return True

    def flush(self) -> None:
        pass

    def close(self) -> None:
        self.closed = True


def to_arrow(obj: Any, pa: Any, np: Any) -> tuple[str, dict[str, Any], Any]:
    """``(kind, marker fields, pyarrow Table or Tensor)`` for a value this module carries."""
    if isinstance(obj, pa.Table):
        return "table", {}, obj
    if isinstance(obj, pa.RecordBatch):
        return "batch", {}, pa.Table.from_batches([obj])
    if isinstance(obj, np.ndarray):
        if obj.dtype.kind in "iuf" and obj.dtype.isnative:
            return "tensor", {}, pa.Tensor.from_numpy(np.ascontiguousarray(obj))
        if obj.ndim == 1:
            return "column", {"dtype": obj.dtype.str}, pa.table({"values": pa.array(obj)})
        raise _unsupported(obj, f"a {obj.ndim}-D array of dtype {obj.dtype}")
    module = type(obj).__module__.partition(".")[0]
    if module == "pandas":
        import pandas as pd

        if isinstance(obj, pd.DataFrame):
            return "pandas", {}, pa.Table.from_pandas(obj, preserve_index=None)
        if isinstance(obj, pd.Series):
            name = obj.name
            frame = obj.to_frame(name="__series__")
            return "series", {"name": name if isinstance(name, (str, int, float)) else None}, \
                pa.Table.from_pandas(frame, preserve_index=None)
    raise _unsupported(obj, f"a {type(obj).__module__}.{type(obj).__qualname__}")


def _unsupported(obj: Any, what: str) -> TypeError:
    from .protocol import SUPPORTED, EncodeError

    return EncodeError(f"{what} cannot be sent; supported types are {SUPPORTED}")


def write_ipc(pa: Any, payload: Any, sink: Any, *, file_format: bool) -> None:
    """Write a Table (IPC stream, or file when ``file_format``) or a Tensor to ``sink``."""
    if isinstance(payload, pa.Tensor):
        pa.ipc.write_tensor(payload, sink)
        return
    opener = pa.ipc.new_file if file_format else pa.ipc.new_stream
    with opener(sink, payload.schema) as writer:
        writer.write_table(payload)


def decode(marker: dict[str, Any], buffers: list[Any], transport: Transport,
           validate: bool = False) -> Any:
    """Inverse of :func:`encode` (mapping and unlinking a shared-memory file).  ``validate``:
    check a table in full before anything reads it (it came from a peer not trusted to
    send well-formed Arrow data)."""
    import pyarrow as pa

    kind = marker.get("t")
    holder = None
    if "shm" in marker:
        buffer, holder = _map_shared(pa, marker, transport)
        source = pa.BufferReader(buffer)
        tensor_reader, table_reader = pa.ipc.read_tensor, lambda s: pa.ipc.open_file(s).read_all()
    else:
        try:
            source = pa.BufferReader(pa.py_buffer(buffers[marker["i"]]))
        except (KeyError, IndexError, TypeError):
            raise DecodeError("an arrow value refers to a buffer that was not sent") from None
        tensor_reader, table_reader = pa.ipc.read_tensor, lambda s: pa.ipc.open_stream(s).read_all()
    try:
        if kind == "tensor":
            return tensor_reader(source).to_numpy()
        table = table_reader(source)
        if validate:
            table.validate(full=True)
    except pa.ArrowInvalid as exc:
        raise DecodeError(f"a received arrow value is corrupt: {exc}") from None
    if kind == "table":
        if holder is not None:
            arena_.remember(table, holder)
        return table
    if kind == "batch":
        return table.combine_chunks().to_batches()[0] if table.num_rows else \
            pa.RecordBatch.from_pylist([], schema=table.schema)
    if kind == "column":
        import numpy as np

        return table.column(0).to_numpy(zero_copy_only=False).astype(np.dtype(marker["dtype"]),
                                                                     copy=False)
    if kind == "pandas":
        return table.to_pandas()
    if kind == "series":
        series = table.to_pandas()["__series__"]
        series.name = marker.get("name")
        return series
    raise DecodeError(f"unknown arrow value kind {kind!r}")


def shared_reference(marker: dict[str, Any], transport: Transport) -> tuple[str, int, str | None]:
    """``(file name, length, writer's arena)`` of a by-reference value's marker; refuses
    (:class:`DecodeError`) a name that is not a file of this run's directory."""
    name, arena = marker["shm"], marker.get("a")
    if not transport.shm_dir or not isinstance(name, str) or os.path.basename(name) != name \
            or not name.endswith(".arrow") or (arena is not None and not (
                isinstance(arena, str) and arena_.valid_name(arena))):
        raise DecodeError(f"refusing a shared-memory reference {name!r}: not a file of this run")
    return name, int(marker["len"]), arena


def once_per_file(read: Callable[[dict[str, Any]], Any]) -> Callable[[dict[str, Any]], Any]:
    """``read`` for the markers of one message, reading each shared-memory file once: a
    value that appears twice in a message was sent once (its marker is repeated), and its
    file is taken over by the first read."""
    seen: dict[str, Any] = {}

    def reader(marker: dict[str, Any]) -> Any:
        name = marker.get("shm")
        if not isinstance(name, str):
            return read(marker)
        if name not in seen:
            seen[name] = read(marker)
        return seen[name]
    return reader


class Outgoing:
    """One message's marker encoder (``encode``), noting the shared-memory files it writes
    or lends.  If the message fails before it is made (a later value cannot be encoded),
    :meth:`give_back` returns them at once: a written file to its arena as a free slab, a
    lent name unlinked.  Else they would wait for their writer's death."""

    __slots__ = ("encode", "transport", "files")

    def __init__(self, encode: Callable[[Any], Any], transport: Transport | None) -> None:
        self.encode, self.transport = encode, transport
        self.files: list[dict[str, Any]] = []

    def __call__(self, obj: Any) -> Any:
        marker = self.encode(obj)
        if type(marker) is dict and "shm" in marker:
            self.files.append(marker)
        return marker

    def give_back(self) -> None:
        """Called while the message's own error propagates: it must not replace that
        error, so a file it cannot give back is left to its writer's death, as before."""
        shm_dir = self.transport.shm_dir if self.transport is not None else None
        for marker in self.files if shm_dir else ():
            path = os.path.join(shm_dir, marker["shm"])
            with contextlib.suppress(OSError):
                if marker.get("a") is None:
                    os.unlink(path)
                else:
                    arena_.release(path, shm_dir, marker["a"], self.transport.arena_cap)


def gone(exc: OSError) -> DecodeError:
    """The error for a by-reference value whose file is no longer there."""
    return DecodeError(f"a shared-memory value is gone ({exc}); its sender may have died")


def _map_shared(pa: Any, marker: dict[str, Any], transport: Transport) -> tuple[Any, Any]:
    """Memory-map a by-reference file from this run's directory (see :mod:`.arena`)."""
    name, length, arena = shared_reference(marker, transport)
    try:
        return arena_.receive(pa, transport.shm_dir, name, length, arena, transport.prefix,
                              transport.arena_cap)
    except OSError as exc:
        raise gone(exc) from None


def reclaim(shm_dir: str | None, prefix: str) -> int:
    """Remove the files of ``prefix`` (a writer or receiver that died, or a call that ended):
    those it wrote that nobody received, its free slabs, and those it held; returns the
    count.  Other processes' mappings of them stay valid."""
    if not shm_dir:
        return 0
    removed = 0
    try:
        names = os.listdir(shm_dir)
    except FileNotFoundError:
        return 0
    for name in names:
        if name.startswith((prefix + "-", prefix + "@")):
            try:
                os.unlink(os.path.join(shm_dir, name))
                removed += 1
            except FileNotFoundError:
                pass
    return removed


def encode_pickle(obj: Any, buffers: list[Any]) -> dict[str, Any]:
    buffers.append(pickle.dumps(obj, protocol=5))
    return {MARKER: "pickle", "i": len(buffers) - 1}


def decode_pickle(marker: dict[str, Any], buffers: list[Any], transport: Transport) -> Any:
    if not transport.allow_pickle:
        raise DecodeError("received a pickled value but pickle is not enabled here; "
                          "enable it with Pool(pickle=True) on both sides (it runs code on load)")
    return pickle.loads(buffers[marker["i"]])
