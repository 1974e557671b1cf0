"""Tools of the fairness tests: calls that say when they start, and wait for a gate."""

import time
from pathlib import Path

from kernelpit.kernels import tool


@tool
def mark(tag: str, log: str, gate: str = "") -> str:
    """Append ``tag`` to the file ``log`` as the call starts; then, with ``gate``, wait
    until that file exists (60 s at most)."""
    with open(log, "a") as f:
        f.write(tag + "\n")
    if gate:
        end = time.monotonic() + 60
        while not Path(gate).exists() and time.monotonic() < end:
            time.sleep(0.005)
    return tag


@tool(idempotent=True)
def work(n: int, seconds: float = 0.01) -> int:
    """Return ``n`` after ``seconds`` (safe to run again after a crash)."""
    time.sleep(seconds)
    return n
