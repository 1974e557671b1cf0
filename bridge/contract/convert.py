"""Core objects <-> ``kernelpit.v1`` messages: call requests, events, tools, workers, sessions.

Used by both ends: the servicer decodes requests and encodes events and
infos, the remote client does the reverse.  Values go through
:mod:`.values`, exceptions through :mod:`.errors`.
"""

from __future__ import annotations

import contextlib
import json
from typing import Any, Iterator

from .. import events as ev
from ..exceptions import InvalidArguments
from ..info import SessionInfo, TenantLoad, TokenInfo, ToolInfo, WorkerInfo
from ..options import DEFAULTS, CallOptions
from ..v1 import bridge_pb2 as pb
from .. import watch
from ..telemetry import tracing
from ..telemetry.events import TelemetryEvent
from . import errors
from .values import PLAIN, BadValue, Codec, from_value, to_value

# -- call requests ---------------------------------------------------------------------------

_NO_OPTIONS = pb.CallOptions()


def options_to_proto(o: CallOptions) -> pb.CallOptions:
    if o.deadline is None and o.session is None and o.pool is None and o.worker is None \
            and o.idempotent is None and o.tenant is None and not o.priority:
        return _NO_OPTIONS
    return pb.CallOptions(deadline=o.deadline, session=o.session, pool=o.pool, worker=o.worker,
                          idempotent=o.idempotent, tenant=o.tenant, priority=o.priority)


_DEFAULT_OPTIONS = DEFAULTS


def options_from_proto(o: pb.CallOptions) -> CallOptions:
    if not o.ListFields():
        return _DEFAULT_OPTIONS
    return CallOptions(
        deadline=o.deadline if o.HasField("deadline") else None,
        session=o.session if o.HasField("session") else None,
        pool=o.pool if o.HasField("pool") else None,
        worker=o.worker if o.HasField("worker") else None,
        idempotent=o.idempotent if o.HasField("idempotent") else None,
        tenant=o.tenant if o.HasField("tenant") else None, priority=o.priority)


def call_request(tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions,
                 codec: Codec = PLAIN) -> pb.CallRequest:
    """The request of a call; a value that cannot be sent raises InvalidArguments, as the
    embedded pool does."""
    req = pb.CallRequest(tool=tool, options=options_to_proto(options))
    trace = tracing.carrier()
    if trace is not None:
        req.options.trace_context.update(trace)
    with unsendable(tool):
        if args:
            req.args.CopyFrom(codec.encode(list(args)))
        if kwargs:
            req.kwargs.CopyFrom(codec.encode(kwargs))
    return req


@contextlib.contextmanager
def unsendable(tool: str) -> Iterator[None]:
    """Turn a value the client cannot encode into the InvalidArguments a pool raises."""
    try:
        yield
    except BadValue as exc:
        raise InvalidArguments(f"an argument of {tool}() cannot be sent: {exc}",
                               tool=tool) from None


def call_from_request(req: pb.CallRequest, codec: Codec = PLAIN
                      ) -> tuple[list[Any], dict[str, Any], CallOptions]:
    """(args, kwargs, options) of a request; malformed ones raise BadValue (INVALID_ARGUMENT)."""
    args, kwargs, failure = [], {}, None
    try:
        args = codec.decode(req.args, "args") if req.HasField("args") else []
    except BadValue as exc:
        failure = exc  # decode kwargs anyway: the blobs they reference are used up either way
    kwargs = codec.decode(req.kwargs, "kwargs") if req.HasField("kwargs") else {}
    if failure is not None:
        raise failure
    if args is None:
        args = []
    if kwargs is None:
        kwargs = {}
    if not isinstance(args, list):
        raise BadValue(f"args must be a JSON array of positional arguments, got {type(args).__name__}")
    if not isinstance(kwargs, dict):
        raise BadValue(f"kwargs must be a JSON object of keyword arguments, got {type(kwargs).__name__}")
    return args, kwargs, options_from_proto(req.options)


