"""Call options: per-call settings, kept apart from a tool's own keyword arguments."""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any


@dataclass(frozen=True)
class CallOptions:
    """What ``pool.options(...)`` sets for the calls made through it.

    deadline    seconds from submission until DeadlineExceeded (the tool is interrupted)
    session     run in this session (on the worker that holds it)
    pool        the named pool to use (default: the one serving the tool)
    worker      pin the call to this worker id
    idempotent  safe to retry on a fresh worker after a crash (default: the tool's flag)
    tenant      whose call it is, for fair queuing and quotas (default: the one tenant of an
                embedded pool; over a bridge the caller's token, and only an admin token may
                name another)
    priority    higher runs first among the same tenant's waiting calls (default 0); between
                tenants fairness still holds
    """

    deadline: float | None = None
    session: str | None = None
    pool: str | None = None
    worker: int | None = None
    idempotent: bool | None = None
    tenant: str | None = None
    priority: int = 0

    def __post_init__(self) -> None:
        if self.tenant is not None and (not isinstance(self.tenant, str) or not self.tenant):
            raise TypeError(f"tenant must be a non-empty str, got {self.tenant!r}")
        if isinstance(self.priority, bool) or not isinstance(self.priority, int):
            raise TypeError(f"priority must be an int (higher runs first), got {self.priority!r}")

    def merged(self, **changes: Any) -> "CallOptions":
        """These options with ``changes`` applied; an unknown name raises TypeError."""
        unknown = set(changes) - _NAMES
        if unknown:
            raise TypeError(f"unknown call option(s): {', '.join(sorted(unknown))}; "
                            f"known: {', '.join(sorted(_NAMES | {'display'}))}")
        return CallOptions(**{**self.__dict__, **changes})


_NAMES = {f.name for f in fields(CallOptions)}
#: the options of a call that sets none (one shared object: ``is`` tells it apart cheaply)
DEFAULTS = CallOptions()
