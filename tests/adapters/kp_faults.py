"""Tools for the crash-barrier tests: a call that freezes its worker, and one that runs beside
it on the same worker (both thread-safe, so that two calls share one worker)."""

import os
import signal

from kernelpit.kernels import tool


@tool(thread_safe=True)
def ts_freeze() -> None:
    """Stop this whole worker process (SIGSTOP), again should anything continue it."""
    while True:
        os.kill(os.getpid(), signal.SIGSTOP)


@tool(thread_safe=True)
def ts_size(array) -> int:
    """The number of elements of an array (sent by shared memory when large)."""
    return int(array.size)
