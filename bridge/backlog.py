"""Where a call's events wait for a consumer that is behind: in order, progress coalesced.

A consumer (a remote client, a notebook panel, a slow terminal) may take a call's events
slower than the tool makes them.  Wherever they wait for it (in the worker, the pool, the
bridge and the client) they wait in a :class:`Backlog`.  Everything stays in order and
nothing is dropped, except that a progress event still waiting at the tail is replaced by the
next progress event of the same call: progress is a state, so only its latest value is worth
delivering, and a lagging consumer sees the bar where it is now instead of where it was.
Because only the *tail* is ever replaced, the last progress before any other event (output,
a partial, the result) and the final progress of a call are always delivered, and output
keeps its place relative to progress.

:class:`Backlog` holds that rule and nothing else; :class:`AsyncBacklog` (one asyncio
consumer) and :class:`BlockingBacklog` (a consumer thread) only add the waiting.
"""

from __future__ import annotations

import asyncio
import collections
import threading
from typing import Any, Callable, Generic, Hashable, TypeVar

from .events import Progress

T = TypeVar("T")

#: what an item coalesces under: items with the same non-None key replace each other at the tail
Key = Callable[[Any], Hashable]


def progress_of_call(item: Any) -> Hashable:
    """The key of :class:`~kernelpit.events.Progress` events: their call; None for the rest."""
    return item.call_id if type(item) is Progress else None


class Backlog(Generic[T]):
    """A FIFO in which an item replaces the tail when both have the same non-None ``key``.

    ``coalesced`` counts the items replaced so far.  Not synchronized: the waiting wrappers
    below (or the owner's lock) serialize access.
    """

    __slots__ = ("_items", "_key", "_tail_key", "coalesced")

    def __init__(self, key: Key = progress_of_call) -> None:
        self._items: collections.deque[T] = collections.deque()
        self._key = key
        self._tail_key: Hashable = None  # the tail's key while the tail may still be replaced
        self.coalesced = 0

    def push(self, item: T) -> None:
        key = self._key(item)
        if key is not None and key == self._tail_key:
            self._items[-1] = item
            self.coalesced += 1
            return
        self._items.append(item)
        self._tail_key = key

    def pop(self) -> T:
        """The oldest item (IndexError when empty)."""
        item = self._items.popleft()
        if not self._items:
            self._tail_key = None  # the tail left: the next item never replaces a taken one
        return item

    def peek(self) -> T:
        """The oldest item, left in place (IndexError when empty)."""
        return self._items[0]

    def __len__(self) -> int:
        return len(self._items)


class AsyncBacklog(Backlog[T]):
    """A :class:`Backlog` with ``await get()`` for one consumer task on the loop's thread."""

    __slots__ = ("_waiter",)

    def __init__(self, key: Key = progress_of_call) -> None:
        super().__init__(key)
        self._waiter: asyncio.Future[None] | None = None

    def put_nowait(self, item: T) -> None:
        self.push(item)
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_result(None)

    def empty(self) -> bool:
        return not self._items

    def get_nowait(self) -> T:
        return self.pop()

    async def wait(self) -> None:
        """Until an item is waiting (it stays in the queue)."""
        while not self._items:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                await self._waiter
            finally:
                self._waiter = None

    async def get(self) -> T:
        await self.wait()
        return self.pop()


class BlockingBacklog(Backlog[T]):
    """A :class:`Backlog` that threads put into and one thread takes from, waiting."""

    __slots__ = ("_ready",)

    def __init__(self, key: Key = progress_of_call) -> None:
        super().__init__(key)
        self._ready = threading.Condition(threading.Lock())

    def put(self, item: T) -> None:
        with self._ready:
            self.push(item)
            self._ready.notify()

    def get(self) -> T:
        with self._ready:
            while not self._items:
                self._ready.wait()
            return self.pop()
