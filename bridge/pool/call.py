"""A call in flight, from submission to its last event."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .. import events as ev
from ..backlog import AsyncBacklog
from ..exceptions import InvalidArguments, from_payload
from ..kernels.arrow import Transport, reclaim
from ..kernels.protocol import EncodeError, encode
from ..options import CallOptions

if TYPE_CHECKING:
    from .worker import Worker

_ids = itertools.count(1)


@dataclass
class Call:
    tool: str
    args: list[Any]
    kwargs: dict[str, Any]
    options: CallOptions
    streaming: bool = False
    id: int = field(default_factory=lambda: next(_ids))
    worker: "Worker | None" = None
    executor: int = 0  # which of the worker's executor threads runs it
    pinned: int | None = None
    thread_safe: bool = False
    submitted: float = field(default_factory=time.monotonic)
    started: float | None = None
    cancel_sent: bool = False
    attempts: int = 0
    columns: list[Any] | None = None  # a map chunk: the i-th argument of every call in column i
    idempotent: bool = False
    transport: Transport | None = None

    #: the W3C trace context (``traceparent``...) the worker runs the tool in; None: untraced
    trace: dict[str, str] | None = None
    #: (not a field) set by the pool while telemetry is on: told ``(call, exc)`` once, when the
    #: call ends (exc None: a result)
    observer = None
    #: (not a field) told of the result as it comes, for the bridge to stream it on
    #: (kernelpit.service.streamed): ``listener.ahead(index, list)`` for each list of the
    #: result that the worker sends ahead of it, ``listener.ended()`` once the call has ended
    listener = None

    def __post_init__(self) -> None:
        self.frames = self._encode()
        loop = asyncio.get_running_loop()
        self.future: asyncio.Future[Any] = loop.create_future()
        # a stream's events until its consumer takes them; progress coalesces while it is behind
        self.events: AsyncBacklog[ev.Event] | None = AsyncBacklog() if self.streaming else None
        self._timer: asyncio.TimerHandle | None = None

    def _encode(self) -> list[bytes]:
        """The request as wire frames, made once at submission so bad values fail early."""
        msg: dict[str, Any] = {"op": "call", "id": self.id, "tool": self.tool}
        if self.columns is not None:
            msg["cols"] = self.columns
        else:
            msg["args"] = self.args
            msg["kwargs"] = self.kwargs
        if self.options.session:
            msg["session"] = self.options.session
        if self.trace is not None:
            msg["trace"] = self.trace
        transport = self.transport
        if transport is not None and transport.shm_dir:
            # its files are the call's (reclaimed when it ends), their pages the pool's
            transport = dataclasses.replace(transport, prefix=f"c{self.id}",
                                            arena=transport.arena or transport.prefix)
        try:
            frames = encode(msg, transport)
        except EncodeError as exc:
            raise InvalidArguments(f"an argument of {self.tool}() cannot be sent: {exc}",
                                   tool=self.tool) from None
        except (ValueError, RecursionError) as exc:
            raise InvalidArguments(f"an argument of {self.tool}() cannot be sent: "
                                   f"{type(exc).__name__}: {exc}", tool=self.tool) from None
        self.shared = b'"shm":' in frames[0]  # wrote shared-memory files (reclaimed at the end)
        return frames

    def reclaim(self) -> None:
        """Remove this call's shared-memory argument files that no worker consumed."""
        if self.shared and self.transport is not None:
            reclaim(self.transport.shm_dir, f"c{self.id}")

    @property
    def done(self) -> bool:
        return self.future.done()

    def emit(self, event: ev.Event) -> None:
        if self.events is not None:
            event.call_id = self.id
            self.events.put_nowait(event)

    def finish(self, value: Any) -> None:
        self._cancel_timer()
        if self.future.done():
            return
        self.future.set_result(value)
        self.emit(ev.Result(value=value))
        if self.observer is not None:
            self.observer(self, None)
        if self.listener is not None:
            self.listener.ended()

    def fail(self, exc: BaseException) -> None:
        self._cancel_timer()
        if self.future.done():
            return
        self.future.set_exception(exc)
        self.future.exception()  # a stream consumer may never await it: mark as retrieved
        self.emit(ev.Error(error=exc))
        if self.observer is not None:
            self.observer(self, exc)
        if self.listener is not None:
            self.listener.ended()

    def on_worker_event(self, msg: dict[str, Any]) -> bool:
        """Apply one event from the worker; True when it was the call's last."""
        kind = msg["k"]
        if kind == "result":
            self.finish(msg.get("value"))
            return True
        if kind == "error":
            worker_id = self.worker.id if self.worker else None
            self.fail(from_payload(msg["error"], tool=self.tool, call_id=self.id, worker=worker_id))
            return True
        if self.events is not None:
            if kind == "progress":
                self.emit(ev.Progress(done=msg["done"], total=msg.get("total"),
                                      message=msg.get("message", "")))
            elif kind == "stdout":
                self.emit(ev.Stdout(text=msg["text"]))
            elif kind == "stderr":
                self.emit(ev.Stderr(text=msg["text"]))
            elif kind == "display":
                self.emit(ev.Display(data=msg["data"], metadata=msg.get("metadata", {})))
            elif kind == "partial":
                self.emit(ev.Partial(value=msg.get("value")))
        return False

    def on_ahead(self, msg: dict[str, Any]) -> None:
        """A list of an event that the worker sent ahead of the event."""
        if self.listener is not None and msg["k"] == "result" and not self.future.done():
            self.listener.ahead(msg["a"], msg["value"])

    def set_deadline(self, on_expiry: Any) -> None:
        if self.options.deadline is not None:
            loop = asyncio.get_running_loop()
            self._timer = loop.call_later(max(0.0, self.options.deadline), on_expiry, self)

    def _cancel_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    def describe(self) -> str:
        if self.columns is not None:
            return f"{self.tool}() over a batch of {len(self.columns[0])}"
        return f"{self.tool}()"
