"""Choosing a worker for a call, and the bounded FIFO of calls that wait for one."""

from __future__ import annotations

import asyncio
from collections import deque
from typing import Iterable

from ..exceptions import PoolClosed, QueueFull
from .call import Call
from .state import WorkerBase as Worker


def pick(workers: Iterable[Worker], call: Call) -> Worker | None:
    """The least-loaded worker that can take ``call`` now (its pinned worker, if any)."""
    best: Worker | None = None
    for w in workers:
        if call.pinned is not None and w.id != call.pinned:
            continue
        if not w.can_take(call):
            continue
        if best is None or (len(w.inflight), w.sessions, w.calls) < (
                len(best.inflight), best.sessions, best.calls):
            best = w
    return best


class WaitQueue:
    """What waits for a worker, at most ``bound`` entries: calls, first in first out, and
    sessions being opened while no worker serves (woken together when one does)."""

    def __init__(self, bound: int, pool: str) -> None:
        self.bound = bound
        self.pool = pool
        self._calls: deque[Call] = deque()
        self.openers: list[asyncio.Future[None]] = []  # sessions waiting for a serving worker

    def __len__(self) -> int:
        return len(self._calls) + len(self.openers)

    def _full(self, what: str, tool: str | None) -> QueueFull:
        return QueueFull(
            f"pool '{self.pool}': {what} and {self.bound} calls are already waiting "
            f"(queue_size={self.bound}); raise queue_size or add workers", tool=tool)

    def push(self, call: Call) -> int:
        """Queue ``call``; returns its position.  Raises QueueFull at the bound."""
        if len(self._calls) + len(self.openers) >= self.bound:
            raise self._full("all workers are busy", call.tool)
        self._calls.append(call)
        return len(self._calls) - 1

    def wait_for_worker(self) -> asyncio.Future[None]:
        """A future that resolves when a worker starts serving (:meth:`wake`); a session
        opener's place in the queue.  Raises QueueFull at the bound.  Pair with
        :meth:`stop_waiting`."""
        if len(self) >= self.bound:
            raise self._full("no worker is ready to hold a session", None)
        fut = asyncio.get_running_loop().create_future()
        self.openers.append(fut)
        return fut

    def stop_waiting(self, fut: asyncio.Future[None]) -> None:
        if fut in self.openers:
            self.openers.remove(fut)

    def wake(self) -> None:
        """A worker serves now: every session opener looks again."""
        for fut in self.openers:
            if not fut.done():
                fut.set_result(None)
        self.openers.clear()

    def close(self) -> None:
        """The pool closes: everything still waiting fails with PoolClosed."""
        message = "the pool was closed while this was waiting for a worker"
        for call in list(self._calls):
            call.fail(PoolClosed(message))
        self._calls.clear()
        for fut in self.openers:
            if not fut.done():
                fut.set_exception(PoolClosed(message))
        self.openers.clear()

    def take_for(self, worker: Worker) -> Call | None:
        """Remove and return the first waiting call that ``worker`` can run now."""
        if worker.saturated():
            return None
        for call in self._calls:
            if (call.pinned is None or call.pinned == worker.id) and worker.can_take(call):
                self._calls.remove(call)
                return call
        return None

    def remove(self, call: Call) -> bool:
        try:
            self._calls.remove(call)
        except ValueError:
            return False
        return True

    def drop_pinned(self, worker_id: int) -> list[Call]:
        """Remove the calls that can only run on ``worker_id``."""
        dropped = [c for c in self._calls if c.pinned == worker_id]
        for call in dropped:
            self._calls.remove(call)
        return dropped
