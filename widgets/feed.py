"""Live data for the panels, on background threads, throttled; never on the notebook's thread.

:class:`LiveState` follows a pool: it follows the client's ``watch()`` stream
(closed from any thread to stop), keeps
the latest workers and sessions, and calls ``render`` at most ``max_rate``
times a second from one background thread.  When the stream fails (the bridge
went away) it renders ``connected=False`` and tries again every second until
the bridge is back.  An embedded ``kernelpit.Pool`` is followed the same way.
"""

from __future__ import annotations

import queue
import threading
import time
from typing import Any, Callable

from kernelpit.telemetry.series import LiveSeries

from .connection import Connector

_END = object()
_EVENTS_OVER = object()  # the call-event stream ended (or the bridge has no Subscribe)


def _quiet(stream: Any) -> Any:
    """A stream whose failure only ends it (charts then go without call events)."""
    try:
        yield from stream
    except Exception:  # noqa: BLE001 - an older bridge, or it went away (the watch says so)
        return


def pump(stream: Any, out: "queue.SimpleQueue[Any]", end: Any = _END) -> Any:
    """Move the items of a blocking ``stream`` (``client.watch()``, ``pool.stream(...)``)
    into ``out`` on a daemon thread; the last item is ``end`` (normal end, or the stream was
    closed) or the exception.  Returns ``stream``: its ``close()`` (from any thread) cancels
    the call or RPC behind it."""
    def run() -> None:
        try:
            for item in stream:
                out.put(item)
        except BaseException as exc:  # noqa: BLE001 - handed to the consumer thread
            out.put(exc)
            return
        out.put(end)

    threading.Thread(target=run, name="kernelpit-feed", daemon=True).start()
    return stream


class LiveState:
    """The pool's workers and sessions, kept current from the watch stream."""

    def __init__(self, connector: Connector, render: Callable[["LiveState"], None], *,
                 interval: float = 1.0, max_rate: float = 10.0) -> None:
        self.connector = connector
        self.render_cb = render
        self.interval = interval
        self.min_gap = 1.0 / max_rate
        self.workers: dict[int, Any] = {}
        self.sessions: dict[str, Any] = {}
        self.tenants: list[Any] = []   # calls waiting and running per tenant (TenantLoad)
        self.connected = False
        self.error = ""
        self.address = ""
        self.updated = 0.0
        self.renders = 0
        self._calls_hist: list[tuple[float, int]] = []
        #: the last minutes as time series, for the charts (calls/s, queue, latency, RSS)
        self.series = LiveSeries()
        self._events: Any = None
        self._sampled = 0.0
        self._stop = threading.Event()
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fut: Any = None
        self._thread = threading.Thread(target=self._run, name="kernelpit-panel", daemon=True)

    def start(self) -> "LiveState":
        self._thread.start()
        return self

    @property
    def running(self) -> bool:
        return self._thread.is_alive()

    def stop(self) -> None:
        self._stop.set()
        self._q.put(_END)
        for stream in (self._fut, self._events):
            if stream is not None:
                stream.close()

    # -- derived figures ------------------------------------------------------------------
    def calls_per_second(self) -> float:
        hist = self._calls_hist
        if len(hist) < 2:
            return 0.0
        (t0, c0), (t1, c1) = hist[0], hist[-1]
        return max(0.0, (c1 - c0) / (t1 - t0)) if t1 > t0 else 0.0

    def counts(self) -> dict[str, int]:
        out: dict[str, int] = {}
        for w in self.workers.values():
            if getattr(w, "spare", False):
                out["spare"] = out.get("spare", 0) + 1
                continue
            out[w.state] = out.get(w.state, 0) + 1
        return out

    # -- the background thread ------------------------------------------------------------
    def sample(self) -> None:
        """Close one point of :attr:`series` (at most one a second)."""
        now = time.monotonic()
        if now - self._sampled >= 1.0:
            self._sampled = now
            self.series.sample()

    def _apply(self, item: Any) -> None:
        kind = getattr(item, "kind", "")
        if kind.startswith("call."):
            self.series.feed(item)
            return
        if kind == "snapshot":
            self.workers = {w.id: w for w in item.workers}
            self.sessions = {s.id: s for s in item.sessions}
            self.tenants = list(getattr(item, "tenants", ()))
        elif kind == "worker_changed":
            if item.removed:
                self.workers.pop(item.worker.id, None)
            else:
                self.workers[item.worker.id] = item.worker
        elif kind == "session_changed":
            if item.change == "closed":
                self.sessions.pop(item.session.id, None)
            else:
                self.sessions[item.session.id] = item.session
        self.connected = True
        self.error = ""
        self.updated = time.time()
        self.series.workers(self.workers.values())
        now = time.monotonic()
        total = sum(w.calls for w in self.workers.values())
        self._calls_hist.append((now, total))
        while self._calls_hist and now - self._calls_hist[0][0] > 5.0:
            self._calls_hist.pop(0)
        if any(c < self._calls_hist[0][1] for _, c in self._calls_hist):
            self._calls_hist = [(now, total)]  # a worker was replaced: its count restarted

    def _connect(self) -> Any:
        client = self.connector.get(timeout=2.0)
        self.address = getattr(client, "address", "") or "embedded pool"
        self._fut = pump(client.watch(self.interval), self._q)
        if hasattr(client, "subscribe"):
            self._events = client.subscribe("call.*")
            pump(_quiet(self._events), self._q, _EVENTS_OVER)
        return client

    def _run(self) -> None:
        last_render = 0.0
        dirty = False  # nothing to draw until the first snapshot (or a failure) arrives
        client = None
        while not self._stop.is_set():
            if client is None:
                try:
                    client = self._connect()
                except Exception as exc:  # noqa: BLE001 - shown in the panel
                    self.connected, self.error = False, str(exc)
                    self._render()
                    self._stop.wait(1.0)
                    continue
            wait = max(0.0, last_render + self.min_gap - time.monotonic()) if dirty else 1.0
            try:
                item = self._q.get(timeout=wait)
            except queue.Empty:
                item = None
            while item is not None:
                if item is _EVENTS_OVER:
                    item = None
                    continue
                if item is _END or isinstance(item, BaseException):
                    if self._stop.is_set():
                        return
                    self.connector.invalidate(client)
                    client = None
                    if self._events is not None:
                        self._events.close()
                        self._events = None
                    self.connected = False
                    self.error = ("the bridge went away" if item is _END
                                  else f"{type(item).__name__}: {item}")
                    dirty = True
                    break
                self._apply(item)
                dirty = True
                try:
                    item = self._q.get_nowait()
                except queue.Empty:
                    item = None
            now = time.monotonic()
            if dirty and now - last_render >= self.min_gap:
                last_render = now
                dirty = False
                self._render()
            elif not dirty and now - last_render >= 1.0:
                last_render = now
                self._render()  # ages and countdowns move on between events
            if client is None and not self._stop.is_set():
                self._render()
                self._stop.wait(1.0)

    def _render(self) -> None:
        if self._stop.is_set():
            return
        self.renders += 1
        try:
            self.render_cb(self)
        except Exception:  # a closed widget or a frontend gone: never kill the thread
            pass
