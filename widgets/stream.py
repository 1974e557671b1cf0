"""The streaming-output panel, and the ``display`` call option of the Python API.

``pool.options(display=True).call("train", epochs=3)`` in a notebook shows a
:class:`StreamPanel` (progress bar with done/total, rate and ETA, the latest
progress message, live stdout/stderr and rich displays, the result or error,
a cancel button) and returns the result; in a terminal it draws a text
progress bar on stderr instead.  ``.stream(...)`` does the same while yielding
the events.  ``%kp call`` uses the same panel.
"""

from __future__ import annotations

import html
import json
import queue
import sys
import threading
import time
from typing import Any, Iterator

from . import fmt
from kernelpit.terminal import EventPrinter

from .feed import pump

_END = object()


def in_notebook() -> bool:
    """True inside a Jupyter kernel (where widgets can be shown)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return False
    ip = get_ipython()
    return ip is not None and getattr(ip, "kernel", None) is not None


def _short(value: Any, limit: int = 2000) -> str:
    try:
        text = json.dumps(value, default=repr)
    except (TypeError, ValueError):
        text = repr(value)
    return text if len(text) <= limit else text[:limit] + "…"


class CallView:
    """What a streamed call has shown so far: the model both the widget and text views draw."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.worker: int | None = None
        self.state = "queued"
        self.done = 0.0
        self.total: float | None = None
        self.message = ""
        self.started = time.monotonic()
        self.first_progress: tuple[float, float] | None = None
        self.result: Any = None
        self.error: BaseException | None = None
        self.partials = 0
        self.events = 0

    def feed(self, ev: Any) -> None:
        self.events += 1
        kind = ev.kind
        if kind == "queued":
            self.state = f"queued (position {ev.position})"
        elif kind == "started":
            self.state, self.worker, self.started = "running", ev.worker, time.monotonic()
        elif kind == "progress":
            self.state = "running"
            self.done, self.total, self.message = ev.done, ev.total, ev.message or self.message
            if self.first_progress is None:
                self.first_progress = (time.monotonic(), ev.done)
        elif kind == "partial":
            self.partials += 1
        elif kind == "result":
            self.state, self.result = "done", ev.value
            if self.total:
                self.done = self.total
        elif kind == "error":
            self.error = ev.error
            self.state = "cancelled" if type(ev.error).__name__ == "Cancelled" else "failed"

    def rate(self) -> float | None:
        """Progress units per second since the first progress event."""
        if self.first_progress is None:
            return None
        t0, d0 = self.first_progress
        elapsed = time.monotonic() - self.started
        if self.done > d0 and time.monotonic() > t0:
            return max(0.0, self.done / elapsed) if elapsed > 0 else None
        return None

    def eta(self) -> float | None:
        rate = self.rate()
        if not rate or not self.total or self.state != "running":
            return None
        return max(0.0, (self.total - self.done) / rate)

    def fraction(self) -> float | None:
        return max(0.0, min(1.0, self.done / self.total)) if self.total else None

    def progress_line(self) -> str:
        parts = []
        if self.total:
            parts.append(f"{self.done:g}/{self.total:g} ({self.fraction() * 100:.0f}%)")
        elif self.done:
            parts.append(f"{self.done:g}")
        rate = self.rate()
        if rate:
            parts.append(f"{rate:.3g}/s")
        eta = self.eta()
        if eta is not None:
            parts.append(f"ETA {fmt.human_seconds(eta)}")
        parts.append(f"elapsed {fmt.human_seconds(time.monotonic() - self.started)}")
        if self.message:
            parts.append(self.message)
        return " · ".join(parts)

    def header(self) -> str:
        where = f" on worker {self.worker}" if self.worker is not None else ""
        return f"{self.tool}(){where}: {self.state}"


