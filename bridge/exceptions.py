"""Every exception Kernelpit raises, in one tree.

::

    KernelpitError
    ├── StartError            a pool (or a worker of it) could not start
    ├── PoolClosed            the pool or client was closed
    ├── JobsDisabled          this pool keeps no job store (Pool(store=...) enables jobs)
    ├── BridgeError           talking to a bridge service failed
    │   ├── BridgeNotFound    no running bridge was found (says how to start one)
    │   ├── Unauthenticated   the bridge refused the token
    │   └── PermissionDenied  the token is valid, but its role may not do this
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

Every class carries a ``kind`` string.  :class:`ErrorPayload` is the one
structured form of an exception that travels between workers, the pool, the
gRPC service, remote clients and the job store (:func:`to_payload` and
:func:`from_payload` are its dict form).
"""

from __future__ import annotations

import builtins
from dataclasses import dataclass, fields
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


class JobsDisabled(KernelpitError):
    """Jobs were asked of a pool without a job store: an embedded ``Pool()`` without
    ``store=``, or a bridge started with ``--no-store``; the message says how to enable them."""

    kind = "jobs_disabled"


class BridgeError(KernelpitError):
    """Talking to a bridge service failed."""

    kind = "unavailable"


class BridgeNotFound(BridgeError):
    """No running bridge service was found."""


class Unauthenticated(BridgeError):
    """The bridge refused the token."""

    kind = "unauthenticated"


class PermissionDenied(BridgeError):
    """The bridge knows the token, but its role (read, call, admin) does not allow this RPC;
    the message names the role it needs.  Ask the bridge's owner for such a token
    (``kernelpit token add NAME --role ROLE``)."""

    kind = "permission_denied"


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
                                  Unauthenticated, PermissionDenied, NotFound, ToolNotFound, SessionNotFound,
                                  WorkerNotFound, PoolNotFound, JobNotFound, InvalidArguments,
                                  QueueFull, DeadlineExceeded, Cancelled, WorkerCrashed,
                                  ToolTainted, SessionLost, JobLost)
}
#: the attributes that say where a call failed; builtin exceptions of tools carry them too
_WHERE = ("tool", "call_id", "worker")
#: the attributes of particular classes, carried as they are
_EXTRA = {WorkerCrashed: ("exit_code", "signal", "reason"), ToolTainted: ("until",)}


@dataclass
class ErrorPayload:
    """The structured form of an exception: how it travels from the worker to the pool, the
    bridge, a remote client and the job store (as a dict, :meth:`to_dict`, or as the gRPC
    ``RemoteException``, which has one field per attribute here).

    ``kind`` picks the class family (``"tool"``: the tool raised ``module.type``);
    ``map_index`` is the failing item of a ``map`` (relative to its chunk until the pool
    adds the chunk's start).
    """

    kind: str = "tool"
    type: str = "Exception"
    module: str = "builtins"
    message: str = ""
    traceback: str = ""
    args: list[Any] | None = None
    tool: str | None = None
    call_id: int | None = None
    worker: int | None = None
    exit_code: int | None = None
    signal: str | None = None
    reason: str | None = None
    until: float | None = None
    map_index: int | None = None

    @classmethod
    def of(cls, exc: BaseException) -> "ErrorPayload":
        """The payload of any exception; inverse of :meth:`exception`."""
        if isinstance(exc, RemoteError):
            payload = cls("tool", exc.remote_type, exc.remote_module, exc.message)
        elif isinstance(exc, KernelpitError):
            message = exc.message if isinstance(exc, CallError) else str(exc)
            payload = cls(exc.kind, type(exc).__name__, "kernelpit", message)
        else:
            payload = cls("tool", type(exc).__qualname__, type(exc).__module__, str(exc),
                          args=_json_safe(list(exc.args)))
        payload.traceback = getattr(exc, "remote_traceback", "") or ""
        for name in _WHERE + ("map_index",):
            setattr(payload, name, getattr(exc, name, None))
        for cls_, names in _EXTRA.items():
            if isinstance(exc, cls_):
                for name in names:
                    setattr(payload, name, getattr(exc, name))
        return payload

    def exception(self) -> BaseException:
        """The exception a caller sees: builtins stay builtins (``KeyError`` is a ``KeyError``,
        with ``.remote_traceback``, ``.tool``, ``.call_id``, ``.worker`` set and the remote
        traceback as ``__cause__``); kernelpit classes by name; any other type a RemoteError."""
        exc = self._build()
        if self.map_index is not None:
            exc.map_index = self.map_index  # type: ignore[attr-defined]
        return exc

    def _build(self) -> BaseException:
        where = {name: getattr(self, name) for name in _WHERE}
        if self.kind == "tool" or self.module == "builtins":
            if self.module == "builtins":
                exc = _builtin(self.type, self.args, self.message)
                if exc is not None:
                    exc.remote_traceback = self.traceback  # type: ignore[attr-defined]
                    for name, value in where.items():
                        setattr(exc, name, value)
                    if self.traceback:
                        exc.__cause__ = RemoteTraceback(self.traceback)
                    return exc
            return RemoteError(self.message, remote_type=self.type, remote_module=self.module,
                               remote_traceback=self.traceback, **where)
        cls = _BY_NAME.get(self.type) if self.module == "kernelpit" else None
        if cls is None:
            cls = _BY_KIND.get(self.kind, RemoteError)
        if not issubclass(cls, CallError):
            return cls(self.message)
        if cls is RemoteError:
            return RemoteError(self.message, remote_type=self.type, remote_module=self.module,
                               remote_traceback=self.traceback, **where)
        extra = {name: getattr(self, name) for c, names in _EXTRA.items()
                 if issubclass(cls, c) for name in names}
        return cls(self.message, remote_traceback=self.traceback, **where, **extra)

    def to_dict(self) -> dict[str, Any]:
        """JSON-safe, without the fields that are not set."""
        return {k: v for k, v in self.__dict__.items() if v is not None and v != ""}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "ErrorPayload":
        """Read a :meth:`to_dict`; unknown keys (from a newer sender) are ignored."""
        return cls(**{k: v for k, v in data.items() if k in _FIELDS})


_FIELDS = {f.name for f in fields(ErrorPayload)}


def _json_safe(args: list[Any]) -> list[Any] | None:
    """``args`` when they survive JSON as they are (then a builtin is rebuilt from them)."""
    from .kernels.markers import dumps
    try:
        dumps(args)
    except (TypeError, ValueError, RecursionError):
        return None
    return args


def _builtin(type_name: str, args: list[Any] | None, message: str) -> BaseException | None:
    cls = getattr(builtins, type_name, None)
    if not (isinstance(cls, type) and issubclass(cls, Exception)):
        return None
    try:
        return cls(*args) if args is not None else cls(message)
    except Exception:
        return None


def from_payload(err: dict[str, Any], **where: Any) -> BaseException:
    """Rebuild the exception a caller should see from its dict form; ``where`` (tool,
    call_id, worker) fills in what the payload does not say."""
    payload = ErrorPayload.from_dict(err)
    for name, value in where.items():
        if getattr(payload, name) is None:
            setattr(payload, name, value)
    return payload.exception()


def to_payload(exc: BaseException) -> dict[str, Any]:
    """The dict form of an exception (inverse of :func:`from_payload`)."""
    return ErrorPayload.of(exc).to_dict()
