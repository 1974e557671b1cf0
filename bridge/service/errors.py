"""Exceptions <-> gRPC status and ``RemoteException``: the one place that maps them.

Server side: :func:`to_status` turns any exception a call raised into a
status code, a details string and the structured ``RemoteException``
(attached as binary trailing metadata ``kernelpit-error-bin``).
Client side: :func:`from_rpc_error` turns a failed RPC back into the same
exception class the embedded pool raises; when the status has no
structured error (it came from gRPC itself: connection refused, message too
large, a gRPC deadline), the status code alone picks the class.
"""

from __future__ import annotations

from typing import Any

import grpc

from .. import exceptions as kx
from ..v1 import values_pb2 as pb
from .values import BadValue, from_value, to_value

ERROR_KEY = "kernelpit-error-bin"

K = pb.ErrorKind
Code = grpc.StatusCode

# core kind string -> (proto enum, gRPC status code)
KINDS: dict[str, tuple[int, grpc.StatusCode]] = {
    "tool": (K.ERROR_KIND_TOOL, Code.UNKNOWN),
    "worker_crashed": (K.ERROR_KIND_WORKER_CRASHED, Code.ABORTED),
    "session_lost": (K.ERROR_KIND_SESSION_LOST, Code.FAILED_PRECONDITION),
    "deadline": (K.ERROR_KIND_DEADLINE, Code.DEADLINE_EXCEEDED),
    "cancelled": (K.ERROR_KIND_CANCELLED, Code.CANCELLED),
    "queue_full": (K.ERROR_KIND_QUEUE_FULL, Code.RESOURCE_EXHAUSTED),
    "invalid_arguments": (K.ERROR_KIND_INVALID_ARGUMENTS, Code.INVALID_ARGUMENT),
    "not_found": (K.ERROR_KIND_NOT_FOUND, Code.NOT_FOUND),
    "unavailable": (K.ERROR_KIND_UNAVAILABLE, Code.UNAVAILABLE),
    "unauthenticated": (K.ERROR_KIND_UNAUTHENTICATED, Code.UNAUTHENTICATED),
    "closed": (K.ERROR_KIND_CLOSED, Code.UNAVAILABLE),
    "start": (K.ERROR_KIND_START, Code.UNAVAILABLE),
    "internal": (K.ERROR_KIND_INTERNAL, Code.INTERNAL),
    "tool_tainted": (K.ERROR_KIND_TOOL_TAINTED, Code.UNAVAILABLE),
    "job_lost": (K.ERROR_KIND_JOB_LOST, Code.ABORTED),
}
KIND_NAMES: dict[int, str] = {enum: name for name, (enum, _) in KINDS.items()}

# status code -> exception class, for statuses that carry no structured error
_BY_CODE: dict[grpc.StatusCode, type[kx.KernelpitError]] = {
    Code.UNAUTHENTICATED: kx.Unauthenticated,
    Code.NOT_FOUND: kx.NotFound,
    Code.INVALID_ARGUMENT: kx.InvalidArguments,
    Code.DEADLINE_EXCEEDED: kx.DeadlineExceeded,
    Code.CANCELLED: kx.Cancelled,
    Code.ABORTED: kx.WorkerCrashed,
    Code.FAILED_PRECONDITION: kx.SessionLost,
}


# -- server side ---------------------------------------------------------------------------