def map_request(tool: str, columns: list[list[Any]], options: CallOptions,
                chunksize: int | None, codec: Codec = PLAIN) -> pb.MapRequest:
    with unsendable(tool):
        encoded = codec.encode(columns)
    req = pb.MapRequest(tool=tool, options=options_to_proto(options), chunksize=chunksize)
    req.columns.CopyFrom(encoded)  # not MapRequest(columns=...): see framing.batch
    trace = tracing.carrier()
    if trace is not None:
        req.options.trace_context.update(trace)
    return req


def map_from_request(req: pb.MapRequest, codec: Codec = PLAIN
                     ) -> tuple[list[list[Any]], CallOptions, int | None]:
    """(argument columns, options, chunksize) of a Map request; malformed ones raise BadValue."""
    chunksize = req.chunksize if req.HasField("chunksize") else None
    options = options_from_proto(req.options)
    if req.HasField("columns"):
        if req.HasField("items"):
            raise BadValue("set either items or columns of a Map request, not both")
        columns = codec.decode(req.columns, "columns")
        if columns is None:
            return [], options, chunksize
        if not isinstance(columns, list) or not all(isinstance(c, list) for c in columns):
            raise BadValue("columns must be a JSON array of arrays (column i: the i-th "
                           "positional argument of every call)")
        if len({len(c) for c in columns}) > 1:
            raise BadValue("columns must all have the same length (one entry per call); got "
                           f"lengths {[len(c) for c in columns]}")
        return columns, options, chunksize
    items = codec.decode(req.items, "items")
    if items is None:
        return [], options, chunksize
    if not isinstance(items, list) or not all(isinstance(i, list) for i in items):
        raise BadValue("items must be a JSON array of arrays (the positional arguments of "
                       "each call)")
    if not items:
        return [], options, chunksize
    width = len(items[0])
    for index, item in enumerate(items):
        if len(item) != width:
            raise BadValue(f"every item of a map must have the same number of arguments: item "
                           f"{index} has {len(item)}, item 0 has {width}")
    if width == 0:
        raise BadValue("map items need at least one argument each; run a tool without "
                       "arguments with Call")
    return [list(c) for c in zip(*items)], options, chunksize


# -- events ----------------------------------------------------------------------------------

def event_to_proto(e: ev.Event, codec: Codec = PLAIN) -> pb.Event:
    out = pb.Event(call_id=e.call_id, time=e.time)
    kind = e.kind
    if kind == "progress":
        assert isinstance(e, ev.Progress)
        out.progress.done = e.done
        if e.total is not None:
            out.progress.total = e.total
        out.progress.message = e.message
    elif kind == "stdout":
        out.stdout.text = e.text  # type: ignore[attr-defined]
    elif kind == "stderr":
        out.stderr.text = e.text  # type: ignore[attr-defined]
    elif kind == "partial":
        out.partial.CopyFrom(codec.encode(e.value))  # type: ignore[attr-defined]
        out.partial.SetInParent()
    elif kind == "result":
        out.result.CopyFrom(codec.encode(e.value))  # type: ignore[attr-defined]
        out.result.SetInParent()
    elif kind == "error":
        out.error.CopyFrom(errors.to_proto(e.error))  # type: ignore[attr-defined]
    elif kind == "queued":
        out.queued.position = e.position  # type: ignore[attr-defined]
        out.queued.SetInParent()
    elif kind == "started":
        out.started.worker = e.worker  # type: ignore[attr-defined]
        out.started.SetInParent()
    elif kind == "display":
        out.display.data.CopyFrom(to_value(e.data))  # type: ignore[attr-defined]
        out.display.metadata.CopyFrom(to_value(e.metadata))  # type: ignore[attr-defined]
        out.display.SetInParent()
    return out


