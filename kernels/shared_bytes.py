"""Large byte strings by shared memory, as large Arrow values go (:mod:`.arrow`, :mod:`.arena`).

A ``bytes``, ``bytearray`` or ``memoryview`` of at least the transport's ``threshold`` is
written into a slab of its writer's arena (a memcpy into pages that already exist, on
two threads, at the offset within a page that it has in the writer's memory: :func:`write`)
and travels as ``{"$kp": "bytes", "shm": NAME, "len": N, "a": ARENA, "off": K}`` instead
of as a frame.  Both copies, into the slab and out of it, run at memory speed; a socket
moves a frame on one thread, through the kernel (on the VM of docs/performance.md,
between an embedded pool and its worker: 1 GB 13.1 against 7.8 GB/s, 100 MB 8.6 against
6.7-7.6, 10 MB 6.1-7.7 against 4.4-6.6, 1 MB even).

The receiver of a ``bytes`` value copies it once, into memory kept from an earlier large
value (:func:`.wire.fill_in_place`), with two copy threads, out of its mapping of the slab
kept from the last value that came in it (:func:`.arena.copy_out`), and hands the slab
back to its writer's arena at once.  A ``bytes`` object owns its memory, so one copy is
the least any receiver of ``bytes`` pays; for binary data that is never copied, send a
NumPy ``uint8`` array (it travels as Arrow and arrives mapped, read-only).

A receiver that passes values on (a bridge, ``Transport.passes_on``) copies nothing: it
keeps the file mapped (a read-only ``memoryview`` of a :class:`SharedBytes`), and lends
the file to the next receiver (a client on its machine, a worker) or streams it (a gRPC
client's blob) out of its kept mapping of the slab (:func:`.arena.read_once`).  So a large
byte string never lands in the bridge's heap.
"""

from __future__ import annotations

import ctypes
import mmap
import os
import threading
from typing import Any

from . import arena as arena_
from . import wire
from .arrow import DecodeError, Transport, gone, shared_reference
from .markers import MARKER

COPY_THREADS_FROM = 64 << 20  # bytes: a copy this large is split between two threads


class SharedBytes(mmap.mmap):
    """The read-only mapping of a received byte string's file, carrying its
    :class:`~.arena.Holder`: the file goes back to its writer's arena once the mapping and
    every view of it are gone.  The value handed out is a ``memoryview`` of it, from where
    the byte string starts in the file (:func:`received`)."""

    holder: arena_.Holder


BINARY = (bytes, bytearray, memoryview)
PAGE = 4096


def received(obj: Any) -> bool:
    """Whether ``obj`` is a byte string this process received and keeps in shared memory
    (a read-only view of a :class:`SharedBytes`): immutable, and lent on, not copied."""
    return type(obj) is memoryview and type(obj.obj) is SharedBytes


def nbytes(obj: Any) -> int:
    return len(obj) if type(obj) is bytes else memoryview(obj).nbytes


def encode(obj: Any, transport: Transport) -> dict[str, Any] | None:
    """The marker of byte string ``obj`` sent by shared memory, or None when it goes as a
    frame: no shared memory, smaller than the threshold, or no room left in it."""
    if not transport.shm_dir or nbytes(obj) < max(1, transport.threshold):
        return None
    if received(obj):  # lent: no copy, whoever receives it
        lent = arena_.lend(obj, transport.shm_dir, transport.prefix)
        if lent is not None:
            return {MARKER: "bytes", **lent}
    arena = transport.arena or transport.prefix
    view = memoryview(obj)
    if not view.c_contiguous:
        view = memoryview(view.tobytes())
    view = view.cast("B") if view.format != "B" or view.ndim != 1 else view
    name, at = write(view, transport.shm_dir, arena, transport.prefix)
    if name is None:  # no room in shared memory: it goes as a frame
        return None
    return {MARKER: "bytes", **arena_.reference(name, view.nbytes, arena, at)}


