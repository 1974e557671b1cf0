"""Choosing a worker for a call, and the bounded FIFO of calls that wait for one."""

from __future__ import annotations

from collections import deque
from typing import Iterable

from ..exceptions import QueueFull
from .call import Call
from .worker import Worker


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
    """Calls waiting for a worker, first in first out, at most ``bound`` of them."""

    def __init__(self, bound: int, pool: str) -> None:
        self.bound = bound
        self.pool = pool
        self._calls: deque[Call] = deque()

    def __len__(self) -> int:
        return len(self._calls)

    def push(self, call: Call) -> int:
        """Queue ``call``; returns its position.  Raises QueueFull at the bound."""
        if len(self._calls) >= self.bound:
            raise QueueFull(
                f"pool '{self.pool}': all workers are busy and {self.bound} calls are already "
                f"waiting (queue_size={self.bound}); raise queue_size or add workers",
                tool=call.tool)
        self._calls.append(call)
        return len(self._calls) - 1

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
