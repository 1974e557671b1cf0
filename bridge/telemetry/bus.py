"""The telemetry bus a :class:`~kernelpit.pool.PoolManager` owns: events pushed to sinks and
subscribers, never blocking the pool.

Publishers (the pool: manager, groups, workers; later the job runner) call :meth:`publish`
on the pool's event loop thread (from another thread: ``loop.call_soon_threadsafe(
bus.publish, ...)``).  Before building an event they test :attr:`TelemetryBus.active`, one
attribute read, so a pool that nobody observes pays nothing more per call.

Two kinds of consumers:

* **sinks** (:meth:`add_sink`): functions called inline with every event, in order (the
  Prometheus metrics are one).  They must be quick and must not raise; an exception is
  logged once and the sink removed, so a broken sink cannot break calls.
* **subscribers** (:meth:`subscribe`): async iterators, each with its own bounded queue
  (``maxsize`` events).  A subscriber that falls behind loses the events that do not fit:
  the pool never waits for it.  The loss is counted (:attr:`dropped`, and the subscriber's
  own count) and reported in the stream itself: the next event it does get is preceded by a
  ``telemetry.dropped`` event with ``data["count"]``.
"""

from __future__ import annotations

import asyncio
import logging
from time import time as _now
from typing import Any, Callable, Iterable

from .events import TelemetryEvent, kind_filter

log = logging.getLogger("kernelpit")

DEFAULT_QUEUE = 10_000
_END = None


class _Subscriber:
    __slots__ = ("queue", "accepts", "missed")

    def __init__(self, accepts: Callable[[str], bool] | None, maxsize: int) -> None:
        self.queue: asyncio.Queue[TelemetryEvent | None] = asyncio.Queue(maxsize)
        self.accepts = accepts
        self.missed = 0

    def offer(self, event: TelemetryEvent) -> bool:
        """Queue ``event``; False (and counted) when the queue is full."""
        queue = self.queue
        if self.missed:
            if queue.qsize() + 2 > queue.maxsize:
                self.missed += 1
                return False
            queue.put_nowait(TelemetryEvent("telemetry.dropped", event.time,
                                            data={"count": self.missed}))
            self.missed = 0
        elif queue.full():
            self.missed = 1
            return False
        queue.put_nowait(event)
        return True


