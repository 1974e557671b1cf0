"""The telemetry event catalogue: what ``pool.subscribe()`` yields, embedded and remote.

Every event is a :class:`TelemetryEvent` with a ``kind`` from :data:`KINDS`, the wall-clock
``time`` it happened, the ``pool`` (named pool) it concerns, and, when they apply, the
``worker`` id, the ``tool`` name and the ``call_id``; ``data`` holds the kind's own fields
(plain JSON values, listed in :data:`KINDS`).  docs/observability.md is the reader's copy.

Events are pushed by the pool as things happen (never sampled), on the pool's event loop,
so all events (and so those of any one source: a worker, a call, a session) arrive in the
order they happened.
"""

from __future__ import annotations

import time as _time
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

#: kind -> (what happened, the fields of ``data``).  A contract: later checks use these names.
KINDS: dict[str, tuple[str, str]] = {
    "worker.starting": ("a worker kernel is being launched",
                        "spare (bool): a warm spare"),
    "worker.ready": ("a worker passed its readiness check",
                     "spare (bool); seconds (float): launch to ready"),
    "worker.recycled": ("a worker was replaced without downtime: its successor serves now; "
                        "it drains its calls and stops",
                        "reason: max_calls | ttl | memory | manual | unhealthy; "
                        "successor (int): the worker taking its place; calls (int) served"),
    "worker.crashed": ("a worker process ended without being asked to (or was killed by the "
                       "pool: restart, unhealthy, cancel grace)",
                       "reason: segfault | abort | bus_error | fpe | illegal_instruction | oom | "
                       "killed | terminated | signal | exit | restart | unhealthy | cancel_grace; "
                       "exit_code, signal, rss (bytes), calls_lost (int)"),
    "worker.unhealthy": ("a worker stopped answering its heartbeat or call-channel ping; it is "
                         "killed and replaced", "why (str)"),
    "tool.tainted": ("a tool crashed taint_threshold workers within taint_window seconds: it is "
                     "quarantined", "crashes (int), period (float s), until (epoch s)"),
    "tool.untainted": ("a tool's quarantine was lifted", "by: hand | expiry"),
    "call.queued": ("the pool accepted a call (its arguments checked)",
                    "waiting (int): entries in the pool's wait queue before it; tenant (str); "
                    "tenant_waiting (int): that tenant's calls waiting before it; "
                    "items (int, map chunks)"),
    "call.started": ("a call was sent to a worker", "queue_wait (float s); attempt (int)"),
    "call.finished": ("a call ended, in one of six outcomes",
                      "outcome: ok | error | crashed | cancelled | deadline | rejected; "
                      "queue_wait (float s), run_time (float s, null when it never ran), "
                      "error (exception type name, absent when ok); tenant (str)"),
    "session.opened": ("a session was opened on a worker", "session (id)"),
    "session.closed": ("a session was closed or expired",
                       "session (id); reason: closed | expired; lost (str, when its worker died)"),
    "job.submitted": ("a durable job was accepted (its arguments checked) and is being stored; "
                      "docs/jobs.md",
                      "job (id); attempt (int); state: queued | running"),
    "job.started": ("a job's call was sent to a worker", "job (id); attempt (int)"),
    "job.restarted": ("a job whose runner died while it ran is queued again (idempotent)",
                      "job (id); attempt (int): the attempt that starts now"),
    "job.finished": ("a job ended", "job (id); attempt (int); state: succeeded | failed | "
                     "cancelled | lost; seconds (float): from its start (lost, cancelled while "
                     "orphaned: from its submission)"),
    "orphans.reaped": ("at start, kernels left by dead runs were ended",
                       "kernels (int), runs (int), files (int)"),
    "telemetry.dropped": ("this subscriber fell behind and missed events: sent before the next "
                          "event it gets", "count (int): events missed"),
}

#: the outcomes of ``call.finished`` (and the ``outcome`` label of kernelpit_calls_total)
OUTCOMES = ("ok", "error", "crashed", "cancelled", "deadline", "rejected")


@dataclass(slots=True)
class TelemetryEvent:
    """One lifecycle event of a pool; see :data:`KINDS` for the kinds and their ``data``."""

    kind: str
    time: float = field(default_factory=_time.time)
    pool: str = ""
    worker: int | None = None
    tool: str = ""
    call_id: int | None = None
    data: dict[str, Any] = field(default_factory=dict)


def kind_filter(kinds: Iterable[str] | str | None) -> Callable[[str], bool] | None:
    """A test for event kinds: exact names, or prefixes written ``worker.*`` (``*``: all).
    None when every kind passes.  Raises ValueError naming the known kinds for a kind that
    matches none of them (a typo would otherwise wait forever)."""
    if kinds is None:
        return None
    if isinstance(kinds, str):
        kinds = [kinds]
    exact: set[str] = set()
    prefixes: list[str] = []
    for k in kinds:
        if k in ("*", ""):
            return None
        if k.endswith(".*"):
            prefix = k[:-1]
            if not any(name.startswith(prefix) for name in KINDS) and prefix != "job.":
                raise ValueError(f"no telemetry event kind starts with {prefix!r}; kinds: "
                                 f"{', '.join(KINDS)}")
            prefixes.append(prefix)
        elif k in KINDS or k.startswith("job."):
            exact.add(k)
        else:
            raise ValueError(f"unknown telemetry event kind {k!r}; kinds: {', '.join(KINDS)} "
                             "(or a prefix such as 'worker.*')")
    exact.add("telemetry.dropped")  # a gap is always reported
    prefix_tuple = tuple(prefixes)
    return lambda kind: kind in exact or kind.startswith(prefix_tuple)


def outcome_of(exc: BaseException | None) -> str:
    """The ``call.finished`` outcome of a call that raised ``exc`` (None: it returned)."""
    if exc is None:
        return "ok"
    from ..exceptions import (Cancelled, DeadlineExceeded, InvalidArguments, NotFound,
                              PoolClosed, QueueFull, SessionLost, ToolTainted, WorkerCrashed)
    if isinstance(exc, WorkerCrashed):
        return "crashed"
    if isinstance(exc, DeadlineExceeded):
        return "deadline"
    if isinstance(exc, (Cancelled, PoolClosed)):
        return "cancelled"
    if isinstance(exc, (QueueFull, InvalidArguments, NotFound, ToolTainted, SessionLost)):
        return "rejected"
    return "error"
