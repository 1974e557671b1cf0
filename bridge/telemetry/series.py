"""The last few minutes of a pool as time series, for charts (the health panel, and
``kernelpit status --watch``): calls/s, queue depth, p50/p99 call latency, RSS per worker.

Fed with ``subscribe()`` events (:meth:`LiveSeries.feed`: ``call.*``) and watch snapshots
(:meth:`LiveSeries.workers`: RSS and the ``max_memory`` line), and read once per redraw
(:meth:`LiveSeries.sample`, which closes one time bucket).  Standard library only.
"""

from __future__ import annotations

import time
from collections import deque
from dataclasses import dataclass, field
from typing import Any, Iterable


@dataclass
class Point:
    t: float
    calls_per_s: float
    queue_depth: int
    p50: float | None   # seconds, of calls finished since the previous point
    p99: float | None
    rss: dict[int, int] = field(default_factory=dict)


class LiveSeries:
    """Time series of one pool over ``window`` seconds (one point per :meth:`sample`)."""

    def __init__(self, window: float = 300.0) -> None:
        self.window = window
        self.points: deque[Point] = deque()
        self.max_memory: int | None = None
        self._waiting: set[int] = set()   # call ids queued, not started yet
        self._finished = 0
        self._latencies: list[float] = []
        self._rss: dict[int, int] = {}
        self._last = time.monotonic()

    def feed(self, event: Any) -> None:
        """One telemetry event (``call.queued`` / ``started`` / ``finished``)."""
        kind = event.kind
        if kind == "call.queued" and event.call_id is not None:
            self._waiting.add(event.call_id)
        elif kind == "call.started":
            self._waiting.discard(event.call_id)
        elif kind == "call.finished":
            self._waiting.discard(event.call_id)
            self._finished += 1
            run_time = event.data.get("run_time")
            if run_time is not None:
                self._latencies.append(run_time)

    def workers(self, infos: Iterable[Any]) -> None:
        """The workers as the latest snapshot has them: RSS, and the recycle limit."""
        self._rss = {}
        for w in infos:
            if w.state in ("dead", "stopping"):
                continue
            self._rss[w.id] = w.rss
            left = (w.recycle_in or {}).get("bytes")
            if left is not None:
                self.max_memory = int(w.rss + left)

    def sample(self) -> Point:
        now = time.monotonic()
        span = max(1e-6, now - self._last)
        lat = sorted(self._latencies)
        point = Point(now, self._finished / span, len(self._waiting),
                      _quantile(lat, 0.5), _quantile(lat, 0.99), dict(self._rss))
        self._last, self._finished, self._latencies = now, 0, []
        self.points.append(point)
        while self.points and now - self.points[0].t > self.window:
            self.points.popleft()
        return point


def _quantile(xs: list[float], q: float) -> float | None:
    if not xs:
        return None
    return xs[min(len(xs) - 1, int(q * len(xs)))]