class TelemetryBus:
    """Lifecycle events of one pool manager, to sinks and subscribers.  See the module doc."""

    def __init__(self) -> None:
        self.active = False  # any sink or subscriber: the one test on the hot path
        self._sinks: list[tuple[Callable[[TelemetryEvent], None], frozenset[str] | None]] = []
        self._wanted: frozenset[str] | None = frozenset()  # kinds someone takes; None: all
        # copied on write, never changed in place: a subscription may be made on another
        # thread (the blocking API's) while the loop iterates the old tuple
        self._subscribers: tuple[_Subscriber, ...] = ()
        self.dropped = 0  # events some subscriber missed because it fell behind
        self.closed = False

    def _update(self) -> None:
        self.active = bool(self._sinks or self._subscribers)
        wanted: set[str] = set()
        for _, kinds in self._sinks:
            if kinds is None:
                self._wanted = None
                return
            wanted |= kinds
        if self._subscribers:
            self._wanted = None  # filters may be prefixes: build every event for them
            return
        self._wanted = frozenset(wanted)

    # -- publishing ------------------------------------------------------------------------
    def publish(self, kind: str, pool: str = "", worker: int | None = None, tool: str = "",
                call_id: int | None = None, **data: Any) -> None:
        """Send one event to every sink and interested subscriber (no-op when inactive)."""
        if not self.active or (self._wanted is not None and kind not in self._wanted):
            return  # nobody takes this kind: not even the event is built
        self.emit(TelemetryEvent(kind, _now(), pool, worker, tool, call_id, data))

    def emit(self, event: TelemetryEvent) -> None:
        """Send an already-built event (see :meth:`publish`)."""
        for sink, kinds in self._sinks:
            if kinds is not None and event.kind not in kinds:
                continue
            try:
                sink(event)
            except Exception:  # noqa: BLE001 - a sink must never fail the pool
                log.exception("kernelpit: a telemetry sink failed on %s; it is removed",
                              event.kind)
                self.remove_sink(sink)
        for sub in self._subscribers:
            if (sub.accepts is None or sub.accepts(event.kind)) and not sub.offer(event):
                self.dropped += 1

    # -- consumers -------------------------------------------------------------------------
    def add_sink(self, sink: Callable[[TelemetryEvent], None],
                 kinds: frozenset[str] | None = None) -> None:
        """Call ``sink(event)`` for every event of ``kinds`` (exact names; None: all)."""
        self._sinks = [*self._sinks, (sink, kinds)]
        self._update()

    def remove_sink(self, sink: Callable[[TelemetryEvent], None]) -> None:
        self._sinks = [(s, k) for s, k in self._sinks if s is not sink]
        self._update()

    def subscribe(self, kinds: Iterable[str] | str | None = None,
                  maxsize: int = DEFAULT_QUEUE) -> "Subscription":
        """Events of ``kinds`` (names or prefixes like ``worker.*``; None: all) from now on
        (any thread may subscribe) until the pool closes or the subscription is closed.
        Raises ValueError for an unknown kind at once."""
        return Subscription(self, _Subscriber(kind_filter(kinds), max(2, maxsize)))

    def _join(self, sub: _Subscriber) -> bool:
        if self.closed:
            return False
        self._subscribers = (*self._subscribers, sub)
        self._update()
        return True

    def _leave(self, sub: _Subscriber) -> None:
        self._subscribers = tuple(s for s in self._subscribers if s is not sub)
        self._update()

    def close(self) -> None:
        """The pool closed: every subscription ends after the events already queued."""
        self.closed = True
        for sub in self._subscribers:
            if sub.queue.full():
                sub.queue.get_nowait()  # make room for the end: one more event is lost
                sub.missed += 1
            sub.queue.put_nowait(_END)


class Subscription:
    """One subscriber's events from its creation on: an async iterator, or batches
    (:meth:`next_batch`) for senders that write many at a time (the bridge's Subscribe
    RPC).  ``on_start`` runs on the pool's loop at the first read (the embedded backend ends
    subscriptions with it when the pool stops)."""

    def __init__(self, bus: TelemetryBus, sub: _Subscriber) -> None:
        self._bus = bus
        self._sub = sub
        self._state = 1 if bus._join(sub) else 2  # 1 following, 2 ended
        self._started = False
        self.on_start: Callable[[], None] | None = None

    @property
    def missed(self) -> int:
        """Events this subscriber lost so far because it fell behind."""
        return self._sub.missed

    def _begin(self) -> bool:
        if not self._started:
            self._started = True
            if self.on_start is not None:
                self.on_start()
        return self._state == 1

    def __del__(self) -> None:  # dropped without being closed: stop queueing for it
        if self._state == 1:
            self._bus._leave(self._sub)

    def __aiter__(self) -> "Subscription":
        return self

    async def __anext__(self) -> TelemetryEvent:
        if not self._begin():
            raise StopAsyncIteration
        event = await self._sub.queue.get()
        if event is _END:
            await self.aclose()
            raise StopAsyncIteration
        return event

    async def next_batch(self, limit: int = 1024) -> list[TelemetryEvent]:
        """At least one event (waiting for it), and every other one ready, up to ``limit``;
        an empty list when the subscription has ended."""
        if not self._begin():
            return []
        queue = self._sub.queue
        event = await queue.get()
        batch: list[TelemetryEvent] = []
        while event is not _END:
            batch.append(event)
            if queue.empty() or len(batch) >= limit:
                return batch
            event = queue.get_nowait()
        await self.aclose()
        return batch

    async def aclose(self) -> None:
        if self._state != 2:
            self._state = 2
            self._bus._leave(self._sub)
