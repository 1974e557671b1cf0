"""Reusable shared-memory files: a large value's pages are allocated once, not per value.

Writing 1 GB into a fresh tmpfs file runs at 1.3-2 GB/s on a 2-core VM, most of it the
kernel allocating and zeroing pages; rewriting a file whose pages exist runs at 3.7-5.6
GB/s (a memcpy into pre-faulted memory: ~9).  So a received value's file is not deleted
when its receiver is done with it: it becomes a *free slab* of its writer's arena, and the
writer's next large value goes into the smallest free slab that fits.

A file's name says who may remove it, so every death is cleaned up by a prefix
(:func:`kernelpit.kernels.arrow.reclaim`), and reader and writer never share a slab:

==============================  =========================================================
``<writer>-<id>.arrow``         written, not yet received (the writer's death, or the end
                                of the call that carried it, removes it)
``<receiver>@<arena>-<id>``     received: mapped by ``receiver`` (its death removes it)
``<arena>-<id>.free``           a free slab of ``arena`` (the writer's pool of pages; the
                                death of the worker owning ``arena`` removes it)
==============================  =========================================================

Each step is a ``rename`` (atomic).  A receiver keeps its mapping while any buffer of the
value lives (:class:`Holder`, the base of every buffer); when the last one goes, the file
becomes a free slab, or is unlinked when the run's free slabs would pass the cap
(``KERNELPIT_SHM_ARENA`` bytes, default 2 GiB).  A file that was removed meanwhile (its
writer died) is simply gone: its pages go with the last mapping.

Lending: a table received this way and passed on as an argument is not written again.
Its file gets a second name (a hard link, ``<writer>-<id>.arrow``) that the next receiver
maps and unlinks at once, as files outside the arena are; the holder then unlinks its own
name instead of freeing it, so pages that another process maps are never rewritten.
"""

from __future__ import annotations

import mmap
import os
import re
import threading
import uuid
import weakref
from typing import Any, BinaryIO

DEFAULT_CAP = 2 << 30
_NAME = re.compile(r"[A-Za-z0-9]+\Z")
_lock = threading.Lock()
_held: dict[int, tuple["weakref.ref[Any]", "Holder"]] = {}  # id(table) -> (table, its file)


def valid_name(name: str) -> bool:
    """An arena or writer name: letters and digits only (it becomes part of file names)."""
    return bool(_NAME.match(name))


def free_bytes(shm_dir: str) -> int:
    """The size of all free slabs in a run's directory."""
    total = 0
    try:
        with os.scandir(shm_dir) as entries:
            for e in entries:
                if e.name.endswith(".free"):
                    try:
                        total += e.stat().st_size
                    except FileNotFoundError:
                        pass
    except FileNotFoundError:
        pass
    return total


# -- the writer ---------------------------------------------------------------------------------

def open_for_write(shm_dir: str, arena: str, prefix: str, nbytes: int) -> tuple[BinaryIO, str]:
    """A file to write a value of about ``nbytes`` into, and its name: the smallest free slab
    of ``arena`` that fits, renamed to this writer's in-flight name, else a new file."""
    name = f"{prefix}-{uuid.uuid4().hex}.arrow"
    path = os.path.join(shm_dir, name)
    for slab in _fitting_slabs(shm_dir, arena, nbytes):
        try:
            os.rename(os.path.join(shm_dir, slab), path)
        except FileNotFoundError:  # removed meanwhile (a reclaim): try the next one
            continue
        return open(os.open(path, os.O_RDWR), "r+b", buffering=0), name
    return open(os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600), "r+b",
                buffering=0), name


def _fitting_slabs(shm_dir: str, arena: str, nbytes: int) -> list[str]:
    start = arena + "-"
    sized = []
    with os.scandir(shm_dir) as entries:
        for e in entries:
            if e.name.startswith(start) and e.name.endswith(".free"):
                try:
                    size = e.stat().st_size
                except FileNotFoundError:
                    continue
                if size >= nbytes:
                    sized.append((size, e.name))
    return [name for _size, name in sorted(sized)]


# -- the receiver -------------------------------------------------------------------------------

class Holder:
    """The mapping of one received file, kept alive by every buffer read from it; frees
    (or unlinks) the file when the last of them goes."""

    __slots__ = ("buffer", "path", "shm_dir", "arena", "cap", "lent", "__weakref__")

    def __init__(self, buffer: Any, path: str, shm_dir: str, arena: str, cap: int) -> None:
        self.buffer, self.path, self.shm_dir, self.arena, self.cap = \
            buffer, path, shm_dir, arena, cap
        self.lent = False

    def __del__(self) -> None:
        try:
            if not self.lent and free_bytes(self.shm_dir) + os.stat(self.path).st_size \
                    <= self.cap:
                os.rename(self.path, os.path.join(
                    self.shm_dir, f"{self.arena}-{uuid.uuid4().hex}.free"))
            else:
                os.unlink(self.path)
        except (FileNotFoundError, TypeError):  # reclaimed meanwhile, or interpreter exit
            pass


def receive(pa: Any, shm_dir: str, name: str, length: int, arena: str | None, receiver: str,
            cap: int) -> tuple[Any, Holder | None]:
    """The first ``length`` bytes of file ``name`` as a read-only pyarrow Buffer, and its
    holder (None for a file that is unlinked at once).

    ``arena``: the writer's arena, for a file that goes back to it once the buffer (and
    everything read from it) is gone; None for a file that is unlinked at once."""
    path = os.path.join(shm_dir, name)
    with open(path, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if not 0 < length <= size:
            raise ValueError(f"a shared-memory value says it has {length} bytes, its file "
                             f"has {size}")
        mapping = mmap.mmap(f.fileno(), length, mmap.MAP_SHARED, mmap.PROT_READ)
    buffer = pa.py_buffer(mapping)
    if arena is None:
        os.unlink(path)
        return buffer, None
    held = os.path.join(shm_dir, f"{receiver}@{arena}-{uuid.uuid4().hex}")
    os.rename(path, held)
    holder = Holder(buffer, held, shm_dir, arena, cap)
    return pa.foreign_buffer(buffer.address, buffer.size, base=holder), holder


def remember(value: Any, holder: Holder) -> None:
    """``value`` was read from ``holder``'s file (by :func:`receive`): it may be lent later."""
    key = id(value)

    def forget(_ref: Any) -> None:
        with _lock:
            if _held.get(key, (None,))[0] is ref:
                del _held[key]

    ref = weakref.ref(value, forget)
    with _lock:
        _held[key] = (ref, holder)


def lend(value: Any, shm_dir: str, prefix: str) -> tuple[str, int] | None:
    """A new name, and the length, of the file that ``value`` was received in (same run
    directory), for the next receiver to map and unlink; None when it came otherwise."""
    with _lock:
        entry = _held.get(id(value))
    if entry is None or entry[0]() is not value or entry[1].shm_dir != shm_dir:
        return None
    holder = entry[1]
    name = f"{prefix}-{uuid.uuid4().hex}.arrow"
    try:
        os.link(holder.path, os.path.join(shm_dir, name))
    except OSError:  # its writer died and the file was removed: send it the usual way
        return None
    holder.lent = True
    return name, holder.buffer.size
