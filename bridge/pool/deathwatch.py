"""Notice a kernel process exit the moment it happens.

On Linux a pidfd becomes readable when the process exits, so the event loop
learns of a ``kill -9`` without polling.  Elsewhere a 100 ms poll stands in.
"""

from __future__ import annotations

import asyncio
import os
from typing import Callable

import psutil


def watch(pid: int, on_exit: Callable[[], None]) -> Callable[[], None]:
    """Call ``on_exit()`` once when process ``pid`` exits; returns a function that stops watching."""
    loop = asyncio.get_running_loop()
    try:
        fd = os.pidfd_open(pid)
    except (AttributeError, OSError):
        return _poll(loop, pid, on_exit)

    def ready() -> None:
        stop()
        on_exit()

    def stop() -> None:
        nonlocal fd
        if fd >= 0:
            loop.remove_reader(fd)
            os.close(fd)
            fd = -1

    loop.add_reader(fd, ready)
    return stop


def _poll(loop: asyncio.AbstractEventLoop, pid: int, on_exit: Callable[[], None]) -> Callable[[], None]:
    handle: asyncio.TimerHandle | None = None

    def check() -> None:
        nonlocal handle
        try:
            alive = psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
        except psutil.NoSuchProcess:
            alive = False
        if alive:
            handle = loop.call_later(0.1, check)
        else:
            handle = None
            on_exit()

    handle = loop.call_later(0.1, check)

    def stop() -> None:
        if handle is not None:
            handle.cancel()

    return stop
