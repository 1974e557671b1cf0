"""Per-call capture of stdout, stderr and rich displays inside a worker kernel.

Tools run on executor threads.  While a tool runs, its thread carries the
current :class:`CallContext`; ``sys.stdout``/``sys.stderr`` are replaced by
:class:`RoutedStream` proxies and the shell's display publisher is wrapped,
so output written on a tool thread becomes events of that call, while output
of notebook cells and of other threads goes where it always went (iopub).
"""

from __future__ import annotations

import base64
import sys
import threading
from typing import Any, Callable

_local = threading.local()


def current() -> "CallContext | None":
    """The call running on this thread, if any."""
    return getattr(_local, "call", None)


def set_current(call: "CallContext | None") -> None:
    _local.call = call


class CallContext:
    """What a running tool needs to send events back: id, sender, output buffers."""

    def __init__(self, call_id: int, send: Callable[[dict[str, Any]], None],
                 session: str | None = None) -> None:
        self.id = call_id
        self.session = session
        self._send = send
        self._pending: dict[str, list[str]] = {"stdout": [], "stderr": []}

    def emit(self, kind: str, **fields: Any) -> None:
        self.flush()
        self._send({"op": "ev", "id": self.id, "k": kind, **fields})

    def write(self, stream: str, text: str) -> None:
        pending = self._pending[stream]
        pending.append(text)
        if "\n" in text or sum(map(len, pending)) > 8192:
            self._flush_one(stream)

    def flush(self) -> None:
        for stream in ("stdout", "stderr"):
            if self._pending[stream]:
                self._flush_one(stream)

    def _flush_one(self, stream: str) -> None:
        text = "".join(self._pending[stream])
        self._pending[stream].clear()
        if text:
            self._send({"op": "ev", "id": self.id, "k": stream, "text": text})


class RoutedStream:
    """A text stream that sends a tool thread's writes to its call, others to ``inner``."""

    def __init__(self, name: str, inner: Any) -> None:
        self._name = name
        self._inner = inner

    def write(self, text: str) -> int:
        call = current()
        if call is None:
            return self._inner.write(text)
        if not isinstance(text, str):
            raise TypeError(f"write() argument must be str, not {type(text).__name__}")
        call.write(self._name, text)
        return len(text)

    def writelines(self, lines: Any) -> None:
        for line in lines:
            self.write(line)

    def flush(self) -> None:
        call = current()
        if call is None:
            self._inner.flush()
        else:
            call.flush()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self._inner, attr)


def _jsonable_bundle(data: dict[str, Any]) -> dict[str, Any]:
    """Mime bundles as Jupyter sends them: binary values base64-encoded."""
    out = {}
    for mime, value in data.items():
        if isinstance(value, (bytes, bytearray)):
            value = base64.b64encode(value).decode("ascii")
        out[mime] = value
    return out


def install(shell: Any | None) -> None:
    """Route tool-thread output to calls; leave everything else untouched."""
    if not isinstance(sys.stdout, RoutedStream):
        sys.stdout = RoutedStream("stdout", sys.stdout)
    if not isinstance(sys.stderr, RoutedStream):
        sys.stderr = RoutedStream("stderr", sys.stderr)
    if shell is None or getattr(shell.display_pub, "_kernelpit_routed", False):
        return
    pub = shell.display_pub
    original = pub.publish

    def publish(data: dict[str, Any], metadata: dict[str, Any] | None = None, *args: Any,
                **kwargs: Any) -> Any:
        call = current()
        if call is None:
            return original(data, metadata, *args, **kwargs)
        transient = kwargs.get("transient") or {}
        call.emit("display", data=_jsonable_bundle(data), metadata=metadata or {},
                  transient=transient, update=bool(kwargs.get("update")))
        return None

    pub.publish = publish
    pub._kernelpit_routed = True
