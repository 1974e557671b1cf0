"""Reuse freed heap memory in Kernelpit's own processes: the workers and the bridge.

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
``MALLOC_TRIM_THRESHOLD_`` keeps those.  A caller's own process (an embedded pool, a
client) is never tuned: its allocator is its owner's business.
"""

from __future__ import annotations

import ctypes
import os
import sys

MMAP_THRESHOLD = 32 << 20  # glibc's upper bound for M_MMAP_THRESHOLD on 64-bit
TRIM_THRESHOLD = 32 << 20  # free memory kept at the top of a heap: a few large messages
_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # from <malloc.h>
_ENV = ("MALLOC_MMAP_THRESHOLD_", "MALLOC_TRIM_THRESHOLD_")


def keep_freed_memory() -> bool:
    """Set this process's malloc thresholds as the module says; True when they were set
    (False off glibc, or when the environment sets them)."""
    if not sys.platform.startswith("linux") or any(k in os.environ for k in _ENV):
        return False
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the interpreter's own libc (no ldconfig lookup)
    except (OSError, AttributeError):  # not glibc (musl has no mallopt)
        return False
    mallopt.argtypes, mallopt.restype = [ctypes.c_int, ctypes.c_int], ctypes.c_int
    return bool(mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
