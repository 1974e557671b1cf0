"""Pool state changes and periodic health snapshots: what ``pool.watch()`` yields.

:class:`WatchHub` (run by the embedded backend, and so by a bridge for its Watch RPC) samples the pool's workers and sessions ten times a second
and reports what changed (a worker's state, a worker appearing or going
away, a session opened, closed or lost) to every Watch stream, which also
gets a full snapshot first and then every ``interval`` seconds.  The
dataclasses are what ``watch()`` yields, embedded and through a bridge.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from .info import SessionInfo, TenantLoad, WorkerInfo

POLL = 0.1          # seconds between samples for change detection
DEFAULT_INTERVAL = 2.0


@dataclass
class Snapshot:
    """Every worker's health, every open session and each tenant's calls waiting and
    running (per pool, tenants with none left out), at ``time``."""

    kind = "snapshot"
    workers: list[WorkerInfo]
    sessions: list[SessionInfo]
    tenants: list[TenantLoad] = field(default_factory=list)
    time: float = field(default_factory=time.time)


@dataclass
class WorkerChanged:
    """A worker changed state; ``previous_state`` is "" for a new worker, ``removed`` when gone."""

    kind = "worker_changed"
    worker: WorkerInfo
    previous_state: str = ""
    removed: bool = False
    time: float = field(default_factory=time.time)


@dataclass
class SessionChanged:
    """A session was ``opened``, ``closed`` (or expired) or ``lost`` (its worker died)."""

    kind = "session_changed"
    session: SessionInfo
    change: str = "opened"
    time: float = field(default_factory=time.time)


WatchEvent = Snapshot | WorkerChanged | SessionChanged


class WatchHub:
    """One sampler shared by every Watch stream of the bridge.

    Every ``POLL`` seconds it reads the workers' states (cheap attribute reads)
    and the session table; only when a worker's state changed does it take a
    full health sample (process RSS and CPU).  Changes go to every subscriber;
    each subscriber also gets a full snapshot first and every ``interval`` s.
    """

    def __init__(self, states: Callable[[], dict[int, str]],
                 workers: Callable[[], list[WorkerInfo]],
                 sessions: Callable[[], list[SessionInfo]], closing: asyncio.Event,
                 tenants: Callable[[], list[TenantLoad]] = list) -> None:
        self._states = states
        self._tenants = tenants
        self._workers = workers
        self._sessions = sessions
        self._closing = closing
        self._subscribers: set[asyncio.Queue[WatchEvent | None]] = set()
        self._sampler: asyncio.Task[None] | None = None

    async def subscribe(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        """A snapshot, then changes as they are seen and a snapshot every ``interval`` s."""
        interval = max(POLL, interval or DEFAULT_INTERVAL)
        queue: asyncio.Queue[WatchEvent | None] = asyncio.Queue()
        self._subscribers.add(queue)
        if self._sampler is None or self._sampler.done():
            self._sampler = asyncio.ensure_future(self._sample())
        try:
            yield Snapshot(self._workers(), self._sessions(), self._tenants())
            due = time.monotonic() + interval
            while not self._closing.is_set():
                try:
                    event = await asyncio.wait_for(queue.get(), max(0.0, due - time.monotonic()))
                except asyncio.TimeoutError:
                    due = time.monotonic() + interval
                    yield Snapshot(self._workers(), self._sessions(), self._tenants())
                    continue
                if event is None:
                    return
                yield event
        finally:
            self._subscribers.discard(queue)
            if not self._subscribers and self._sampler is not None:
                self._sampler.cancel()
                self._sampler = None

    def _publish(self, event: WatchEvent | None) -> None:
        for queue in self._subscribers:
            queue.put_nowait(event)

    async def _sample(self) -> None:
        states = self._states()
        workers = {w.id: w for w in self._workers()}
        sessions = {s.id: s for s in self._sessions()}
        while True:
            try:
                await asyncio.wait_for(self._closing.wait(), POLL)
                self._publish(None)
                return
            except asyncio.TimeoutError:
                pass
            now_states = self._states()
            if now_states != states:
                now_workers = {w.id: w for w in self._workers()}
                for wid, state in now_states.items():
                    if states.get(wid) != state and wid in now_workers:
                        self._publish(WorkerChanged(now_workers[wid],
                                                    previous_state=states.get(wid, "")))
                for wid, state in states.items():
                    if wid not in now_states and wid in workers:
                        self._publish(WorkerChanged(workers[wid], previous_state=state,
                                                    removed=True))
                states, workers = now_states, now_workers
            now_sessions = {s.id: s for s in self._sessions()}
            for sid, session in now_sessions.items():
                old = sessions.get(sid)
                if old is None:
                    self._publish(SessionChanged(session, "opened"))
                elif session.lost and not old.lost:
                    self._publish(SessionChanged(session, "lost"))
            for sid, session in sessions.items():
                if sid not in now_sessions:
                    self._publish(SessionChanged(session, "closed"))
            sessions = now_sessions
