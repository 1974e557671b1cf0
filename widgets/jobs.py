"""Durable jobs in a notebook: a live job panel and the jobs panel (docs/jobs.md).

::

    %kp submit train epochs=10      # submits, then shows the job's panel, following it live
    %kp job 3f2a...                 # reattaches: replays the whole journal, then follows it
    %kp jobs                        # every job: state, tool, progress, age, worker, buttons

:class:`JobPanel` is the streaming-output panel of a call (:class:`.stream.StreamPanel`)
fed from ``job.events()`` on a background thread: it replays the journal from the
start, so a notebook whose kernel restarted mid-job shows the whole progress so far,
then follows the job until it ends.  Its cancel button cancels the job.  The cell
returns at once; the job does not depend on the notebook.  :class:`JobsPanel` polls
``client.jobs()`` and lists them; ``open`` shows a job's panel below the list.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

from kernelpit.terminal import JOB_COLUMNS, job_row, progress_text, table

from . import fmt
from .stream import StreamPanel, TextFallback, _final, in_notebook

JOB_COLOURS = {"queued": "#8d6e00", "running": "#1565c0", "succeeded": "#2e7d32",
               "failed": "#c62828", "cancelled": "#e65100", "lost": "#6a1b9a"}


class JobPanel:
    """One job, live: its journal replayed from seq 1, then followed until it ends."""

    def __init__(self, job: Any, *, widgets: bool | None = None) -> None:
        self.job = job
        self.panel = StreamPanel(job.tool, on_cancel=self.cancel)
        self.restarts: list[int] = []
        self.last_seq = 0
        self.handle: Any = None
        self._caught_up = threading.Event()
        self._done = threading.Event()
        self._target = job.info().last_seq  # what a replay has to reach to be caught up
        if not self._target:
            self._caught_up.set()
        self._events = job.events(after=0)
        self._thread = threading.Thread(target=self._pump, name="kernelpit-job", daemon=True)
        self._thread.start()

    def _pump(self) -> None:
        from kernelpit.events import Error
        try:
            for entry in self._events:
                self.last_seq = entry.seq
                if entry.kind == "restarted":
                    self.restarts.append(entry.attempt)
                    with self.panel._lock:
                        self.panel._append_text(
                            "stderr", f"— the job was restarted (attempt {entry.attempt}) —\n")
                    self.panel.flush()
                else:
                    event = entry.to_event()
                    if event is not None:
                        self.panel.feed(event)
                if entry.seq >= self._target:
                    self._caught_up.set()
        except Exception as exc:  # noqa: BLE001 - shown in the panel
            self.panel.feed(Error(error=exc))
        finally:
            self._caught_up.set()
            self.panel.flush()
            _final(self.handle, self)
            self._done.set()

    def wait_replayed(self, timeout: float = 30.0) -> bool:
        """Wait until the journal as it was when the panel opened has been shown."""
        return self._caught_up.wait(timeout)

    def done(self) -> bool:
        return self._done.is_set()

    def wait(self, timeout: float | None = None) -> Any:
        """The job's result (or its error raised), as ``job.result(timeout)``."""
        return self.job.result(timeout)

    def cancel(self) -> None:
        """Cancel the job (the tool is interrupted); the panel shows it cancelled."""
        threading.Thread(target=self.job.cancel, name="kernelpit-job-cancel",
                         daemon=True).start()

    def close(self) -> None:
        """Stop following (the job runs on)."""
        self._events.close()

    # -- views -------------------------------------------------------------------------------
    def text(self) -> str:
        lines = [f"job {self.job.id}"]
        lines += [f"restarted: attempt {a}" for a in self.restarts]
        return "\n".join([*lines, self.panel.text()])

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        data = self.panel._repr_mimebundle_(**kwargs)
        data["text/plain"] = self.text()
        return data

    def __repr__(self) -> str:
        return self.text()


def display_job(job: Any, wait_replayed: float = 30.0) -> JobPanel | None:
    """Show ``job`` live in the cell (a text progress bar outside a notebook: it follows the
    job to its end there).  Returns the panel in a notebook, at once once the journal as it
    is now has been replayed into it."""
    if not in_notebook():
        from kernelpit.terminal import EventPrinter
        printer = EventPrinter()
        events = job.events()
        try:
            for entry in events:
                event = entry.to_event()
                if event is not None:
                    printer.feed(event)
        except KeyboardInterrupt:  # stop following; the job runs on
            events.close()
        finally:
            printer.flush()
        return None
    from IPython.display import display
    panel = JobPanel(job)
    panel.handle = display(panel, display_id=True)
    if panel.wait_replayed(wait_replayed):
        panel.panel.flush()
        _final(panel.handle, panel)  # the cell's output holds the replay (saved notebooks too)
    return panel


