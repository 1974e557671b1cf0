"""The one contract of a pool: everything ``kernelpit.Pool`` and a bridge client can do.

Two backends implement it: :class:`~kernelpit.local.LocalBackend` (the worker
kernels of this process) and :class:`~kernelpit.remote.RemoteBackend` (a bridge,
over gRPC).  The asyncio API (:class:`~kernelpit.caller.AsyncHandle`) is written
once on top of it, and the blocking API (:mod:`kernelpit.sync`) is built from
that, so an embedded pool and a client have the same methods, signatures and
exceptions.  What only one side has (a bridge's ``server_info()``, a pool's
``start()``) lives on that side's class, and docs/architecture.md lists it.

Every method is async except the two iterators, which are async generators.
"""

from __future__ import annotations

import abc
from typing import Any, AsyncIterator

from .events import Event
from .info import SessionInfo, ToolInfo, WorkerInfo
from .jobs.model import JobEvent, JobInfo
from .options import CallOptions
from .telemetry.events import TelemetryEvent
from .watch import WatchEvent


class Backend(abc.ABC):
    """What a pool does, for the API classes to call.  See the module docstring."""

    # -- calls ------------------------------------------------------------------------------
    @abc.abstractmethod
    async def call(self, tool: str, args: Any, kwargs: dict[str, Any],
                   options: CallOptions) -> Any:
        """Run ``tool`` and return its result, or raise what it raised."""

    @abc.abstractmethod
    def stream(self, tool: str, args: Any, kwargs: dict[str, Any],
               options: CallOptions) -> AsyncIterator[Event]:
        """Run ``tool``; its events, the last one ``Result`` or ``Error``.  Closing the
        iterator early cancels the call."""

    @abc.abstractmethod
    async def map(self, tool: str, columns: list[list[Any]], options: CallOptions,
                  chunksize: int | None) -> list[Any]:
        """``tool(*row)`` for each row of the argument columns, in chunks; results in order."""

    # -- sessions -----------------------------------------------------------------------------
    @abc.abstractmethod
    async def open_session(self, pool: str | None, ttl: float | None, metadata: dict[str, str],
                           session_id: str | None = None) -> SessionInfo:
        """Open a session on a worker of ``pool``; waits for a ready worker as a call does."""

    @abc.abstractmethod
    async def close_session(self, session_id: str) -> SessionInfo:
        """Close a session; its worker drops the session's state."""

    @abc.abstractmethod
    async def get_session(self, session_id: str) -> SessionInfo:
        """One session; SessionNotFound when it was closed or expired."""

    @abc.abstractmethod
    async def sessions(self) -> list[SessionInfo]:
        """Open sessions, lost ones included until they are closed."""

    # -- durable jobs (docs/jobs.md) ------------------------------------------------------------
    @abc.abstractmethod
    async def submit(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions,
                     key: str | None = None) -> JobInfo:
        """Store a job running ``tool`` and start it; returns at once.  ``key``: an
        idempotency key (the existing job when the arguments are equal).  JobsDisabled when
        this pool keeps no job store."""

    @abc.abstractmethod
    async def job(self, job_id: str) -> JobInfo:
        """One job as the store holds it now; JobNotFound when there is none."""

    @abc.abstractmethod
    async def jobs(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        """Jobs, newest first; ``before`` (a job id) pages."""

    @abc.abstractmethod
    def job_events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's journal after seq ``after``, then its events live until it ends."""

    @abc.abstractmethod
    async def job_result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's value or its error raised; the builtin TimeoutError after ``timeout``."""

    @abc.abstractmethod
    async def cancel_job(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job wherever it runs (a finished one is left as is)."""

    @abc.abstractmethod
    async def delete_job(self, job_id: str) -> None:
        """Remove a finished job, its journal and stored values."""

    # -- introspection --------------------------------------------------------------------------
    @abc.abstractmethod
    async def tools(self, pool: str | None = None) -> list[ToolInfo]:
        """The tools served (of one named pool); PoolNotFound for an unknown pool."""

    @abc.abstractmethod
    async def describe(self, name: str, pool: str | None = None) -> ToolInfo:
        """One tool; ToolNotFound (naming close matches) when there is none of that name."""

    @abc.abstractmethod
    async def workers(self, pool: str | None = None) -> list[WorkerInfo]:
        """A health snapshot of every worker (of one named pool)."""

    @abc.abstractmethod
    def watch(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        """A Snapshot, then WorkerChanged and SessionChanged events as they happen, and a
        Snapshot every ``interval`` seconds when it is positive."""

    @abc.abstractmethod
    def subscribe(self, kinds: list[str] | None = None) -> AsyncIterator[TelemetryEvent]:
        """Telemetry events (kernelpit.telemetry.events.KINDS) of ``kinds`` (names, or
        prefixes like ``worker.*``; None: all), pushed as they happen, until the pool stops.
        Raises ValueError for an unknown kind."""

    # -- control ---------------------------------------------------------------------------------
    @abc.abstractmethod
    async def interrupt(self, worker_id: int) -> None:
        """Cancel the worker's tool calls and SIGINT its kernel."""

    @abc.abstractmethod
    async def restart(self, worker_id: int) -> None:
        """Kill the worker now; a fresh one takes its place."""

    @abc.abstractmethod
    async def recycle(self, worker_id: int) -> None:
        """Replace the worker without downtime: its successor first, then it drains."""

    @abc.abstractmethod
    async def reload(self, pool: str | None = None) -> int:
        """Load the adapters' code anew in ``pool`` (None: every pool): a new zygote where
        workers are forked, and every serving worker recycled onto the code on disk now.
        Returns how many workers are being recycled."""

    @abc.abstractmethod
    async def untaint(self, tool: str, pool: str | None = None) -> bool:
        """Lift ``tool``'s crash quarantine now; True when there was one."""

    @abc.abstractmethod
    async def shutdown(self, grace: float | None = None) -> None:
        """Stop the pool itself: calls in flight get ``grace`` seconds, then every kernel stops."""

    @abc.abstractmethod
    async def close(self) -> None:
        """Release what this handle holds (for a client: its connection; the bridge runs on)."""
