"""Kernelpit: run Python tools in a pool of managed Jupyter kernels.

::

    import kernelpit

    with kernelpit.Pool(adapters=["mytools"], workers=2) as pool:
        pool.call("add", a=1, b=2)
        for ev in pool.stream("train", epochs=3):
            print(ev.kind)

``kernelpit.aio`` has the asyncio twins.  Tools are written with
:func:`kernelpit.kernels.tool`.  Every exception is in :mod:`kernelpit.exceptions`.
"""

from typing import TYPE_CHECKING, Any

from . import events
from .config import PoolConfig, SchedulerConfig, TenantSettings, parse_size
from .events import Display, Error, Event, Partial, Progress, Queued, Result, Started, Stderr, Stdout
from .exceptions import (BridgeError, BridgeNotFound, CallError, Cancelled, DeadlineExceeded,
                         InvalidArguments, JobLost, JobNotFound, JobsDisabled, KernelpitError, NotFound,
                         PermissionDenied, PoolClosed, PoolNotFound, QueueFull, RemoteError,
                         RemoteTraceback,
                         SessionLost, SessionNotFound, StartError, ToolNotFound, ToolTainted,
                         Unauthenticated, WorkerCrashed, WorkerNotFound)
from .info import SessionInfo, ToolInfo, WorkerInfo
from .jobs.model import JobEvent, JobInfo
from .options import CallOptions

if TYPE_CHECKING:
    from . import aio, remote as _remote
    from .local import Pool
    from .sync import Caller, Job, Session

# The pool machinery (jupyter_client, psutil, the manager) loads on first use: every worker
# kernel imports this package for kernelpit.kernels, and must not pay for the control plane.
_LAZY = {"Pool": ".local", "Session": ".sync", "Caller": ".sync", "Job": ".sync", "aio": ".aio"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        module = importlib.import_module(_LAZY[name], __name__)
        value = module if name == "aio" else getattr(module, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernelpit' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))

__version__ = "0.1.0"


def connect(address: str | None = None, token: str | None = None, *, timeout: float = 5.0,
            tls_ca: Any = None, tls_cert: Any = None, tls_key: Any = None,
            transport: str = "auto") -> "_remote.Client":
    """A client of a running bridge (``kernelpit serve``): the API of :class:`Pool`, plus
    ``address`` and ``server_info()``.

    With no arguments it finds the bridge through its discovery file; raises
    :class:`BridgeNotFound` when none answers.  (Imported on first use, so gRPC
    stays out of processes that never connect, such as the worker kernels.)

    A TLS bridge: ``tls_ca`` is the CA that signed its certificate, and for mutual TLS
    ``tls_cert`` and ``tls_key`` are this client's (paths to PEM files, or the PEM); the
    discovery file supplies the CA when connecting without arguments.  See
    docs/security.md.

    ``transport``: ``"auto"`` (the default) uses the bridge's Unix socket when the bridge
    runs on this machine as this user (calls at close to embedded speed, large Arrow values
    through shared memory), else gRPC; ``"grpc"`` forces gRPC; ``"local"`` fails when the
    bridge is elsewhere.  See docs/architecture.md (the local transport).
    """
    from .remote import connect as _connect
    return _connect(address, token, timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert,
                    tls_key=tls_key, transport=transport)


def load_ipython_extension(ip: Any) -> None:
    """``%load_ext kernelpit``: the ``%kp`` magics and panels (:mod:`kernelpit.widgets`)."""
    from .widgets import load_ipython_extension as load
    load(ip)


def unload_ipython_extension(ip: Any) -> None:
    from .widgets import unload_ipython_extension as unload
    unload(ip)


__all__ = [
    "Pool", "Session", "Caller", "connect", "CallOptions", "PoolConfig", "SchedulerConfig",
    "TenantSettings", "parse_size",
    "ToolInfo", "WorkerInfo", "SessionInfo", "JobInfo", "JobEvent", "Job",
    "events", "Event", "Queued", "Started", "Progress", "Stdout", "Stderr", "Display", "Partial",
    "Result", "Error",
    "KernelpitError", "StartError", "PoolClosed", "BridgeError", "BridgeNotFound",
    "Unauthenticated", "PermissionDenied", "CallError", "NotFound", "ToolNotFound", "SessionNotFound",
    "WorkerNotFound", "PoolNotFound", "JobNotFound", "InvalidArguments", "QueueFull", "DeadlineExceeded", "Cancelled",
    "WorkerCrashed", "ToolTainted", "SessionLost", "JobLost", "JobsDisabled", "RemoteError", "RemoteTraceback",
]
