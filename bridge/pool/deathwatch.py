"""Notice a kernel process exit the moment it happens.

On Linux a pidfd becomes readable when the process exits, so the event loop
learns of a ``kill -9`` without polling.  Elsewhere a 100 ms poll stands in.

A kernel placed on another machine has no pid here: :func:`watch_provisioner` waits
on its provisioner instead (the Ray provisioner's ``exited()``, one actor call that
returns when the kernel ends or fails when its actor or node is lost; any other
provisioner's ``poll()`` twice a second).
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from typing import Any, Callable

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


PROVISIONER_POLL = 0.5  # seconds between polls of a provisioner without ``exited()``


def watch_provisioner(provisioner: Any,
                      on_exit: Callable[[int | None, str | None], None]) -> Callable[[], None]:
    """Call ``on_exit(code, lost_reason)`` once when a provisioner's kernel ends; returns a
    function that stops watching.  ``lost_reason`` is what the provisioner reported when the
    kernel went with its node or host (``provisioner.lost_reason``), else None."""
    async def wait() -> None:
        exited = getattr(provisioner, "exited", None)
        if exited is not None:
            code = await exited()
        else:
            while (code := await provisioner.poll()) is None:
                await asyncio.sleep(PROVISIONER_POLL)
        on_exit(code, getattr(provisioner, "lost_reason", None))

    task = asyncio.ensure_future(wait())

    def stop() -> None:
        task.cancel()
        with contextlib.suppress(BaseException):
            task.exception() if task.done() else None

    return stop
