"""Every exception Kernelpit raises, in one tree.

::

    KernelpitError
    ├── StartError            a pool (or a worker of it) could not start
    ├── PoolClosed            the pool or client was closed
    ├── BridgeError           talking to a bridge service failed
    │   ├── BridgeNotFound    no running bridge was found (says how to start one)
    │   └── Unauthenticated   the bridge refused the token
    └── CallError             one call failed; has .tool, .call_id, .worker
        ├── NotFound
        │   ├── ToolNotFound      no such tool (lists close matches)
        │   ├── SessionNotFound   no such session (closed or expired)
        │   ├── WorkerNotFound    no such worker id
        │   ├── PoolNotFound      no named pool of that name
        │   └── JobNotFound       no job with that id (deleted, or never submitted)
        ├── InvalidArguments  arguments do not fit the tool's signature
        ├── QueueFull         the wait queue is at its bound
        ├── DeadlineExceeded  the per-call deadline passed (also a TimeoutError)
        ├── Cancelled         the call was cancelled
        ├── WorkerCrashed     the worker died while running the call (.reason says how)
        ├── ToolTainted       refused, never ran: the tool keeps crashing workers and is
        │                     quarantined until .until (pool.untaint(tool) lifts it now)
        ├── SessionLost       the worker holding the session died; its state is gone
        ├── JobLost           the bridge (or embedded pool) stopped while a job ran
        └── RemoteError       the tool raised an exception of a non-builtin type

A tool that raises a *builtin* exception (``KeyError``, ``ValueError``, ...)
re-raises as that same type in the caller, so ``except KeyError`` works; the
remote traceback is attached as ``exc.remote_traceback`` and chained as the
``__cause__`` (a :class:`RemoteTraceback`), the way ``concurrent.futures``
shows tracebacks from worker processes.

Every class carries a ``kind`` string; :func:`from_payload` and
:func:`to_payload` turn exceptions into the structured form that travels
between workers, the pool, the gRPC service and remote clients.
"""

from __future__ import annotations

import builtins
from typing import Any


class KernelpitError(Exception):
    """Base class of every Kernelpit exception."""

    kind = "internal"


class StartError(KernelpitError):
    """A pool could not start; the message names the worker and the cause."""

    kind = "start"


class PoolClosed(KernelpitError):
    """The pool or client is closed; open a new one."""

    kind = "closed"


class BridgeError(KernelpitError):
    """Talking to a bridge service failed."""

    kind = "unavailable"


class BridgeNotFound(BridgeError):
    """No running bridge service was found."""


class Unauthenticated(BridgeError):
    """The bridge refused the token."""

    kind = "unauthenticated"


