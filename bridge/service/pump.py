"""Reads a call's event stream in a task, so ready events can be sent in batches.

While the client is behind, the events wait here in a :class:`~kernelpit.backlog.AsyncBacklog`,
where progress coalesces, so the client gets the latest progress next instead of a queue of
stale ones.  gRPC does not tell the bridge that a client is behind: a written message waits
in gRPC's buffers on either side, where nothing coalesces, until the client reads it (a flood
measured 40 to 150 ms of such lag).  So a message that holds nothing but progress goes out at
most every :data:`PROGRESS_EVERY` seconds per stream (progress made meanwhile coalesces, and
what goes is the latest); any other event goes at once, with the progress before it.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..backlog import AsyncBacklog
from ..events import Event, Progress

MAX_BATCH = 1024
PROGRESS_EVERY = 0.002  # 500 progress updates a second per stream: more than any bar can show
_END = object()


class EventPump:
    """Drains an async event stream into a queue; :meth:`next_batch` takes all that is ready."""

    def __init__(self, stream: AsyncIterator[Event]) -> None:
        self._stream = stream
        self._queue: AsyncBacklog[object] = AsyncBacklog()
        self._task = asyncio.ensure_future(self._run())
        self._progress_due = 0.0  # loop time before which a progress-only batch waits
        self.finished = False

    async def _run(self) -> None:
        put = self._queue.put_nowait
        try:
            async for event in self._stream:
                put(event)
                del event  # not held by this frame (and a cancellation's traceback) meanwhile
        except Exception as exc:  # noqa: BLE001 - handed to the reader as a failure
            put(exc)
        finally:
            put(_END)

    async def next_batch(self) -> tuple[list[Event], BaseException | None]:
        """(events, failure): at least one item; the failure, if any, ends the stream."""
        queue = self._queue
        await queue.wait()
        loop = asyncio.get_running_loop()
        if len(queue) == 1 and type(queue.peek()) is Progress:  # progress alone: paced
            delay = self._progress_due - loop.time()
            if delay > 0:
                await asyncio.sleep(delay)
        batch: list[Event] = []
        item = queue.get_nowait()
        while True:
            if item is _END:
                self.finished = True
                return batch, None
            if isinstance(item, BaseException):
                self.finished = True
                return batch, item
            batch.append(item)  # type: ignore[arg-type]
            if type(item) is Progress:
                self._progress_due = loop.time() + PROGRESS_EVERY
            if queue.empty() or len(batch) >= MAX_BATCH:
                return batch, None
            item = queue.get_nowait()

    def close(self) -> None:
        """Stop reading; cancels the call if it has not finished."""
        if not self._task.done():
            self._task.cancel()