class JobsPanel(TextFallback):
    """Every job of the bridge (newest first): state, tool, progress bar, age, worker, and
    cancel / open buttons; refreshed every ``interval`` seconds until :meth:`close`."""

    def __init__(self, client: Any, *, interval: float = 1.0, limit: int = 50,
                 state: str | None = None, tool: str | None = None) -> None:
        import ipywidgets as W
        self.client = client
        self.interval = interval
        self.query = dict(state=state, tool=tool, limit=limit)
        self.jobs: list[Any] = []
        self.error: str | None = None
        self._rows: dict[str, Any] = {}
        self._lock = threading.RLock()
        self._stop = threading.Event()
        self._refreshed = threading.Event()
        self._title = W.HTML("<b>Kernelpit jobs</b>")
        self._summary = W.HTML("loading…")
        self._list = W.VBox([])
        self.opened = W.Output()
        self.box = W.VBox([self._title, self._summary, self._list, self.opened])
        self.box.add_class("kp-jobs")
        self.refresh()
        self._thread = threading.Thread(target=self._poll, name="kernelpit-jobs", daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(self.interval):
            self.refresh()

    def refresh(self) -> None:
        """Read the jobs now and redraw."""
        try:
            jobs = self.client.jobs(**self.query)
            error = None
        except Exception as exc:  # noqa: BLE001 - shown; the next poll tries again
            jobs, error = self.jobs, f"{type(exc).__name__}: {exc}"
        with self._lock:
            self.jobs, self.error = jobs, error
            self._render()
        self._refreshed.set()

    def _render(self) -> None:
        import ipywidgets as W
        now = time.time()
        counts: dict[str, int] = {}
        for j in self.jobs:
            counts[j.state] = counts.get(j.state, 0) + 1
        summary = ", ".join(f"{n} {s}" for s, n in sorted(counts.items())) or "no jobs"
        if self.error:
            summary += (f" — <span style='color:#c62828'>{html.escape(self.error)}</span> "
                        "(retrying)")
        self._summary.value = summary
        rows = []
        for info in self.jobs:
            row = self._rows.get(info.id)
            if row is None:
                row = self._rows[info.id] = _JobRow(self, info.id, W)
            row.update(info, now)
            rows.append(row.box)
        if tuple(self._list.children) != tuple(rows):
            self._list.children = rows

    def open(self, job_id: str) -> JobPanel:
        """Show the job's live panel below the list."""
        panel = JobPanel(self.client.job(job_id))
        # set as the Output's content (a live widget view), not captured from this thread
        self.opened.outputs = ({"output_type": "display_data", "metadata": {},
                                "data": panel._repr_mimebundle_()},)
        return panel

    def cancel(self, job_id: str) -> None:
        def run() -> None:
            try:
                self.client.job(job_id).cancel()
            finally:
                self.refresh()
        threading.Thread(target=run, name="kernelpit-job-cancel", daemon=True).start()

    def close(self) -> None:
        self._stop.set()

    def text(self) -> str:
        now = time.time()
        with self._lock:
            body = table([job_row(j, now) for j in self.jobs], JOB_COLUMNS) if self.jobs \
                else "no jobs"
            return f"Kernelpit jobs\n{body}" + (f"\n{self.error}" if self.error else "")


class _JobRow:
    def __init__(self, panel: JobsPanel, job_id: str, W: Any) -> None:
        self.state = W.HTML(layout=W.Layout(width="90px"))
        self.tool = W.HTML(layout=W.Layout(width="140px"))
        self.bar = W.FloatProgress(value=0.0, min=0.0, max=1.0, layout=W.Layout(width="160px"))
        self.progress = W.HTML(layout=W.Layout(width="180px"))
        self.age = W.HTML(layout=W.Layout(width="60px"))
        self.worker = W.HTML(layout=W.Layout(width="70px"))
        self.cancel = W.Button(description="cancel", icon="stop", button_style="warning",
                               layout=W.Layout(width="90px"), tooltip="cancel the job")
        self.open = W.Button(description="open", icon="eye", layout=W.Layout(width="80px"),
                             tooltip="show the job's output and progress, live")
        self.cancel.on_click(lambda _b: panel.cancel(job_id))
        self.open.on_click(lambda _b: panel.open(job_id))
        self.box = W.HBox([self.state, self.tool, self.bar, self.progress, self.age,
                           self.worker, self.cancel, self.open])
        self.box.add_class("kp-job-row")

    def update(self, info: Any, now: float) -> None:
        colour = JOB_COLOURS.get(info.state, "#555555")
        self.state.value = (f"<span class='kp-job-state' style='background:{colour};color:white;"
                            f"padding:1px 7px;border-radius:8px;font-weight:600'>"
                            f"{html.escape(info.state)}</span>")
        self.tool.value = f"<code title='{info.id}'>{html.escape(info.tool)}()</code>"
        p = info.progress or {}
        total = p.get("total")
        share = (p.get("done") or 0) / total if total else (1.0 if info.state == "succeeded"
                                                            else 0.0)
        self.bar.value = max(0.0, min(1.0, share))
        self.bar.bar_style = {"succeeded": "success", "failed": "danger", "lost": "danger",
                              "cancelled": "warning"}.get(info.state, "info")
        self.progress.value = html.escape(progress_text(info.progress, 0).strip())
        self.age.value = fmt.human_seconds(now - info.created)
        self.worker.value = "-" if info.worker is None else f"worker {info.worker}"
        self.cancel.disabled = info.done
