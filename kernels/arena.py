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
                                of the call that carried it, removes it; a message that
                                fails before it is sent gives it back at once)
``<receiver>@<arena>-<id>``     received: mapped by ``receiver`` (its death removes it)
``<arena>-<id>.free``           a free slab of ``arena`` (the writer's pool of pages; the
                                death of the worker owning ``arena`` removes it)
==============================  =========================================================

Each step is a ``rename`` (atomic).  A receiver keeps its mapping while any buffer of the
value lives (:class:`Holder`, the base of every buffer); when the last one goes, the file
becomes a free slab, or is unlinked when the run's free slabs would pass the cap
(``KERNELPIT_SHM_ARENA`` bytes, default 2 GiB); to stay under it, the slabs freed longest
ago are removed first (:func:`make_room`).  A file that was removed meanwhile (its
writer died) is simply gone: its pages go with the last mapping.

Lending: a table received this way and passed on (as an argument, or by the bridge to a
client on its machine) is not written again.  Its file gets a second name (a hard link,
``<writer>-<id>.arrow``) that the next receiver holds as any other.  Every process that
maps the file holds a name of it, so the link count says who is last: a holder that drops
its value unlinks its own name while other names remain, and the last one frees the file
to its arena.  So pages that another process maps are never rewritten, and a value passed
along a chain of processes still goes back to its writer's arena at the end.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import mmap
import os
import re
import threading
import uuid
import weakref
from typing import Any, Callable, Iterator

DEFAULT_CAP = 2 << 30
_NAME = re.compile(r"[A-Za-z0-9]+\Z")
_lock = threading.Lock()
_held: dict[int, tuple["weakref.ref[Any]", "Holder"]] = {}  # id(table) -> (table, its file)


def valid_name(name: str) -> bool:
    """An arena or writer name: letters and digits only (it becomes part of file names)."""
    return bool(_NAME.match(name))


def make_room(shm_dir: str, size: int, cap: int) -> bool:
    """Whether a slab of ``size`` bytes may be freed under the run's ``cap``, after removing
    the free slabs that were freed longest ago until it fits: the slab just used is the one
    its writer most likely needs next (a large value sent again and again), an old one of
    another size or arena the least."""
    if size > cap:
        return False
    slabs = []
    try:
        with os.scandir(shm_dir) as entries:
            for e in entries:
                if e.name.endswith(".free"):
                    try:
                        st = e.stat()
                    except FileNotFoundError:
                        continue
                    slabs.append((st.st_ctime_ns, st.st_size, e.path))  # ctime: when freed
    except FileNotFoundError:
        return False
    total = sum(n for _, n, _ in slabs)
    for _, n, path in sorted(slabs):
        if total + size <= cap:
            break
        try:
            os.unlink(path)
        except FileNotFoundError:  # taken by its writer meanwhile: no longer free anyway
            pass
        total -= n
    return total + size <= cap


# -- the writer ---------------------------------------------------------------------------------

#: madvise(MADV_POPULATE_WRITE), Linux 5.14: page tables made writable in one call
MADV_POPULATE_WRITE = getattr(mmap, "MADV_POPULATE_WRITE", 23)
_maps: dict[int, tuple[str, mmap.mmap]] = {}  # inode -> (run dir, this writer's mapping of it)


def write(shm_dir: str, arena: str, prefix: str, size: int,
          into_mapping: Callable[[mmap.mmap], None],
          into_file: Callable[[Any], None]) -> str | None:
    """Write a value of exactly ``size`` bytes into the smallest free slab of ``arena`` that
    fits, renamed to this writer's in-flight name, or into a new file; returns the file's
    name, or None when shared memory has no room for it (it is full, ``ENOSPC``, or the
    file would pass this process's file size limit, ``EFBIG``): the value can still go
    inline.  ``into_mapping(mapping)`` writes it into a slab this writer mapped before,
    ``into_file(f)`` into an unbuffered file object.

    A slab this writer mapped before is written through that mapping: a memcpy into pages
    that exist and are mapped (12-23 GB/s for 1 GB on this 2-core VM, two copy threads).
    A new file is written with ``write()`` (faster than faulting fresh pages in through a
    mapping), then mapped and its page tables filled on a thread, off the caller's path,
    for the next value.  A file that cannot be written whole is removed, so a full
    ``/dev/shm`` keeps no part of it."""
    name = f"{prefix}-{uuid.uuid4().hex}.arrow"
    path = os.path.join(shm_dir, name)
    try:
        _write(shm_dir, arena, size, path, into_mapping, into_file)
    except BaseException as exc:  # the part written must not hold the room
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(exc, OSError) and exc.errno in (errno.ENOSPC, errno.EFBIG):
            return None
        raise
    return name


