"""Reads a call's event stream in a task, so ready events can be sent in batches.

While the client is behind (the gRPC stream's flow control holds the writes back), the
events wait in a :class:`~kernelpit.backlog.AsyncBacklog`: progress coalesces there, so the
client gets the latest progress next instead of a queue of stale ones.
"""

from __future__ import annotations

import asyncio
from typing import AsyncIterator

from ..backlog import AsyncBacklog
from ..events import Event

MAX_BATCH = 1024
_END = object()


class EventPump:
    """Drains an async event stream into a queue; :meth:`next_batch` takes all that is ready."""

    def __init__(self, stream: AsyncIterator[Event]) -> None:
        self._stream = stream
        self._queue: AsyncBacklog[object] = AsyncBacklog()
        self._task = asyncio.ensure_future(self._run())
        self.finished = False

    async def _run(self) -> None:
        put = self._queue.put_nowait
        try:
            async for event in self._stream:
                put(event)
        except Exception as exc:  # noqa: BLE001 - handed to the reader as a failure
            put(exc)
        finally:
            put(_END)

    async def next_batch(self) -> tuple[list[Event], BaseException | None]:
        """(events, failure): at least one item; the failure, if any, ends the stream."""
        queue = self._queue
        item = await queue.get()
        batch: list[Event] = []
        while True:
            if item is _END:
                self.finished = True
                return batch, None
            if isinstance(item, BaseException):
                self.finished = True
                return batch, item
            batch.append(item)  # type: ignore[arg-type]
            if queue.empty() or len(batch) >= MAX_BATCH:
                return batch, None
            item = queue.get_nowait()

    def close(self) -> None:
        """Stop reading; cancels the call if it has not finished."""
        if not self._task.done():
            self._task.cancel()
