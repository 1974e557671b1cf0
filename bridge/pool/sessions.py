"""Sessions: named affinity of calls to one worker, with idle expiry."""

from __future__ import annotations

import time
import uuid
from dataclasses import dataclass, field

from ..exceptions import SessionLost, SessionNotFound
from ..info import SessionInfo


@dataclass
class Session:
    id: str
    pool: str
    worker: int
    ttl: float | None
    metadata: dict[str, str]
    created: float = field(default_factory=time.time)
    last_used: float = field(default_factory=time.time)
    calls: int = 0
    lost: str | None = None
    tenant: str = "default"   # who opened it (its quota_sessions counts it)

    def info(self) -> SessionInfo:
        return SessionInfo(id=self.id, pool=self.pool, worker=self.worker, created=self.created,
                           last_used=self.last_used, ttl=self.ttl, calls=self.calls,
                           metadata=dict(self.metadata), lost=self.lost)


class SessionTable:
    def __init__(self) -> None:
        self._sessions: dict[str, Session] = {}

    def open(self, pool: str, worker: int, ttl: float | None, metadata: dict[str, str],
             session_id: str | None = None, tenant: str = "default") -> Session:
        sid = session_id or uuid.uuid4().hex[:12]
        if sid in self._sessions:
            raise ValueError(f"a session with id '{sid}' already exists")
        session = Session(sid, pool, worker, ttl, {str(k): str(v) for k, v in metadata.items()},
                          tenant=tenant)
        self._sessions[sid] = session
        return session

    def get(self, session_id: str) -> Session:
        try:
            return self._sessions[session_id]
        except KeyError:
            raise SessionNotFound(f"no session '{session_id}': it was closed or expired; "
                                  "open a new one with pool.session()") from None

    def use(self, session_id: str) -> Session:
        """The session for a new call; raises SessionLost when its worker died."""
        session = self.get(session_id)
        if session.lost:
            raise SessionLost(f"session '{session_id}' is lost: {session.lost}; its state is gone. "
                              "Close it and open a new session")
        session.last_used = time.time()
        session.calls += 1
        return session

    def close(self, session_id: str) -> Session:
        session = self.get(session_id)
        del self._sessions[session_id]
        return session

    def on_worker(self, worker: int) -> list[Session]:
        return [s for s in self._sessions.values() if s.worker == worker and not s.lost]

    def held(self, pool: str, tenant: str) -> int:
        """How many sessions ``tenant`` holds open in ``pool`` (lost ones too, until closed)."""
        return sum(1 for s in self._sessions.values() if s.pool == pool and s.tenant == tenant)

    def expired(self, now: float) -> list[Session]:
        return [s for s in self._sessions.values()
                if s.ttl is not None and now - s.last_used > s.ttl]

    def __iter__(self):
        return iter(list(self._sessions.values()))

    def __len__(self) -> int:
        return len(self._sessions)