def _write(shm_dir: str, arena: str, size: int, path: str,
           into_mapping: Callable[[mmap.mmap], None], into_file: Callable[[Any], None]) -> None:
    free, present = _scan(shm_dir, arena, size)
    _unmap_gone(present)
    for capacity, slab, inode in free:
        try:
            os.rename(os.path.join(shm_dir, slab), path)
        except FileNotFoundError:  # removed meanwhile (a reclaim): try the next one
            continue
        mapping = _maps.get(inode, (None, None))[1]
        if mapping is None or len(mapping) < size:
            break  # not mapped here (yet): written like a new file, below
        into_mapping(mapping)
        return
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    with open(fd, "r+b", buffering=0) as f:
        into_file(f)
        threading.Thread(target=_map, args=(shm_dir, os.dup(fd)), daemon=True,
                         name="kernelpit-arena-map").start()


def write_arrow(pa: Any, shm_dir: str, arena: str, prefix: str, size: int,
                fill: Callable[[Any], None]) -> str | None:
    """:func:`write` for pyarrow's writers: ``fill(sink)`` writes the value to a pyarrow
    sink (two copy threads into a mapped slab)."""
    def into_mapping(mapping: mmap.mmap) -> None:
        buffer = pa.py_buffer(mapping)
        sink = pa.FixedSizeBufferWriter(buffer)
        sink.set_memcopy_threads(2)
        try:
            fill(sink)
        finally:
            sink.close()
            del sink, buffer

    return write(shm_dir, arena, prefix, size, into_mapping,
                 lambda f: fill(pa.PythonFile(f, mode="w")))


def _map(shm_dir: str, fd: int) -> None:
    """Map a slab just written and fill its page tables (on a thread: this takes as long as
    faulting every page in, which the next value written into it no longer pays)."""
    try:
        st = os.fstat(fd)
        if st.st_size and st.st_ino not in _maps:
            mapping = mmap.mmap(fd, st.st_size)
            try:
                mapping.madvise(MADV_POPULATE_WRITE)
            except OSError:  # an older kernel: the first value written faults them in
                pass
            _maps[st.st_ino] = (shm_dir, mapping)
    except (OSError, ValueError):
        pass
    finally:
        os.close(fd)


def _scan(shm_dir: str, arena: str, size: int) -> tuple[list[tuple[int, str, int]], set[int]]:
    """(the free slabs of ``arena`` of at least ``size`` bytes, smallest first, as
    (size, name, inode)), and the inodes of every file in the directory."""
    start = arena + "-"
    free, present = [], set()
    try:
        with os.scandir(shm_dir) as entries:
            for e in entries:
                present.add(e.inode())
                if e.name.startswith(start) and e.name.endswith(".free"):
                    try:
                        capacity = e.stat().st_size
                    except FileNotFoundError:
                        continue
                    if capacity >= size:
                        free.append((capacity, e.name, e.inode()))
    except FileNotFoundError:
        pass
    return sorted(free), present


def _unmap_gone(present: set[int]) -> None:
    """Drop the mappings of slabs that no longer exist (deleted past the cap, lent, or
    reclaimed): this mapping is all that still keeps their pages."""
    _unmap(_maps, [i for i in _maps if i not in present])


