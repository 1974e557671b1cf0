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
the heap and keep up to ``TRIM_THRESHOLD`` of free memory per malloc arena for the next
message.  Larger blocks still get their own mapping and go back to the system when freed;
the large-frame paths reuse their buffers themselves (:mod:`.wire`, :mod:`.arena`).
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
import os
import sys
from typing import Any

MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 32 << 20  # free memory kept at the top of a heap: a few large messages
CLIENT_TOP_PAD = 16 << 20  # a client's heaps: room for the buffers of a result of a few MB
_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_THRESHOLD = -1, -2, -3  # from <malloc.h>
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds as the module says; True when they were set
    (False off glibc, or when the environment sets them)."""
    if any(k in os.environ for k in _ENV):
        return False
    mallopt = _mallopt()
    return mallopt is not None and bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                                        and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))


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
    if not sys.platform.startswith("linux"):
        return None
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the interpreter's own libc (no ldconfig lookup)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return None
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return mallopt