class CallError(KernelpitError):
    """One call failed.  ``tool``, ``call_id`` and ``worker`` say which, when known."""

    kind = "internal"

    def __init__(self, message: str = "", *, tool: str | None = None, call_id: int | None = None,
                 worker: int | None = None, remote_traceback: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.tool = tool
        self.call_id = call_id
        self.worker = worker
        self.remote_traceback = remote_traceback


class NotFound(CallError):
    kind = "not_found"


class ToolNotFound(NotFound):
    """No tool of that name; the message lists close matches."""


class SessionNotFound(NotFound):
    """No session with that id: it was closed or expired."""


class WorkerNotFound(NotFound):
    """No worker with that id."""


class PoolNotFound(NotFound):
    """No named pool of that name; the message lists the pools there are."""


class JobNotFound(NotFound):
    """No job with that id: it was deleted (or removed by retention), or never submitted."""


class InvalidArguments(CallError):
    """The arguments do not fit the tool's signature; raised before the tool runs."""

    kind = "invalid_arguments"


class QueueFull(CallError):
    """Every worker is busy and the wait queue is at its bound."""

    kind = "queue_full"


class DeadlineExceeded(CallError, TimeoutError):
    """The call's deadline passed; the tool was interrupted."""

    kind = "deadline"


class Cancelled(CallError):
    """The call was cancelled."""

    kind = "cancelled"


class WorkerCrashed(CallError):
    """The worker running the call died; ``exit_code`` / ``signal`` say how."""

    kind = "worker_crashed"

    def __init__(self, message: str = "", *, exit_code: int | None = None,
                 signal: str | None = None, reason: str | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.exit_code = exit_code
        self.signal = signal
        #: segfault, abort, oom, killed, terminated, signal, exit; None when unknown
        self.reason = reason


class ToolTainted(CallError):
    """The call was refused and never ran: its tool crashed several workers in a short window
    and is quarantined.  ``until`` is when the quarantine lifts (seconds since the epoch);
    ``pool.untaint(tool)`` (``kernelpit untaint TOOL``) lifts it at once.

    Not a :class:`WorkerCrashed`: no worker died for this call, and code that retries on
    crashes must not spin on a refusal.
    """

    kind = "tool_tainted"

    def __init__(self, message: str = "", *, until: float | None = None, **kw: Any) -> None:
        super().__init__(message, **kw)
        self.until = until


class SessionLost(CallError):
    """The worker that held the session died: the session's state is gone."""

    kind = "session_lost"


class JobLost(CallError):
    """The job's process (the bridge, or an embedded pool's program) stopped while it ran,
    and the job was not idempotent, so it was not run again."""

    kind = "job_lost"


class RemoteError(CallError):
    """The tool raised an exception whose type is not a Python builtin.

    ``remote_type`` and ``remote_module`` name the original type, ``message``
    is its ``str()``, ``remote_traceback`` the traceback inside the worker.
    """

    kind = "tool"

    def __init__(self, message: str = "", *, remote_type: str = "", remote_module: str = "",
                 **kw: Any) -> None:
        super().__init__(message, **kw)
        self.remote_type = remote_type
        self.remote_module = remote_module

    def __str__(self) -> str:
        return f"{self.remote_module}.{self.remote_type}: {self.message}"


class RemoteTraceback(Exception):
    """Carries a remote traceback text as the ``__cause__`` of a re-raised exception."""

    def __init__(self, tb: str) -> None:
        super().__init__(tb)
        self.tb = tb

    def __str__(self) -> str:
        return "\n\nRemote traceback (in the worker kernel):\n" + self.tb


_BY_KIND: dict[str, type[CallError]] = {
    "not_found": ToolNotFound,
    "invalid_arguments": InvalidArguments,
    "queue_full": QueueFull,
    "deadline": DeadlineExceeded,
    "cancelled": Cancelled,
    "worker_crashed": WorkerCrashed,
    "session_lost": SessionLost,
    "tool_tainted": ToolTainted,
    "job_lost": JobLost,
}
_BY_NAME: dict[str, type[KernelpitError]] = {
    cls.__name__: cls for cls in (StartError, PoolClosed, BridgeError, BridgeNotFound,
                                  Unauthenticated, ToolNotFound, SessionNotFound,
                                  WorkerNotFound, PoolNotFound, JobNotFound, InvalidArguments,
                                  QueueFull, DeadlineExceeded, Cancelled, WorkerCrashed,
                                  ToolTainted, SessionLost, JobLost)
}


def from_payload(err: dict[str, Any], *, tool: str | None = None, call_id: int | None = None,
                 worker: int | None = None) -> BaseException:
    """Rebuild the exception a caller should see from its structured form."""
    kind = err.get("kind", "tool")
    type_name = err.get("type", "Exception")
    module = err.get("module", "")
    message = err.get("message", "")
    tb = err.get("traceback", "")
    where = dict(tool=tool, call_id=call_id, worker=worker, remote_traceback=tb)
    exc = _rebuild(err, kind, type_name, module, message, tb, where)
    if "index" in err:
        exc.batch_index = err["index"]  # type: ignore[attr-defined]
    return exc


def _rebuild(err: dict[str, Any], kind: str, type_name: str, module: str, message: str, tb: str,
             where: dict[str, Any]) -> BaseException:
    if kind == "tool":
        if module == "builtins":
            cls = getattr(builtins, type_name, None)
            if isinstance(cls, type) and issubclass(cls, Exception):
                args = err.get("args")
                try:
                    exc: BaseException = cls(*args) if args is not None else cls(message)
                except Exception:
                    exc = None  # type: ignore[assignment]
                if exc is not None:
                    exc.remote_traceback = tb  # type: ignore[attr-defined]
                    if tb:
                        exc.__cause__ = RemoteTraceback(tb)
                    return exc
        return RemoteError(message, remote_type=type_name, remote_module=module, **where)
    cls = _BY_NAME.get(type_name) if module == "kernelpit" else None
    if cls is None or not issubclass(cls, CallError):
        cls = _BY_KIND.get(kind, RemoteError)
    if issubclass(cls, WorkerCrashed):
        return cls(message, exit_code=err.get("exit_code"), signal=err.get("signal"),
                   reason=err.get("reason"), **where)
    if cls is RemoteError:
        return RemoteError(message, remote_type=type_name, remote_module=module, **where)
    if issubclass(cls, CallError):
        return cls(message, **where)
    return cls(message)


def to_payload(exc: BaseException) -> dict[str, Any]:
    """The structured form of an exception (inverse of :func:`from_payload`)."""
    if isinstance(exc, RemoteError):
        return {"kind": "tool", "type": exc.remote_type, "module": exc.remote_module,
                "message": exc.message, "traceback": exc.remote_traceback, "args": None}
    if isinstance(exc, KernelpitError):
        payload = {"kind": exc.kind, "type": type(exc).__name__, "module": "kernelpit",
                   "message": str(exc), "args": None,
                   "traceback": getattr(exc, "remote_traceback", "")}
        if isinstance(exc, WorkerCrashed):
            payload.update(exit_code=exc.exit_code, signal=exc.signal, reason=exc.reason)
        return payload
    return {"kind": "tool", "type": type(exc).__qualname__, "module": type(exc).__module__,
            "message": str(exc), "args": None,
            "traceback": getattr(exc, "remote_traceback", "")}