def forget(shm_dir: str) -> None:
    """Drop this process's mappings of a run's slabs, written or read: its pool closed (its
    directory goes), and the mappings would otherwise keep those pages until this process
    writes or reads again."""
    _unmap(_maps, [i for i, (d, _m) in list(_maps.items()) if d == shm_dir])
    with _reads_lock:
        _unmap(_reads, [i for i, (d, _m) in list(_reads.items()) if d == shm_dir])


def _unmap(maps: dict[int, tuple[str, mmap.mmap]], inodes: list[int]) -> None:
    for inode in inodes:
        _dir, mapping = maps.pop(inode, (None, None))
        if mapping is not None:
            try:
                mapping.close()
            except BufferError:  # still exported: it goes with its last buffer
                pass


# -- the receiver -------------------------------------------------------------------------------

class _Buffer(ctypes.Structure):  # Py_buffer, from <Python.h>
    _fields_ = [("buf", ctypes.c_void_p), ("obj", ctypes.c_void_p), ("len", ctypes.c_ssize_t),
                ("itemsize", ctypes.c_ssize_t), ("readonly", ctypes.c_int),
                ("ndim", ctypes.c_int), ("format", ctypes.c_char_p),
                ("shape", ctypes.c_void_p), ("strides", ctypes.c_void_p),
                ("suboffsets", ctypes.c_void_p), ("internal", ctypes.c_void_p)]


@contextlib.contextmanager
def exported(data: Any) -> Iterator[_Buffer]:
    """A contiguous buffer's address and length (``.buf``, ``.len``), read-only ones
    included (which ctypes' ``from_buffer`` refuses), held (exported) while in use."""
    view = _Buffer()
    ctypes.pythonapi.PyObject_GetBuffer(ctypes.py_object(data), ctypes.byref(view), 0)
    try:
        yield view
    finally:
        ctypes.pythonapi.PyBuffer_Release(ctypes.byref(view))


#: where this process's own mapping of a received file starts -> what keeps that mapping
#: (a Holder whose ``buffer`` it is, or a mapping that carries its ``holder``)
_mapped: dict[int, weakref.ref] = {}


def mapped_at(address: int, keeper: Any) -> None:
    """Note that this process's mapping of a received file starts at ``address`` and lives
    exactly as long as ``keeper`` (its :class:`Holder`, or the mapping, which carries its
    holder as ``.holder``), for :func:`read_once`.  A keeper being freed no longer answers
    (a weak reference to an object being freed is dead), so an address that another
    mapping reuses is never taken for its file."""
    def gone(ref: weakref.ref, address: int = address) -> None:
        if _mapped.get(address) is ref:
            del _mapped[address]

    _mapped[address] = weakref.ref(keeper, gone)


class Holder:
    """The mapping of one received file, kept alive by every buffer read from it; frees
    (or unlinks) the file when the last of them goes."""

    __slots__ = ("path", "size", "shm_dir", "arena", "cap", "buffer", "at", "__weakref__")

    def __init__(self, path: str, size: int, shm_dir: str, arena: str, cap: int,
                 buffer: Any = None, at: int = 0) -> None:
        self.path, self.size, self.shm_dir, self.arena, self.cap = path, size, shm_dir, arena, cap
        self.buffer = buffer  # what keeps the mapping (a pyarrow Buffer), if not its owner
        self.at = at  # where the value starts in its file

    def __del__(self) -> None:
        try:
            release(self.path, self.shm_dir, self.arena, self.cap)
        except TypeError:  # interpreter exit
            pass


def release(path: str, shm_dir: str, arena: str, cap: int) -> None:
    """A received file that this process no longer maps: back to ``arena`` as a free slab,
    or unlinked when another process still holds a name of it (the last one frees it) or
    the run's free slabs are at their cap."""
    try:
        st = os.stat(path)
        if st.st_nlink == 1 and make_room(shm_dir, st.st_size, cap):
            os.rename(path, os.path.join(shm_dir, f"{arena}-{uuid.uuid4().hex}.free"))
        else:
            os.unlink(path)
    except FileNotFoundError:  # reclaimed meanwhile
        pass


