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
    "permission_denied": (K.ERROR_KIND_PERMISSION_DENIED, Code.PERMISSION_DENIED),
}
KIND_NAMES: dict[int, str] = {enum: name for name, (enum, _) in KINDS.items()}

# status code -> exception class, for statuses that carry no structured error
_BY_CODE: dict[grpc.StatusCode, type[kx.KernelpitError]] = {
    Code.UNAUTHENTICATED: kx.Unauthenticated,
    Code.PERMISSION_DENIED: kx.PermissionDenied,
    Code.NOT_FOUND: kx.NotFound,
    Code.INVALID_ARGUMENT: kx.InvalidArguments,
    Code.DEADLINE_EXCEEDED: kx.DeadlineExceeded,
    Code.CANCELLED: kx.Cancelled,
    Code.ABORTED: kx.WorkerCrashed,
    Code.FAILED_PRECONDITION: kx.SessionLost,
}


# -- server side ---------------------------------------------------------------------------

def to_proto(exc: BaseException) -> pb.RemoteException:
    """The structured form of any exception raised while serving a call: its
    :class:`~kernelpit.exceptions.ErrorPayload`, field for field."""
    payload = kx.ErrorPayload.of(exc)
    if payload.kind == "tool" and not hasattr(exc, "remote_traceback") \
            and isinstance(exc, (BadValue, TypeError, ValueError)):
        payload.kind = "invalid_arguments"   # bad input rejected by the core or the service
    elif payload.kind == "tool" and not isinstance(exc, kx.RemoteError) \
            and not hasattr(exc, "remote_traceback"):
        payload.kind = "internal"            # not raised by a tool: a fault of the bridge
    err = pb.RemoteException(kind=KINDS.get(payload.kind, KINDS["internal"])[0],
                             type=payload.type, module=payload.module, message=payload.message,
                             traceback=payload.traceback, tool=payload.tool or "",
                             call_id=payload.call_id or 0, signal=payload.signal or "",
                             reason=payload.reason or "")
    for name in ("worker", "exit_code", "map_index", "until"):
        value = getattr(payload, name)
        if value is not None:
            setattr(err, name, value)
    if payload.args is not None:
        try:
            err.args.CopyFrom(to_value(payload.args))
        except BadValue:
            pass
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
    args = None
    if err.HasField("args"):
        try:
            args = from_value(err.args)
        except BadValue:
            args = None
    optional = {name: getattr(err, name) if err.HasField(name) else None
                for name in ("worker", "exit_code", "map_index", "until")}
    return kx.ErrorPayload(
        kind=KIND_NAMES.get(err.kind, "internal"), type=err.type, module=err.module,
        message=err.message, traceback=err.traceback,
        args=args if isinstance(args, list) else None, tool=err.tool or None,
        call_id=err.call_id or None, signal=err.signal or None, reason=err.reason or None,
        **optional).exception()


def from_rpc_error(exc: grpc.RpcError, address: str = "") -> BaseException:
    """Turn a failed RPC into the matching Kernelpit (or builtin) exception."""
    for key, value in exc.trailing_metadata() or ():
        if key == ERROR_KEY:
            try:
                return from_proto(pb.RemoteException.FromString(value))
            except Exception:  # a broken error payload: fall back to the status code
                break
    return from_status(exc.code(), exc.details() or "", address)


def from_status(code: grpc.StatusCode, details: str, address: str = "") -> BaseException:
    """The exception for a status without a structured error (gRPC's, or the blob lane's)."""
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
