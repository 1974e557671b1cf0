"""What a job is: its states, the :class:`JobInfo` a reader sees, and one journal entry."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Literal

from .. import events as ev
from ..exceptions import InvalidArguments, from_payload, to_payload

JobState = Literal["queued", "running", "succeeded", "failed", "cancelled", "lost"]
STATES: tuple[str, ...] = ("queued", "running", "succeeded", "failed", "cancelled", "lost")
#: states a job never leaves (its journal ends with a result or error event)
TERMINAL = frozenset({"succeeded", "failed", "cancelled", "lost"})
#: the journal kinds that end a job: exactly one, as its last entry
FINAL_KINDS = frozenset({"result", "error"})
RESTARTED = "restarted"


def check_state(state: str | None) -> str | None:
    """``state`` when it is a job state (or None); InvalidArguments listing them otherwise."""
    if state is not None and state not in STATES:
        raise InvalidArguments(f"unknown job state {state!r}; use {', '.join(STATES[:-1])} "
                               f"or {STATES[-1]}")
    return state


@dataclass
class JobInfo:
    """A snapshot of one job, as the store holds it.

    ``attempt`` counts runs (1 on the first; +1 for each re-run after its runner died),
    bounded by ``max_attempts``.  ``deadline`` is seconds from ``created``.  ``owner`` is
    the runner that holds it while queued or running (None once finished).  ``progress``
    is the last progress event's ``{"done", "total", "message"}``.  ``error`` is the
    exception :meth:`kernelpit.jobs.JobRunner.result` raises for a failed, cancelled or
    lost job.
    """

    id: str
    tool: str
    state: JobState = "queued"
    attempt: int = 1
    created: float = 0.0
    started: float | None = None
    finished: float | None = None
    worker: int | None = None
    progress: dict[str, Any] | None = None
    error: BaseException | None = None
    key: str | None = None
    idempotent: bool = False
    deadline: float | None = None
    session: str | None = None
    pool: str | None = None
    namespace: str = "default"
    max_attempts: int = 3
    owner: str | None = None
    last_seq: int = 0

    @property
    def done(self) -> bool:
        return self.state in TERMINAL


def error_from(payload: dict[str, Any] | None, tool: str) -> BaseException | None:
    """The exception a stored error payload stands for (see exceptions.to_payload)."""
    return None if payload is None else from_payload(payload, tool=tool)


@dataclass
class JobEvent:
    """One journal entry: ``seq`` 1, 2, 3, ... per job with no gap; ``kind`` is one of
    pool.stream()'s kinds or ``"restarted"``; ``data`` its fields (``value`` for partial
    and result, ``error`` as a structured payload, ``attempt`` for restarted).

    Fields read as attributes: ``event.text``, ``event.value``, ``event.attempt``;
    ``event.error`` is the rebuilt exception.
    """

    seq: int
    kind: str
    time: float
    data: dict[str, Any] = field(default_factory=dict)
    tool: str = ""

    def __getattr__(self, name: str) -> Any:
        data = self.__dict__.get("data")
        if data is None or name not in data:
            raise AttributeError(f"a {self.__dict__.get('kind')!r} job event has no {name!r}")
        if name == "error":
            return error_from(data["error"], self.__dict__.get("tool", ""))
        return data[name]

    def to_event(self) -> ev.Event | None:
        """The pool.stream() event this entry records (None for ``restarted``)."""
        cls = ev.KINDS.get(self.kind)
        if cls is None:
            return None
        fields = dict(self.data)
        if self.kind == "error":
            fields["error"] = self.error
        return cls(time=self.time, **fields)


def error_payload(exc: BaseException) -> dict[str, Any]:
    """The structured form of ``exc``, with a builtin exception's plain arguments kept, so
    that ``KeyError('k')`` comes back from the store as ``KeyError('k')``."""
    payload = to_payload(exc)
    if payload["module"] == "builtins" and all(
            isinstance(a, (str, int, float, bool, type(None))) for a in exc.args):
        payload["args"] = list(exc.args)
    return payload


def event_data(event: ev.Event) -> dict[str, Any]:
    """The journaled fields of a pool.stream() event (errors as structured payloads)."""
    kind = event.kind
    if kind == "progress":
        return {"done": event.done, "total": event.total, "message": event.message}  # type: ignore[attr-defined]
    if kind in ("stdout", "stderr"):
        return {"text": event.text}  # type: ignore[attr-defined]
    if kind in ("partial", "result"):
        return {"value": event.value}  # type: ignore[attr-defined]
    if kind == "error":
        return {"error": error_payload(event.error)}  # type: ignore[attr-defined]
    if kind == "display":
        return {"data": event.data, "metadata": event.metadata}  # type: ignore[attr-defined]
    if kind == "queued":
        return {"position": event.position}  # type: ignore[attr-defined]
    if kind == "started":
        return {"worker": event.worker}  # type: ignore[attr-defined]
    raise ValueError(f"unknown event kind {kind!r}")