def claim(shm_dir: str, name: str, length: int, arena: str | None, receiver: str,
          kind: type[mmap.mmap] = mmap.mmap,
          access: int = mmap.ACCESS_READ) -> tuple[mmap.mmap, str | None]:
    """Map the first ``length`` bytes of file ``name`` (as a ``kind``, with ``access``) and
    take the file over: renamed to ``receiver``'s held name, whose path is returned, or
    unlinked at once when ``arena`` is None (it goes nowhere after use)."""
    path = os.path.join(shm_dir, name)
    with open(path, "rb") as f:
        _holding(f, length)
        mapping = kind(f.fileno(), length, access=access)
    return mapping, _take(path, shm_dir, arena, receiver)


def _holding(f: Any, length: int) -> os.stat_result:
    """The status of received file ``f``, which must hold the first ``length`` bytes that
    its value says it needs (ValueError otherwise)."""
    st = os.fstat(f.fileno())
    if not 0 < length <= st.st_size:
        raise ValueError(f"a shared-memory value needs the first {length} bytes of its "
                         f"file, which has {st.st_size}")
    return st


def _take(path: str, shm_dir: str, arena: str | None, receiver: str) -> str | None:
    """A received file renamed to ``receiver``'s held name (returned), or unlinked when it
    goes to no arena after use (None)."""
    if arena is None:
        os.unlink(path)
        return None
    held = os.path.join(shm_dir, f"{receiver}@{arena}-{uuid.uuid4().hex}")
    os.rename(path, held)
    return held


_reads: dict[int, tuple[str, mmap.mmap]] = {}  # inode -> (run dir, this reader's mapping of it)
_reads_lock = threading.Lock()


def copy_out(shm_dir: str, name: str, length: int, arena: str | None, receiver: str, cap: int,
             into: Callable[[mmap.mmap], None]) -> None:
    """Take file ``name`` over as :func:`claim` does, let ``into(mapping)`` copy its first
    ``length`` bytes out, and give it back at once (:func:`release`).

    The mapping of a slab is kept for the next value that comes in it (its writer reuses
    it): a fresh mapping first fills a page-table entry per page, and copying 1 GB out of
    one runs at 7-8 GB/s on the 2-core VM of docs/performance.md, out of a kept one at 14
    (two threads both).  The kept mappings of files that are gone are dropped at the next
    copy from their run, as the writer's are (:func:`_unmap_gone`), and all of a run's by
    :func:`forget`."""
    path = os.path.join(shm_dir, name)
    with open(path, "rb") as f:
        st = _holding(f, length)
        mapping = _read_mapping(f, st, shm_dir, keep=arena is not None)
    held = _take(path, shm_dir, arena, receiver)
    try:
        into(mapping)
    finally:
        if held is None:
            mapping.close()
        else:
            release(held, shm_dir, arena, cap)


def _read_mapping(f: Any, st: os.stat_result, shm_dir: str, keep: bool) -> mmap.mmap:
    """This process's read-only mapping of open file ``f`` (status ``st``): the one kept
    from the last value that came in it, or a new one, kept when ``keep`` (a slab: its
    writer sends the next value in it)."""
    with _reads_lock:
        _drop_gone_reads(shm_dir)
        mapping = _reads.get(st.st_ino, (None, None))[1]
        if mapping is None or len(mapping) != st.st_size:
            _unmap(_reads, [st.st_ino])
            mapping = mmap.mmap(f.fileno(), st.st_size, access=mmap.ACCESS_READ)
            if keep:
                _reads[st.st_ino] = (shm_dir, mapping)
    return mapping


def drop_gone() -> None:
    """Drop this process's kept mappings of files that no longer exist (a writer deleted a
    slab past its cap, or a dead worker's files were reclaimed): such a mapping is all that
    still keeps the file's pages.  Reading or copying out of a run again does this for that
    run; a process that may go a while without (a bridge between streams) calls it now and
    then."""
    with _reads_lock:
        for shm_dir in {d for d, _m in _reads.values()}:
            _drop_gone_reads(shm_dir)


