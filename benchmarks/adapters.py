"""Benchmark-only Kernelpit tools (module ``benchmarks.adapters``).

Workers import this module by name, so the repository root must be on their
``sys.path``: the suite passes ``path=[<repo root>]`` to ``kernelpit.Pool``.

Payload tools keep what they built in a per-worker cache, so after the
warm-up call a timed call measures moving the result, not building it.
"""

from __future__ import annotations

import time

from kernelpit.kernels import progress, tool

from . import payloads


@tool(thread_safe=True, idempotent=True)
def noop() -> None:
    """Do nothing (call overhead)."""


@tool
def nap(seconds: float = 0.05) -> None:
    """Sleep ``seconds``: a call of known duration (S10's heavy tenant)."""
    time.sleep(seconds)


@tool(thread_safe=True, idempotent=True)
def inc(x: int) -> int:
    """x + 1: one small item of a map."""
    return x + 1


@tool
def spin(seconds: float = 30.0) -> int:
    """Busy-loop in Python (a busy worker to kill in the crash scenario)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def _make_spin(i: int):
    def spin_n(seconds: float = 30.0) -> int:
        return spin(seconds)
    spin_n.__name__ = spin_n.__qualname__ = f"spin{i}"
    spin_n.__doc__ = f"spin() under another name: crash repeat {i} of scenario 5."
    return tool(name=f"spin{i}")(spin_n)


# The pool quarantines a tool that crashed 3 workers within a minute; scenario 5 kills a
# worker on purpose in every repeat, so each repeat uses its own tool name.
for _i in range(10):
    globals()[f"spin{_i}"] = _make_spin(_i)
del _i


@tool
def progress_ts(n: int = 10_000) -> int:
    """Emit ``n`` progress events as fast as possible, each carrying ``time.monotonic()`` at its
    ``progress()`` call as its message (the clock every process on the host shares)."""
    for i in range(n):
        progress(i + 1, n, repr(time.monotonic()))
    return n


@tool(thread_safe=True)
def payload_bytes(nbytes: int) -> bytes:
    """A ``bytes`` result of ``nbytes`` bytes."""
    return payloads.make_bytes(nbytes)


@tool(thread_safe=True)
def payload_table(nbytes: int) -> dict:
    """A numeric table of ~``nbytes`` of float64 data: 4 columns as lists of floats."""
    return payloads.make_table(nbytes)


@tool(thread_safe=True)
def payload_arrow(nbytes: int):
    """A pyarrow Table of ~``nbytes`` of float64 data (travels as Arrow IPC, by reference)."""
    return payloads.make_arrow(nbytes)


@tool(thread_safe=True)
def arrow_size(table) -> int:
    """Receive a pyarrow Table argument (by reference above 1 MB) without touching its data."""
    return payloads.arrow_nbytes(table)


@tool(thread_safe=True)
def drop_payloads() -> int:
    """Free the payload cache of this worker."""
    return payloads.clear()


@tool(thread_safe=True)
def getpid() -> int:
    import os
    return os.getpid()