def event_from_proto(m: pb.Event, codec: Codec = PLAIN) -> ev.Event:
    kind = m.WhichOneof("kind")
    base = dict(call_id=m.call_id, time=m.time)
    if kind == "progress":
        p = m.progress
        return ev.Progress(done=p.done, total=p.total if p.HasField("total") else None,
                           message=p.message, **base)
    if kind == "stdout":
        return ev.Stdout(text=m.stdout.text, **base)
    if kind == "stderr":
        return ev.Stderr(text=m.stderr.text, **base)
    if kind == "partial":
        return ev.Partial(value=codec.decode(m.partial, "partial"), **base)
    if kind == "result":
        return ev.Result(value=codec.decode(m.result, "result"), **base)
    if kind == "error":
        return ev.Error(error=errors.from_proto(m.error), **base)
    if kind == "queued":
        return ev.Queued(position=m.queued.position, **base)
    if kind == "started":
        return ev.Started(worker=m.started.worker, **base)
    if kind == "display":
        return ev.Display(data=from_value(m.display.data) or {},
                          metadata=from_value(m.display.metadata) or {}, **base)
    raise BadValue(f"an event of unknown kind {kind!r}; upgrade kernelpit on this client")


# -- tools, workers, sessions ------------------------------------------------------------------

def tool_to_proto(t: ToolInfo) -> pb.Tool:
    return pb.Tool(name=t.name, doc=t.doc, signature=t.signature,
                   parameters_schema=json.dumps(t.parameters), pool=t.pool, module=t.module,
                   thread_safe=t.thread_safe, idempotent=t.idempotent, streaming=t.streaming)


def tool_from_proto(m: pb.Tool) -> ToolInfo:
    return ToolInfo(name=m.name, doc=m.doc, signature=m.signature,
                    parameters=json.loads(m.parameters_schema or "{}"), pool=m.pool,
                    module=m.module, thread_safe=m.thread_safe, idempotent=m.idempotent,
                    streaming=m.streaming)


def worker_to_proto(w: WorkerInfo) -> pb.Worker:
    m = pb.Worker(id=w.id, pool=w.pool, state=w.state, pid=w.pid or 0,
                  connection_file=w.connection_file or "", rss=w.rss, cpu=w.cpu, calls=w.calls,
                  uptime=w.uptime, current_call=w.current_call or "",
                  current_call_seconds=w.current_call_seconds, sessions=w.sessions,
                  recycles=w.recycles, recycle_reason=w.recycle_reason or "",
                  recycle_in=w.recycle_in, spare=getattr(w, "spare", False),
                  node=w.node or "", host=w.host or "")
    if w.last_heartbeat is not None:
        m.last_heartbeat = w.last_heartbeat
    return m


_WORKER_FIELDS = set(WorkerInfo.__dataclass_fields__)


def worker_from_proto(m: pb.Worker) -> WorkerInfo:
    extra = {"spare": m.spare} if "spare" in _WORKER_FIELDS else {}
    return WorkerInfo(**extra, recycle_in=dict(m.recycle_in), id=m.id, pool=m.pool, state=m.state, pid=m.pid or None,
                      connection_file=m.connection_file or None, rss=m.rss, cpu=m.cpu,
                      calls=m.calls, uptime=m.uptime, current_call=m.current_call or None,
                      current_call_seconds=m.current_call_seconds, sessions=m.sessions,
                      recycles=m.recycles, recycle_reason=m.recycle_reason or None,
                      last_heartbeat=m.last_heartbeat if m.HasField("last_heartbeat") else None,
                      node=m.node or None, host=m.host or None)


def session_to_proto(s: SessionInfo) -> pb.Session:
    m = pb.Session(id=s.id, pool=s.pool, worker=s.worker, created=s.created,
                   last_used=s.last_used, calls=s.calls, metadata=s.metadata, lost=s.lost or "")
    if s.ttl is not None:
        m.ttl = s.ttl
    return m


