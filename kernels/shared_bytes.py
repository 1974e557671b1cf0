"""Large byte strings by shared memory, as large Arrow values go (:mod:`.arrow`, :mod:`.arena`).

A ``bytes``, ``bytearray`` or ``memoryview`` of at least the transport's ``threshold`` is
written into a slab of its writer's arena (a memcpy into pages that already exist) and
travels as ``{"$kp": "bytes", "shm": NAME, "len": N, "a": ARENA}`` instead of as a frame.

The receiver of a ``bytes`` value copies it once, into memory kept from an earlier large
value (:func:`.wire.fill_in_place`), with two copy threads, and hands the slab back to its
writer's arena at once.  A ``bytes`` object owns its memory, so one copy is the least any
receiver of ``bytes`` pays; for binary data that is never copied, send a NumPy ``uint8``
array (it travels as Arrow and arrives mapped, read-only).

A receiver that passes values on (a bridge, ``Transport.passes_on``) copies nothing: it
keeps the file mapped as a :class:`SharedBytes`, and lends the file to the next receiver
(a client on its machine, a worker) or streams the mapping (a gRPC client's blob).  So
a large byte string never lands in the bridge's heap.
"""

from __future__ import annotations

import ctypes
import mmap
import threading
from typing import Any

from . import arena as arena_
from . import wire
from .arrow import DecodeError, Transport, gone, shared_reference
from .markers import MARKER

COPY_THREADS_FROM = 64 << 20  # bytes: a copy this large is split between two threads


class SharedBytes(mmap.mmap):
    """A received byte string left in shared memory: a read-only mapping of its file.

    It is bytes-like (``len``, slicing, ``memoryview``, ``bytes(...)``), and its file goes
    back to its writer's arena once it and every view of it are gone."""

    holder: arena_.Holder


BINARY = (bytes, bytearray, memoryview, SharedBytes)


def nbytes(obj: Any) -> int:
    return len(obj) if type(obj) is bytes else memoryview(obj).nbytes


def encode(obj: Any, transport: Transport) -> dict[str, Any] | None:
    """The marker of byte string ``obj`` sent by shared memory, or None when it goes as a
    frame (no shared memory, or smaller than the threshold)."""
    if not transport.shm_dir or nbytes(obj) < max(1, transport.threshold):
        return None
    arena = transport.arena or transport.prefix
    if type(obj) is SharedBytes:
        lent = arena_.lend(obj, transport.shm_dir, transport.prefix)
        if lent is not None:
            return {MARKER: "bytes", "shm": lent[0], "len": lent[1], "a": lent[2]}
    view = memoryview(obj)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    name = arena_.write_bytes(view, transport.shm_dir, arena, transport.prefix)
    return {MARKER: "bytes", "shm": name, "len": view.nbytes, "a": arena}


def decode(marker: dict[str, Any], transport: Transport) -> bytes | SharedBytes:
    """The byte string a marker of :func:`encode` refers to: ``bytes``, or a
    :class:`SharedBytes` where the transport passes values on."""
    name, length, arena = shared_reference(marker, transport)
    shm_dir = transport.shm_dir
    assert shm_dir is not None  # shared_reference refuses a transport without one
    try:
        if transport.passes_on:
            shared, held = arena_.claim(shm_dir, name, length, arena, transport.prefix,
                                        kind=SharedBytes)
            if held is not None and arena is not None:
                shared.holder = arena_.Holder(held, length, shm_dir, arena, transport.arena_cap)
                arena_.remember(shared, shared.holder)
            return shared
        mapping, held = arena_.claim(shm_dir, name, length, arena, transport.prefix,
                                     access=mmap.ACCESS_COPY)  # writable here, never written
    except OSError as exc:
        raise gone(exc) from None
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    try:
        frame, view = wire.fill_in_place(length)
        source = ctypes.c_char.from_buffer(mapping)
        target = ctypes.c_char.from_buffer(view)
        try:
            copy(ctypes.addressof(target), ctypes.addressof(source), length)
        finally:
            del source, target
            view.release()
    finally:
        mapping.close()
        if held is not None and arena is not None:
            arena_.release(held, shm_dir, arena, transport.arena_cap)
    return frame


def copy(target: int, source: int, n: int) -> None:
    """memcpy ``n`` bytes without holding the GIL; a large copy is split between two
    threads (one copy thread runs at 3.9 GB/s from shared memory on the 2-core VM of
    docs/performance.md, two at 7)."""
    if n < COPY_THREADS_FROM:
        ctypes.memmove(target, source, n)
        return
    half = (n // 2) & ~0xFFF
    other = threading.Thread(target=ctypes.memmove, args=(target + half, source + half, n - half),
                             name="kernelpit-copy", daemon=True)
    other.start()
    ctypes.memmove(target, source, half)
    other.join()
