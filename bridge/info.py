"""Descriptions of tools, workers and sessions, as the Python API returns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Any


class WorkerState(str, Enum):
    """Where a worker is in its life (a ``str``: compares equal to its value, e.g. "idle").

    starting   its kernel is launching and has not answered the readiness check yet
    idle       ready, no call in flight
    busy       ready, calls in flight (``idle`` and ``busy`` are one stored state, told apart
               by whether calls are in flight, so a call costs no transition)
    recycling  its successor serves; it finishes its in-flight calls and then stops
    unhealthy  it stopped answering; its calls failed and it is being killed
    stopping   asked to exit (recycle done, pool closing)
    dead       its process is gone

    A warm spare is not a state: it is an ``idle`` worker with ``spare`` set, held back from
    calls until a crash or a recycle promotes it.
    """

    STARTING = "starting"
    IDLE = "idle"
    BUSY = "busy"
    RECYCLING = "recycling"
    UNHEALTHY = "unhealthy"
    STOPPING = "stopping"
    DEAD = "dead"

    __hash__ = str.__hash__  # so that "idle" and WorkerState.IDLE are one key in a dict or set

    def __str__(self) -> str:
        return self.value


@dataclass(frozen=True)
class ToolInfo:
    """A tool served by a pool: name, docstring, signature and JSON Schema of its parameters."""

    name: str
    doc: str = ""
    signature: str = ""
    parameters: dict[str, Any] = field(default_factory=dict)
    pool: str = "default"
    module: str = ""
    thread_safe: bool = False
    idempotent: bool = False
    streaming: bool = False


_STATES = {s.value for s in WorkerState}


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker kernel's health."""

    id: int
    pool: str
    state: WorkerState
    pid: int | None = None
    connection_file: str | None = None
    rss: int = 0
    cpu: float = 0.0
    calls: int = 0
    uptime: float = 0.0
    current_call: str | None = None
    current_call_seconds: float = 0.0
    sessions: int = 0
    recycles: int = 0
    recycle_reason: str | None = None
    last_heartbeat: float | None = None  # seconds since the epoch of the last heartbeat reply
    recycle_in: dict[str, float] = field(default_factory=dict)
    spare: bool = False   # a warm spare (state idle), held back until it is promoted
    node: str | None = None   # the Ray node id (hex) of a Ray-placed worker; None: local
    host: str | None = None   # the address of the machine it runs on (None: this one)

    def __post_init__(self) -> None:
        if not isinstance(self.state, WorkerState) and self.state in _STATES:
            object.__setattr__(self, "state", WorkerState(self.state))  # e.g. read from gRPC

    @property
    def attach_command(self) -> str:
        """The command that attaches a Jupyter console to this worker kernel."""
        return f"jupyter console --existing {self.connection_file}"


@dataclass(frozen=True)
class SessionInfo:
    """A session: calls in it all run on one worker, so state survives between them."""

    id: str
    pool: str
    worker: int
    created: float
    last_used: float
    ttl: float | None = None
    calls: int = 0
    metadata: dict[str, str] = field(default_factory=dict)
    lost: str | None = None


@dataclass(frozen=True)
class TenantLoad:
    """One tenant's calls in one pool: ``waiting`` in its queue, ``running`` on workers."""

    pool: str
    tenant: str
    waiting: int = 0
    running: int = 0


@dataclass(frozen=True)
class TokenInfo:
    """A named bearer token of a bridge (``client.list_tokens()``).  ``secret`` is set only in
    what ``add_token`` and ``rotate_token`` return: the bridge keeps its hash, never the secret."""

    name: str
    role: str                      # read, call or admin
    created: float
    last_used: float | None = None
    secret: str | None = None
