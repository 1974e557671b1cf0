"""An asyncio handle its program forgot to close is closed when its event loop ends.

``asyncio.run()`` ends its loop in three steps: it cancels the tasks left, closes the
async generators still open on the loop (``loop.shutdown_asyncgens()``), and closes the
loop.  A :class:`LoopEnd` is such a generator, kept by an open handle (an embedded
``kernelpit.aio.Pool`` or a client from ``kernelpit.aio.connect()``): if the handle is
still open at the second step, it warns (``ResourceWarning``, as an unclosed file does) and
closes the handle there, on its own loop while that still runs.  So the pool's kernels
stop with the loop rather than with the process, and a client's gRPC channel closes
before its loop does; without that, gRPC's poller stays bound to the closed loop and
prints ``RuntimeError: Event loop is closed`` as soon as the process's next loop uses
gRPC (a second ``asyncio.run()``).

A handle that goes out of reference unclosed while its loop runs is closed the same way,
on that loop.  Loops that end without ``shutdown_asyncgens()`` (a blocking pool's own
loop thread, which closes its handle itself) are left alone.
"""

from __future__ import annotations

import asyncio
import sys
import warnings
from typing import Any, AsyncGenerator, Awaitable, Callable


class LoopEnd:
    """Runs ``close`` at the end of the running loop, unless :meth:`release` came first.

    Made on the loop's thread while the loop runs (in the handle's start).  ``what`` names
    the handle in the warning.
    """

    def __init__(self, close: Callable[[], Awaitable[None]], what: str) -> None:
        self._close: Callable[[], Awaitable[None]] | None = close
        self._what = what
        self._when = "as its event loop ends"
        self._loop = asyncio.get_running_loop()
        self._watch: AsyncGenerator[None, None] | None = self._watching()
        # The first step registers the generator with the loop (the firstiter hook), so
        # that shutdown_asyncgens() finds it; it is taken here, synchronously, with a
        # finalizer of our own for a handle dropped unclosed (see _finalize).
        firstiter, finalizer = sys.get_asyncgen_hooks()
        sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=self._finalize)
        try:
            self._watch.asend(None).send(None)  # type: ignore[attr-defined]
        except StopIteration:
            pass  # it waits at its yield now
        finally:
            sys.set_asyncgen_hooks(firstiter=firstiter, finalizer=finalizer)

    async def _watching(self) -> AsyncGenerator[None, None]:
        try:
            yield
        finally:  # GeneratorExit: the loop is ending (or the handle was dropped)
            close, self._close = self._close, None
            if close is not None:
                warnings.warn(f"{self._what} was not closed; it is closed now, {self._when}. "
                              "Use `async with` or `await ….close()` to close it when you are "
                              "done with it", ResourceWarning, stacklevel=2)
                await close()

    def _finalize(self, watch: Any) -> None:
        """The generator was collected before it finished (its handle dropped unclosed):
        finish it on its loop if that still runs; on a closed loop there is nothing left to
        close it with (asyncio's own finalizer would raise there)."""
        loop = self._loop
        self._when = "as nothing refers to it any more"
        if not loop.is_closed():
            loop.call_soon_threadsafe(loop.create_task, watch.aclose())

    async def release(self) -> None:
        """The handle is being closed by its program: nothing is left for the loop's end."""
        self._close = None
        watch, self._watch = self._watch, None
        if watch is not None and not watch.ag_running:
            await watch.aclose()