class TextFallback:
    """A panel (``self.box``, ``self.text()``) that shows as its widget where widgets
    render, and as its text everywhere else (a terminal, nbconvert, a log)."""

    box: Any

    def text(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = self.box._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        return data

    def __repr__(self) -> str:
        return self.text()


class StreamPanel(TextFallback):
    """The streaming-output panel of one call (a VBox of standard widgets)."""

    def __init__(self, tool: str, on_cancel: Any = None, *, max_rate: float = 10.0) -> None:
        import ipywidgets as W
        self.view = CallView(tool)
        self.min_gap = 1.0 / max_rate
        self._last = 0.0
        self._dirty = False
        self._text: list[Any] = []   # pending output items, flushed at most max_rate times/s
        self._lock = threading.RLock()
        self.renders = 0
        self.header = W.HTML()
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, bar_style="info",
                                   layout=W.Layout(width="420px"))
        self.bar.add_class("kp-progress")
        self.info = W.HTML()
        self.info.add_class("kp-progress-info")
        self.output = W.Output(layout=W.Layout(max_height="320px", overflow="auto"))
        self.output.add_class("kp-output")
        self.outcome = W.HTML()
        self.outcome.add_class("kp-outcome")
        self.cancel_button = W.Button(description="cancel", icon="stop", button_style="warning",
                                      tooltip="Cancel the call (the tool is interrupted)",
                                      layout=W.Layout(width="100px"))
        self.cancel_button.add_class("kp-cancel")
        self._on_cancel = on_cancel
        self.cancel_button.on_click(lambda _b: self.cancel())
        self.box = W.VBox([self.header, W.HBox([self.bar, self.cancel_button]), self.info,
                           self.output, self.outcome])
        self.box.add_class("kp-stream")
        self._render(force=True)

    # -- feeding -----------------------------------------------------------------------------
    def feed(self, ev: Any) -> None:
        """Apply one event; redraws at most ``max_rate`` times a second (``flush`` forces)."""
        with self._lock:
            self.view.feed(ev)
            kind = ev.kind
            if kind in ("stdout", "stderr"):
                self._append_text(kind, ev.text)
            elif kind == "display":
                self._text.append({"output_type": "display_data", "data": ev.data,
                                   "metadata": ev.metadata})
            elif kind == "partial":
                self._append_text("stdout", f"partial: {_short(ev.value, 200)}\n")
            self._dirty = True
            final = kind in ("result", "error")
        self._render(force=final)

    def _append_text(self, name: str, text: str) -> None:
        last = self._text[-1] if self._text else None
        if last is not None and last.get("output_type") == "stream" and last["name"] == name:
            last["text"] += text
        else:
            self._text.append({"output_type": "stream", "name": name, "text": text})

    def flush(self) -> None:
        self._render(force=True)

    def _render(self, force: bool = False) -> None:
        with self._lock:
            now = time.monotonic()
            if not force and now - self._last < self.min_gap:
                return
            self._last = now
            self._dirty = False
            self.renders += 1
            v = self.view
            colour = {"done": "#2e7d32", "failed": "#c62828", "cancelled": "#e65100"}.get(
                v.state.split(" ")[0], "#1565c0")
            header = (f"<b><code>{html.escape(v.tool)}()</code></b>"
                      f"{f' on worker {v.worker}' if v.worker is not None else ''} · "
                      f"<span class='kp-call-state' style='color:{colour};font-weight:600'>"
                      f"{html.escape(v.state)}</span>")
            if self.header.value != header:
                self.header.value = header
            frac = v.fraction()
            if frac is not None:
                self.bar.value = frac
                self.bar.description = f"{frac * 100:.0f}%"
            elif v.state == "done":
                self.bar.value, self.bar.description = 1.0, "100%"
            self.bar.bar_style = {"done": "success", "failed": "danger",
                                  "cancelled": "warning"}.get(v.state, "info")
            info = html.escape(v.progress_line())
            if self.info.value != info:
                self.info.value = info
            if self._text:
                pending, self._text = self._text, []
                outputs = list(self.output.outputs)
                for item in pending:
                    if (item["output_type"] == "stream" and outputs
                            and outputs[-1].get("output_type") == "stream"
                            and outputs[-1].get("name") == item["name"]):
                        outputs[-1] = {**outputs[-1], "text": outputs[-1]["text"] + item["text"]}
                    else:
                        outputs.append(item)
                self.output.outputs = tuple(outputs)
            if v.state == "done":
                self.outcome.value = ("<b>result:</b> <code>"
                                      f"{html.escape(_short(v.result))}</code>")
            elif v.error is not None:
                tb = getattr(v.error, "remote_traceback", "") or ""
                self.outcome.value = (
                    f"<b style='color:#c62828'>{html.escape(type(v.error).__name__)}:</b> "
                    f"{html.escape(str(v.error))}"
                    + (f"<pre style='font-size:85%'>{html.escape(tb)}</pre>" if tb else ""))
            if v.state in ("done", "failed", "cancelled"):
                self.cancel_button.disabled = True
                self.cancel_button.layout.display = "none"

    def cancel(self) -> None:
        """Cancel the call: the tool is interrupted, the panel says cancelled."""
        if self._on_cancel is not None and not self.cancel_button.disabled:
            self.cancel_button.disabled = True
            self._on_cancel()

    # -- views -------------------------------------------------------------------------------
    def text(self) -> str:
        v = self.view
        lines = [v.header(), v.progress_line()]
        if v.state == "done":
            lines.append(f"result: {_short(v.result)}")
        elif v.error is not None:
            lines.append(f"{type(v.error).__name__}: {v.error}")
        return "\n".join(lines)