def write(data: memoryview, shm_dir: str, arena: str, prefix: str) -> tuple[str | None, int]:
    """Write a byte string (a contiguous ``memoryview`` of format ``B``) into a slab of
    ``arena`` (:func:`.arena.write`); returns the file's name (None: no room) and where in
    it the byte string starts.

    It starts at the offset within a page that it has in this process's memory, so that
    both copies, into the slab and out of it, move between addresses at the same offset
    within their pages.  The data of a large ``bytes`` object starts 48 bytes past a page
    in every CPython process (a large allocation is its own mapping), and on hosts where
    glibc's memmove suffers 4K aliasing it copies 1 GB between aligned addresses at 20 GB/s
    on two threads, at 14 where the target lies 48 bytes past (:func:`_memmove`;
    docs/performance.md, S7).

    A new file gets room for a byte string of the same length at any offset (a page
    more, allocated, not a hole), so that the next one fits its slab wherever it lies."""
    size = data.nbytes
    with arena_.exported(data) as held:
        at = held.buf % PAGE
    capacity = -(-size // PAGE) * PAGE + PAGE

    def into_mapping(mapping: mmap.mmap) -> None:
        copy(mapping, data, size, into_at=at)

    def into_file(f: Any) -> None:
        f.seek(at)
        done = 0
        while done < size:  # write() may take less than all (2 GiB at most on Linux)
            done += f.write(data[done:])
        _allocate(f, at + size, capacity - at - size)

    return arena_.write(shm_dir, arena, prefix, at + size, into_mapping, into_file), at


def _allocate(f: Any, start: int, n: int) -> None:
    """Give file ``f`` ``n`` more bytes from ``start`` (its end) with pages behind them."""
    if hasattr(os, "posix_fallocate"):
        os.posix_fallocate(f.fileno(), start, n)
    else:  # pragma: no cover - no posix_fallocate (macOS): zeros written are pages too
        f.seek(start)
        f.write(bytes(n))


def decode(marker: dict[str, Any], transport: Transport) -> bytes | memoryview:
    """The byte string a marker of :func:`encode` refers to: ``bytes``, or where the
    transport passes values on, a read-only ``memoryview`` of its file's mapping (a
    :class:`SharedBytes`; :func:`received`)."""
    name, length, arena = shared_reference(marker, transport)
    at = marker.get("off", 0)
    if type(at) is not int or not 0 <= at < PAGE:
        raise DecodeError(f"refusing a shared-memory reference {name!r}: its offset {at!r} "
                          f"is not within a page")
    shm_dir = transport.shm_dir
    assert shm_dir is not None  # shared_reference refuses a transport without one
    try:
        if transport.passes_on:
            shared, held = arena_.claim(shm_dir, name, at + length, arena, transport.prefix,
                                        kind=SharedBytes)
            value = memoryview(shared)[at:]
            if held is not None and arena is not None:
                shared.holder = arena_.Holder(held, length, shm_dir, arena, transport.arena_cap,
                                              at=at)
                with arena_.exported(shared) as mapped:
                    arena_.mapped_at(mapped.buf, shared)
                arena_.remember(value, shared.holder)
            return value
        frame, view = wire.fill_in_place(length)
        try:
            arena_.copy_out(shm_dir, name, at + length, arena, transport.prefix,
                            transport.arena_cap,
                            lambda mapping: copy(view, mapping, length, from_at=at))
        finally:
            view.release()
    except OSError as exc:
        raise gone(exc) from None
    except ValueError as exc:
        raise DecodeError(str(exc)) from None
    return frame


def copy(target: Any, source: Any, n: int, into_at: int = 0, from_at: int = 0) -> None:
    """memcpy ``n`` bytes of buffer ``source`` from offset ``from_at`` into buffer
    ``target`` at ``into_at`` without holding the GIL; a large copy is split between two
    threads.  On the 2-core VM of docs/performance.md, 1 GB into a mapped slab: 9 GB/s on
    one thread, 16-22 on two; out of a kept mapping of a slab into a ``bytes`` object: 20
    on two, 14 where the two are not at the same offset within a page (:func:`_memmove`)."""
    with arena_.exported(target) as into, arena_.exported(source) as out_of:
        if not (0 <= n and 0 <= into_at and 0 <= from_at and into_at + n <= into.len
                and from_at + n <= out_of.len):
            raise ValueError(f"cannot copy {n} bytes from {out_of.len} at {from_at} into "
                             f"{into.len} at {into_at}")
        to, start = into.buf + into_at, out_of.buf + from_at
        if n < COPY_THREADS_FROM:
            _memmove(to, start, n)
            return
        half = (n // 2) & ~0xFFF
        other = threading.Thread(target=_memmove, args=(to + half, start + half, n - half),
                                 name="kernelpit-copy", daemon=True)
        other.start()
        _memmove(to, start, half)
        other.join()


ALIASING = 512  # bytes: a target this little past its source within a page copies slowly
PIECE = 4 << 20  # bytes: such a copy goes in pieces of this size


def _memmove(to: int, start: int, n: int) -> None:
    """``memmove``, in pieces when ``to`` is a little past ``start`` within a page.  For
    copies larger than the cache, glibc's memmove then takes a path that runs at 3.5-4.9
    GB/s on some hosts (12 when the two are aligned, or far apart within the page; 4K
    aliasing); in pieces of 4 MiB it takes another, at 8.4.  A byte string written by
    :func:`write` is aligned with a ``bytes`` object's data; one from a buffer at another
    page offset is not."""
    if not 0 < (to - start) % PAGE < ALIASING or n <= PIECE:
        ctypes.memmove(to, start, n)
        return
    for at in range(0, n, PIECE):
        ctypes.memmove(to + at, start + at, min(PIECE, n - at))
