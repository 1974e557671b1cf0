"""Tools for the Ray-placed pool tests: where a worker runs, and values from there."""

import os
import time

from kernelpit.kernels import progress, session_state, tool

STATE = {"calls": 0}


@tool
def where() -> dict:
    """The node this worker is on, how it reaches the pool, and its pid there."""
    STATE["calls"] += 1
    return {"node": os.environ.get("KERNELPIT_NODE_ID"), "pid": os.getpid(),
            "shm": bool(os.environ.get("KERNELPIT_SHM_DIR")),
            "channel": "tcp" if not os.environ.get("KERNELPIT_SHM_DIR")
            and os.environ.get("KERNELPIT_TCP_ENDPOINT") else "unix"}


@tool
def counted(n: int = 4):
    """Progress 1..n, each followed by a line (so none is coalesced away), then n."""
    for i in range(1, n + 1):
        progress(i, n, f"step {i}")
        print(f"step {i}")
    return n


@tool
def keep(value: int) -> int:
    """Adds ``value`` to this session's total (session_state) and returns it."""
    state = session_state()
    state["total"] = state.get("total", 0) + value
    return state["total"]


@tool
def table(mb: int = 100):
    """A pyarrow Table of about ``mb`` MB of int64."""
    import numpy as np
    import pyarrow as pa

    rows = mb * 2**20 // 8 // 4
    base = np.arange(rows, dtype=np.int64)
    return pa.table({f"c{i}": base + i for i in range(4)})


@tool
def nap(seconds: float = 30.0) -> float:
    """Sleeps in Python (a cancel or an interrupt stops it)."""
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.05)
    return seconds


@tool(idempotent=True)
def nap_idempotent(seconds: float = 30.0) -> dict:
    """Sleeps, then says where it ran: retried elsewhere when its worker is lost."""
    time.sleep(seconds)
    return where()


@tool
def env(name: str) -> str | None:
    """An environment variable of this worker."""
    return os.environ.get(name)