def to_proto(exc: BaseException) -> pb.RemoteException:
    """The structured form of any exception raised while serving a call."""
    err = pb.RemoteException()
    if isinstance(exc, kx.RemoteError):
        kind, err.type, err.module = "tool", exc.remote_type, exc.remote_module
        err.message = exc.message
    elif isinstance(exc, kx.KernelpitError):
        kind, err.type, err.module = exc.kind, type(exc).__name__, "kernelpit"
        err.message = exc.message if isinstance(exc, kx.CallError) else str(exc)
    else:
        err.type, err.module, err.message = type(exc).__qualname__, type(exc).__module__, str(exc)
        if hasattr(exc, "remote_traceback"):
            kind = "tool"                      # raised by a tool, rebuilt by the core
        elif isinstance(exc, (BadValue, TypeError, ValueError)):
            kind = "invalid_arguments"         # bad input rejected by the core or the service
        else:
            kind = "internal"
        try:
            err.args.CopyFrom(to_value(list(exc.args)))
        except BadValue:
            pass
    err.kind = KINDS.get(kind, KINDS["internal"])[0]
    err.traceback = getattr(exc, "remote_traceback", "") or ""
    if isinstance(exc, kx.CallError):
        err.tool = exc.tool or ""
        err.call_id = exc.call_id or 0
        if exc.worker is not None:
            err.worker = exc.worker
    map_index = getattr(exc, "map_index", None)
    if isinstance(map_index, int):
        err.map_index = map_index
    if isinstance(exc, kx.WorkerCrashed):
        if exc.exit_code is not None:
            err.exit_code = exc.exit_code
        err.signal = exc.signal or ""
    return err


def status_of(err: pb.RemoteException) -> grpc.StatusCode:
    return KINDS.get(KIND_NAMES.get(err.kind, "internal"), KINDS["internal"])[1]


def to_status(exc: BaseException) -> tuple[grpc.StatusCode, str, tuple[tuple[str, bytes], ...]]:
    """(code, details, trailing metadata) of a failed RPC."""
    err = to_proto(exc)
    details = err.message if err.module == "kernelpit" else f"{err.type}: {err.message}"
    return status_of(err), details, ((ERROR_KEY, err.SerializeToString()),)


# -- client side ---------------------------------------------------------------------------

def from_proto(err: pb.RemoteException) -> BaseException:
    """The exception the embedded pool would have raised (builtins stay builtins)."""
    exc = _rebuild(err)
    if err.HasField("map_index"):
        exc.map_index = err.map_index  # type: ignore[attr-defined]
    return exc


def _rebuild(err: pb.RemoteException) -> BaseException:
    kind = KIND_NAMES.get(err.kind, "internal")
    where: dict[str, Any] = dict(tool=err.tool or None, call_id=err.call_id or None,
                                 worker=err.worker if err.HasField("worker") else None)
    if err.module == "kernelpit":
        cls = getattr(kx, err.type, None)
        if isinstance(cls, type) and issubclass(cls, kx.KernelpitError) \
                and not issubclass(cls, kx.CallError):
            return cls(err.message)
    args = None
    if err.HasField("args"):
        try:
            args = from_value(err.args)
        except BadValue:
            args = None
    payload = {"kind": "tool" if err.module == "builtins" else kind, "type": err.type,
               "module": err.module, "message": err.message, "traceback": err.traceback,
               "args": args if isinstance(args, list) else None,
               "exit_code": err.exit_code if err.HasField("exit_code") else None,
               "signal": err.signal or None}
    return kx.from_payload(payload, **where)


def from_rpc_error(exc: grpc.RpcError, address: str = "") -> BaseException:
    """Turn a failed RPC into the matching Kernelpit (or builtin) exception."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_KEY:
            try:
                return from_proto(pb.RemoteException.FromString(value))
            except Exception:  # a broken error payload: fall back to the status code
                break
    code, details = exc.code(), exc.details() or ""
    where = f" at {address}" if address else ""
    if code == Code.UNAVAILABLE:
        return kx.BridgeError(f"the bridge{where} is unavailable ({details}); is it still "
                              "running? Start one with `kernelpit serve --adapter MODULE`")
    if code == Code.UNAUTHENTICATED:
        return kx.Unauthenticated(f"the bridge{where} refused the token ({details}); pass the "
                                  "token from its discovery file, or connect() without arguments")
    if code == Code.RESOURCE_EXHAUSTED:
        return kx.InvalidArguments(f"the bridge{where} rejected the message ({details}); send "
                                   "less data per call or raise the bridge's --max-message-size")
    cls = _BY_CODE.get(code)
    if cls is not None:
        return cls(details)
    return kx.BridgeError(f"the bridge{where} failed the request: {code.name}: {details}")