class TextProgress(EventPrinter):
    """The terminal twin of the panel: output passed through, a progress bar on stderr
    (:class:`kernelpit.terminal.EventPrinter`), and the call's state kept as the panel does."""

    def __init__(self, tool: str, out: Any = None, err: Any = None) -> None:
        super().__init__(out, err)
        self.view = CallView(tool)

    def feed(self, ev: Any) -> None:
        self.view.feed(ev)
        super().feed(ev)


# -- the call option ------------------------------------------------------------------------

class BackgroundCall:
    """A call running with its panel, while the notebook stays free (``%kp call --background``).

    ``wait()`` returns the result (or raises the error); ``cancel()`` interrupts the tool.
    """

    def __init__(self, caller: Any, tool: str, args: Any, kwargs: dict[str, Any]) -> None:
        self.tool = tool
        self._q: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self._fut = pump(caller.stream(tool, *args, **kwargs), self._q, _END)
        self.panel = StreamPanel(tool, on_cancel=self.cancel)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._pump, name="kernelpit-call", daemon=True)
        self._thread.start()

    handle: Any = None

    def _pump(self) -> None:
        try:
            while True:
                try:
                    item = self._q.get(timeout=self.panel.min_gap)
                except queue.Empty:
                    self.panel._render()  # rate and elapsed move on
                    continue
                if item is _END:
                    if self.panel.view.state not in ("done", "failed"):
                        from kernelpit.exceptions import Cancelled
                        from kernelpit.events import Error
                        self.panel.feed(Error(error=Cancelled(f"{self.tool}() was cancelled")))
                    return
                if isinstance(item, BaseException):
                    from kernelpit.events import Error
                    self.panel.feed(Error(error=item))
                    return
                self.panel.feed(item)
                if item.kind in ("result", "error"):
                    return
        finally:
            self.panel.flush()
            _final(self.handle, self.panel)
            self._done.set()

    def cancel(self) -> None:
        self._fut.close()

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        if not self._done.wait(timeout):
            raise TimeoutError(f"{self.tool}() has not finished within {timeout} s")
        v = self.panel.view
        if v.error is not None:
            raise v.error
        return v.result

    @property
    def result(self) -> Any:
        return self.wait()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.panel._repr_mimebundle_(**kwargs)

    def __repr__(self) -> str:
        return self.panel.text()


def _display(obj: Any) -> Any:
    """Show ``obj``; the handle re-shows it when done, so saved notebooks keep the final text."""
    from IPython.display import display
    return display(obj, display_id=True)


def _final(handle: Any, panel: Any) -> None:
    if handle is not None:
        try:
            handle.update(panel)
        except Exception:
            pass


def display_call(caller: Any, tool: str, args: Any, kwargs: dict[str, Any]) -> Any:
    """``caller.call(tool, ...)`` with the streaming-output panel (or a text bar); the result.

    The events arrive on the caller's event loop; this thread only draws (at
    most ten times a second).  Ctrl-C / the kernel's interrupt cancels the call.
    """
    q: queue.SimpleQueue[Any] = queue.SimpleQueue()
    fut = pump(caller.stream(tool, *args, **kwargs), q, _END)
    view: Any
    handle = None
    if in_notebook():
        view = StreamPanel(tool, on_cancel=fut.close)
        handle = _display(view)
    else:
        view = TextProgress(tool)
    try:
        while True:
            try:
                item = q.get(timeout=0.1)
            except queue.Empty:
                if isinstance(view, StreamPanel):
                    view._render()
                continue
            if item is _END:
                from kernelpit.exceptions import Cancelled
                err = Cancelled(f"{tool}() was cancelled")
                _feed_error(view, err)
                raise err
            if isinstance(item, BaseException):
                _feed_error(view, item)
                raise item
            view.feed(item)
            if item.kind == "result":
                return item.value
            if item.kind == "error":
                raise item.error
    except KeyboardInterrupt:
        fut.close()
        from kernelpit.exceptions import Cancelled
        _feed_error(view, Cancelled(f"{tool}() was interrupted"))
        raise
    finally:
        view.flush()
        _final(handle, view)


def _feed_error(view: Any, exc: BaseException) -> None:
    from kernelpit.events import Error
    view.feed(Error(error=exc))


def display_stream(caller: Any, tool: str, args: Any, kwargs: dict[str, Any]) -> Iterator[Any]:
    """``caller.stream(tool, ...)`` that also shows the panel (or a text bar) as events pass."""
    inner = caller
    view: Any
    handle = None
    if in_notebook():
        view = StreamPanel(tool)
        handle = _display(view)
    else:
        view = TextProgress(tool)
    try:
        for ev in inner.stream(tool, *args, **kwargs):
            view.feed(ev)
            yield ev
    finally:
        view.flush()
        _final(handle, view)
