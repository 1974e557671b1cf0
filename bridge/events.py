"""Typed events of a streamed call, the same objects in-process and over gRPC.

``pool.stream(...)`` yields them in order: ``queued``, ``started``, then any
number of ``progress`` / ``stdout`` / ``stderr`` / ``display`` / ``partial``,
and last exactly one ``result`` or ``error``.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any, ClassVar


@dataclass
class Event:
    """Base of every event.  ``kind`` names the type; ``call_id`` the call."""

    kind: ClassVar[str] = "event"
    call_id: int = 0
    time: float = field(default_factory=time.time, repr=False, compare=False)


@dataclass
class Queued(Event):
    """The call is waiting for a free worker; ``position`` in the queue (0 = next)."""

    kind: ClassVar[str] = "queued"
    position: int = 0


@dataclass
class Started(Event):
    """The call was handed to ``worker``."""

    kind: ClassVar[str] = "started"
    worker: int = 0


@dataclass
class Progress(Event):
    """``done`` of ``total`` (None when unknown), with a ``message``."""

    kind: ClassVar[str] = "progress"
    done: float = 0
    total: float | None = None
    message: str = ""


@dataclass
class Stdout(Event):
    """Text the tool printed."""

    kind: ClassVar[str] = "stdout"
    text: str = ""


@dataclass
class Stderr(Event):
    """Text the tool wrote to stderr."""

    kind: ClassVar[str] = "stderr"
    text: str = ""


@dataclass
class Display(Event):
    """A rich display: ``data`` is a Jupyter mime bundle, ``metadata`` its metadata."""

    kind: ClassVar[str] = "display"
    data: dict[str, Any] = field(default_factory=dict)
    metadata: dict[str, Any] = field(default_factory=dict)

    def _repr_mimebundle_(self, include: Any = None, exclude: Any = None) -> Any:
        return self.data, self.metadata


@dataclass
class Partial(Event):
    """A value a generator tool yielded."""

    kind: ClassVar[str] = "partial"
    value: Any = None


@dataclass
class Result(Event):
    """The tool's return value; the last event of a successful call."""

    kind: ClassVar[str] = "result"
    value: Any = None


@dataclass
class Error(Event):
    """The call failed; ``error`` is the exception a blocking ``call`` would raise."""

    kind: ClassVar[str] = "error"
    error: BaseException | None = None

    def raise_(self) -> None:
        """Raise the error (for code that wants ``call`` semantics from a stream)."""
        assert self.error is not None
        raise self.error


KINDS: dict[str, type[Event]] = {cls.kind: cls for cls in
                                 (Queued, Started, Progress, Stdout, Stderr, Display, Partial,
                                  Result, Error)}
