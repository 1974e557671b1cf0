"""Start every measurement on a quiet machine.

A system keeps working for a moment after its own run: Dask's workers and
scheduler release thousands of keys after a large ``map``, ipyparallel's hub
files results.  On 2 cores that aftershock lands on whichever system is
measured next and halves its numbers for a few repeats.  So before each
scenario and each peer's or bridge's rows, :func:`settle` waits until the
whole machine has used less than ``QUIET_PERCENT`` of its CPUs for two
sampling windows in a row, or gives up after ``MAX_WAIT`` seconds; what it saw
is kept in the result's metadata.
"""

from __future__ import annotations

import time
from typing import Any

import psutil

QUIET_PERCENT = 10.0  # of all CPUs together
WINDOW = 0.1  # seconds per CPU sample
MAX_WAIT = 5.0


def settle(max_wait: float = MAX_WAIT) -> dict[str, Any]:
    """Wait until the machine is quiet; returns ``{"waited_s", "quiet", "cpu_percent"}``."""
    t0 = time.perf_counter()
    psutil.cpu_percent(None)
    calm, last = 0, 100.0
    while time.perf_counter() - t0 < max_wait:
        time.sleep(WINDOW)  # the sampling window itself: CPU use is measured over it
        last = psutil.cpu_percent(None)
        calm = calm + 1 if last < QUIET_PERCENT else 0
        if calm >= 2:
            break
    return {"waited_s": round(time.perf_counter() - t0, 3), "quiet": calm >= 2,
            "cpu_percent": last}
