"""Pool state changes and periodic health snapshots, for the Watch RPC.

:class:`Watcher` samples the pool's workers and sessions a few times a
second and reports what changed (a worker's state, a worker appearing or
going away, a session opened, closed or lost), plus a full snapshot first
and then every ``interval`` seconds.  The dataclasses are what a remote
client's ``watch()`` yields.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import AsyncIterator, Callable

from ..info import SessionInfo, WorkerInfo

POLL = 0.1          # seconds between samples for change detection
DEFAULT_INTERVAL = 2.0


@dataclass
class Snapshot:
    """Every worker's health and every open session, at ``time``."""

    kind = "snapshot"
    workers: list[WorkerInfo]
    sessions: list[SessionInfo]
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


class Watcher:
    def __init__(self, workers: Callable[[], list[WorkerInfo]],
                 sessions: Callable[[], list[SessionInfo]], closing: asyncio.Event) -> None:
        self._workers = workers
        self._sessions = sessions
        self._closing = closing

    async def events(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        interval = max(POLL, interval or DEFAULT_INTERVAL)
        workers = {w.id: w for w in self._workers()}
        sessions = {s.id: s for s in self._sessions()}
        yield Snapshot(list(workers.values()), list(sessions.values()))
        next_snapshot = time.monotonic() + interval
        while not self._closing.is_set():
            try:
                await asyncio.wait_for(self._closing.wait(), POLL)
                return
            except asyncio.TimeoutError:
                pass
            now_workers = {w.id: w for w in self._workers()}
            now_sessions = {s.id: s for s in self._sessions()}
            for wid, w in now_workers.items():
                old = workers.get(wid)
                if old is None or old.state != w.state:
                    yield WorkerChanged(w, previous_state=old.state if old else "")
            for wid, w in workers.items():
                if wid not in now_workers:
                    yield WorkerChanged(w, previous_state=w.state, removed=True)
            for sid, s in now_sessions.items():
                old_s = sessions.get(sid)
                if old_s is None:
                    yield SessionChanged(s, "opened")
                elif s.lost and not old_s.lost:
                    yield SessionChanged(s, "lost")
            for sid, s in sessions.items():
                if sid not in now_sessions:
                    yield SessionChanged(s, "closed")
            workers, sessions = now_workers, now_sessions
            if time.monotonic() >= next_snapshot:
                next_snapshot = time.monotonic() + interval
                yield Snapshot(list(workers.values()), list(sessions.values()))
