"""Descriptions of tools, workers and sessions, as the Python API returns them."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


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


@dataclass(frozen=True)
class WorkerInfo:
    """A snapshot of one worker kernel's health."""

    id: int
    pool: str
    state: str
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
    spare: bool = False

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