def session_from_proto(m: pb.Session) -> SessionInfo:
    return SessionInfo(id=m.id, pool=m.pool, worker=m.worker, created=m.created,
                       last_used=m.last_used, ttl=m.ttl if m.HasField("ttl") else None,
                       calls=m.calls, metadata=dict(m.metadata), lost=m.lost or None)


# -- tokens ----------------------------------------------------------------------------------

def token_to_proto(t: Any) -> pb.TokenInfo:
    """A :class:`TokenInfo` (or the bridge's stored token, which has the same fields)."""
    return pb.TokenInfo(name=t.name, role=t.role, created=t.created, last_used=t.last_used)


def token_from_proto(m: pb.TokenInfo, secret: str | None = None) -> TokenInfo:
    return TokenInfo(name=m.name, role=m.role, created=m.created,
                     last_used=m.last_used if m.HasField("last_used") else None,
                     secret=secret or None)


# -- watch -----------------------------------------------------------------------------------

_CHANGES = {"opened": pb.SESSION_CHANGE_OPENED, "closed": pb.SESSION_CHANGE_CLOSED,
            "lost": pb.SESSION_CHANGE_LOST}
_CHANGE_NAMES = {v: k for k, v in _CHANGES.items()}


def watch_to_proto(e: "watch.WatchEvent") -> pb.WatchEvent:
    out = pb.WatchEvent(time=e.time)
    if isinstance(e, watch.Snapshot):
        out.snapshot.workers.extend(worker_to_proto(w) for w in e.workers)
        out.snapshot.sessions.extend(session_to_proto(s) for s in e.sessions)
        out.snapshot.tenants.extend(pb.TenantLoad(pool=t.pool, tenant=t.tenant, waiting=t.waiting,
                                                  running=t.running) for t in e.tenants)
        out.snapshot.SetInParent()
    elif isinstance(e, watch.WorkerChanged):
        out.worker_changed.worker.CopyFrom(worker_to_proto(e.worker))
        out.worker_changed.previous_state = e.previous_state
        out.worker_changed.removed = e.removed
    else:
        out.session_changed.session.CopyFrom(session_to_proto(e.session))
        out.session_changed.change = _CHANGES[e.change]
    return out


def watch_from_proto(m: pb.WatchEvent) -> "watch.WatchEvent":
    kind = m.WhichOneof("kind")
    if kind == "snapshot":
        return watch.Snapshot([worker_from_proto(w) for w in m.snapshot.workers],
                              [session_from_proto(s) for s in m.snapshot.sessions],
                              [TenantLoad(t.pool, t.tenant, t.waiting, t.running)
                               for t in m.snapshot.tenants], time=m.time)
    if kind == "worker_changed":
        c = m.worker_changed
        return watch.WorkerChanged(worker_from_proto(c.worker), previous_state=c.previous_state,
                                   removed=c.removed, time=m.time)
    if kind == "session_changed":
        c = m.session_changed
        return watch.SessionChanged(session_from_proto(c.session),
                                    change=_CHANGE_NAMES.get(c.change, "opened"), time=m.time)
    raise BadValue(f"a watch event of unknown kind {kind!r}; upgrade kernelpit on this client")


# -- telemetry -------------------------------------------------------------------------------

def telemetry_to_proto(e: TelemetryEvent) -> pb.TelemetryEvent:
    out = pb.TelemetryEvent(kind=e.kind, time=e.time, pool=e.pool, tool=e.tool,
                            worker=e.worker, call_id=e.call_id)
    if e.data:
        out.data.CopyFrom(to_value(e.data))
    return out


def telemetry_from_proto(m: pb.TelemetryEvent) -> TelemetryEvent:
    return TelemetryEvent(m.kind, m.time, m.pool, m.worker if m.HasField("worker") else None,
                          m.tool, m.call_id if m.HasField("call_id") else None,
                          from_value(m.data, "data") if m.HasField("data") else {})
