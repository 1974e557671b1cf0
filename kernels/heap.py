"""Reuse freed heap memory: the workers' and the bridge's, and a client's heap top.

glibc's malloc serves a block above its mmap threshold (128 KiB at first, raised after a
free up to the size of the block freed) with a fresh mapping, and gives the top of the
heap back to the kernel once more than twice that is free.  Either way the next message of
that size lands on fresh pages, and every page costs a fault on first touch.  A call whose
result is a few MB allocates and frees several such buffers on each side of each socket
(the frames, the protobuf message, its serialized bytes), and a message a little larger
than the last one freed misses the raised threshold every time.  On the 2-core VMs where
this was measured, faults cost more than the copies themselves: a 1 MB ``bytes`` result
took 10.7 ms through the bridge over gRPC, and 6.3-6.6 ms with this tuning in the bridge
and its workers (docs/performance.md, S7).

So the workers and the ``kernelpit serve`` process keep blocks up to ``MMAP_THRESHOLD`` on
the heap and keep up to ``KEEP`` of free memory per malloc arena for the next message or
call (a 100 MB table of floats is about 210 MB of packing buffers in its worker per call:
52,000 faults and 170 ms of system time each time on that VM, nearly none once kept).  What
they keep goes back to the system once the process has been idle for ``IDLE_SECONDS``
(under ``IDLE_CPU`` of its CPU time): a daemon thread looks every half of that and calls
``malloc_trim``, as an allocator's decay returns idle memory.  So a process's RSS carries
the memory of its last large values only while it keeps working, and a worker whose RSS
is over its pool's ``max_memory`` gives it back (:func:`give_back`) before the pool decides
to recycle it.  Larger blocks still get their own mapping and go back to the system when
freed; the large-frame paths reuse their buffers themselves (:mod:`.wire`, :mod:`.arena`).
A process whose environment sets glibc's own ``MALLOC_MMAP_THRESHOLD_`` or
``MALLOC_TRIM_THRESHOLD_`` keeps those.

A client's process (``kernelpit.connect``) is its user's, so its thresholds stay glibc's;
only the heap's top pad is raised to ``CLIENT_TOP_PAD`` (:func:`pad_heap_top`): glibc then
grows a heap by that much more than it needs and keeps that much free when it trims, so
that receiving the next result of a few MB (gRPC's buffers, the message, the value) reuses
the pages of the last one instead of faulting new ones.  A 1 MB result over gRPC: 5.2-6.4
ms without it, 3.7-3.9 ms with it, on this kind of VM.  It costs at most that much memory
per heap, and ``MALLOC_TOP_PAD_`` in the environment keeps glibc's own setting (its
default is 128 KiB).
"""

from __future__ import annotations

import ctypes
import functools
import os
import sys
import threading
import time
from typing import Any

MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
KEEP = 256 << 20  # free memory a heap keeps: the buffers of a large value, for the next one
IDLE_SECONDS = 10.0  # a process idle this long gives back what its heaps keep ...
IDLE_CPU = 0.05  # ... idle: it used less than this share of one CPU over that time (an idle
# bridge checking the health of 4 workers uses about 1 %)
_WORKED = 0.005  # s of CPU in one look's time: this process did something, perhaps freed memory
CLIENT_TOP_PAD = 16 << 20  # a client's heaps: room for the buffers of a result of a few MB
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # from <malloc.h>
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")
_trimming: threading.Thread | None = None  # this process's idle trim, once started


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds as the module says, and give what they keep
    back once it is idle; True when they were set (False off glibc, or when the
    environment sets them)."""
    global _trimming
    if any(k in os.environ for k in _ENV):
        return False
    mallopt, trim = _mallopt(), _malloc_trim()
    if mallopt is None or trim is None or not (mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                                               and mallopt(_M_TRIM_THRESHOLD, KEEP)):
        return False
    if _trimming is None:
        _trimming = threading.Thread(target=_trim_when_idle, daemon=True,
                                     name="kernelpit-heap-trim")
        _trimming.start()
    return True


def give_back() -> None:
    """Give what this process's heaps keep free back to the system now: once idle, and when
    a pool asks a worker whose RSS is over ``max_memory`` (only memory in use counts)."""
    trim = _malloc_trim()
    if trim is not None:
        trim(0)


def _trim_when_idle() -> None:
    """Every IDLE_SECONDS / 2: when this process has worked since it last gave memory back
    (used over ``_WORKED`` s of CPU in one look's time) and has now used under IDLE_CPU of
    a CPU over the last IDLE_SECONDS, give what its heaps keep back."""
    looks = [time.process_time()]  # CPU time at the last looks: the window's ends
    worked = True
    while True:
        time.sleep(IDLE_SECONDS / 2)
        looks = (looks + [time.process_time()])[-3:]
        worked = worked or looks[-1] - looks[-2] > _WORKED
        if worked and len(looks) == 3 and looks[-1] - looks[0] < IDLE_CPU * IDLE_SECONDS:
            give_back()
            worked = False


def pad_heap_top() -> bool:
    """Raise this process's heap top pad to ``CLIENT_TOP_PAD`` (a client's process, see the
    module's docstring); True when it was set (False off glibc, or when the environment
    sets ``MALLOC_TOP_PAD_``)."""
    if "MALLOC_TOP_PAD_" in os.environ:
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_TOP_PAD, CLIENT_TOP_PAD))


def _mallopt() -> Any:
    """glibc's ``mallopt``, or None where there is none."""
    mallopt = _glibc("mallopt")
    if mallopt is not None:
        mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt


def _malloc_trim() -> Any:
    """glibc's ``malloc_trim``, or None where there is none."""
    trim = _glibc("malloc_trim")
    if trim is not None:
        trim.argtypes, trim.restype = [ctypes.c_size_t], ctypes.c_int
    return trim


@functools.lru_cache(maxsize=None)
def _glibc(name: str) -> Any:
    """A function of the interpreter's own libc (no ldconfig lookup), or None off glibc."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        return getattr(ctypes.CDLL(None), name)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