def _drop_gone_reads(shm_dir: str) -> None:
    if any(d == shm_dir for d, _m in _reads.values()):
        present = _inodes(shm_dir)
        _unmap(_reads, [i for i, (d, _m) in list(_reads.items())
                        if d == shm_dir and i not in present])


def read_once(part: Any) -> Any:
    """``part`` (a buffer this process is about to read through once, whole: a bridge
    streaming a value to a gRPC client), or where it lies in a file received by mapping
    (a byte string or an Arrow table that passes through), the same bytes read through
    this process's kept mapping of that file (:func:`copy_out`'s).

    The mapping a received value came in is new, and its first reading fills a page-table
    entry per page, which took as long as the copy itself: framing 100 MB for gRPC took
    14 ms through a new mapping and 7.5 through a kept one, on the VM of
    docs/performance.md.  The view is valid while the value is: until then the file's
    writer does not reuse it."""
    if not _mapped:
        return part
    if type(part) is memoryview:
        with exported(part) as b:
            address, size = b.buf or 0, b.len
    elif hasattr(part, "address") and hasattr(part, "size"):  # a pyarrow Buffer
        address, size = part.address, part.size
    else:
        return part
    for start, ref in list(_mapped.items()):
        if start > address:
            continue
        keeper = ref()
        holder = keeper if isinstance(keeper, Holder) else getattr(keeper, "holder", None)
        if holder is not None and address + size <= start + holder.at + holder.size:
            try:
                with open(holder.path, "rb") as f:
                    st = os.fstat(f.fileno())
                    if st.st_size < address - start + size:
                        return part
                    mapping = _read_mapping(f, st, holder.shm_dir, keep=True)
            except OSError:
                return part
            return memoryview(mapping)[address - start:address - start + size]
    return part


def _inodes(shm_dir: str) -> set[int]:
    try:
        with os.scandir(shm_dir) as entries:
            return {e.inode() for e in entries}
    except FileNotFoundError:
        return set()


def receive(pa: Any, shm_dir: str, name: str, length: int, arena: str | None, receiver: str,
            cap: int) -> tuple[Any, Holder | None]:
    """The first ``length`` bytes of file ``name`` as a read-only pyarrow Buffer, and its
    holder (None for a file that is unlinked at once).

    ``arena``: the writer's arena, for a file that goes back to it once the buffer (and
    everything read from it) is gone; None for a file that is unlinked at once."""
    mapping, held = claim(shm_dir, name, length, arena, receiver)
    buffer = pa.py_buffer(mapping)
    if held is None or arena is None:
        return buffer, None
    holder = Holder(held, length, shm_dir, arena, cap, buffer)
    mapped_at(buffer.address, holder)
    return pa.foreign_buffer(buffer.address, buffer.size, base=holder), holder


def remember(value: Any, holder: Holder) -> None:
    """``value`` was read from ``holder``'s file (mapped, not copied): it may be lent later."""
    key = id(value)

    def forget(_ref: Any) -> None:
        with _lock:
            if _held.get(key, (None,))[0] is ref:
                del _held[key]

    ref = weakref.ref(value, forget)
    with _lock:
        _held[key] = (ref, holder)


def lend(value: Any, shm_dir: str, prefix: str) -> dict[str, Any] | None:
    """The reference fields of a marker for the file that ``value`` was received in (same
    run directory), under a new name for the next receiver to hold: ``shm`` (the name),
    ``len``, ``a`` (the arena) and, for a value that does not start the file, ``off``;
    None when it came otherwise."""
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
    return reference(name, holder.size, holder.arena, holder.at)


def reference(name: str, length: int, arena: str, at: int = 0) -> dict[str, Any]:
    """A by-reference value's marker fields: its file, its length, its writer's arena, and
    where in the file it starts when that is not the beginning."""
    fields: dict[str, Any] = {"shm": name, "len": length, "a": arena}
    if at:
        fields["off"] = at
    return fields
