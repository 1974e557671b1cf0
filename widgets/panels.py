"""The worker-health and sessions panels: ipywidgets 8, each with a plain-text view.

::

    from kernelpit.widgets import HealthPanel, SessionsPanel
    HealthPanel(kernelpit.connect())     # or %kp status
    SessionsPanel(client)                # or %kp sessions

Both follow the pool live (:class:`~kernelpit.widgets.feed.LiveState`: the
bridge's watch stream on a background thread, at most 10 redraws a second),
say "disconnected" while the bridge is away and pick up again when it is back.
``panel.close()`` stops the updates.
"""

from __future__ import annotations

import html
import threading
import time
from typing import Any

import ipywidgets as W

from . import charts as charts_mod
from . import fmt
from .connection import Connector
from .feed import LiveState

# sized so the whole row fits a notebook's output area (about 1,000 px) without wrapping;
# "node" (where a Ray-placed worker runs) goes last, so the columns before it keep their places
CELL = {"id": "56px", "pool": "60px", "state": "70px", "pid": "52px", "uptime": "60px",
        "calls": "44px", "current": "100px", "rss": "72px", "cpu": "40px", "heartbeat": "80px",
        "recycle": "262px", "node": "120px"}
BUTTONS = ("34px",) * 3
#: one column template for the header and every row: each is a grid of these columns, so a
#: header sits over its values whatever they hold
GRID = " ".join([*CELL.values(), *BUTTONS])
HEADERS = {"id": "worker", "pool": "pool", "state": "state", "pid": "pid", "uptime": "uptime",
           "calls": "calls", "current": "current call", "rss": "RSS", "cpu": "CPU",
           "heartbeat": "heartbeat", "recycle": "recycle", "node": "node"}


def _connector(source: Any) -> Connector:
    if isinstance(source, Connector):
        return source
    if source is None:
        return Connector()
    return Connector(client=source)


def state_badge(state: str) -> str:
    return (f"<span class='kp-state kp-state-{html.escape(state)}' style='background:"
            f"{fmt.colour(state)};color:white;padding:1px 7px;border-radius:8px;"
            f"font-weight:600'>{html.escape(state)}</span>")


def recycle_cell(w: Any) -> str:
    if w.state in ("stopping", "recycling") and w.recycle_reason:
        return f"recycling: {w.recycle_reason}"
    text = fmt.recycle_text(None, w.recycle_in, w.rss, w.calls, w.uptime)
    if w.recycles and w.recycle_reason:
        done = f"replaced ×{w.recycles} ({w.recycle_reason})"
        return done if text == "-" else f"{text}; {done}"
    return text


def worker_cells(w: Any, now: float) -> dict[str, str]:
    current = "-"
    if w.current_call:
        current = f"{w.current_call} {fmt.human_seconds(w.current_call_seconds)}"
    state = "spare" if getattr(w, "spare", False) and w.state == "idle" else w.state
    node = getattr(w, "node", None)
    return {"id": str(w.id), "pool": w.pool, "state": state, "pid": str(w.pid or "-"),
            "uptime": fmt.human_seconds(w.uptime), "calls": str(w.calls), "current": current,
            "rss": fmt.human_bytes(w.rss), "cpu": f"{w.cpu:.0f}%",
            "heartbeat": (fmt.human_seconds(fmt.ago(w.last_heartbeat, now)) + " ago"
                          if w.last_heartbeat else "-"),
            "recycle": recycle_cell(w),
            # where it runs: a Ray node's address and the start of its id (docs/scale-out.md)
            "node": f"{getattr(w, 'host', None) or '?'} {node[:8]}" if node else "local"}


class _Panel(W.VBox):
    """A live panel: widgets for Jupyter frontends, ``text()`` for everything else."""

    title = ""

    def __init__(self, source: Any = None, *, interval: float = 1.0, max_rate: float = 10.0,
                 live: bool = True) -> None:
        self._connector = _connector(source)
        self._lock = threading.RLock()
        self._title = W.HTML(f"<b>{html.escape(self.title)}</b>")
        self._summary = W.HTML("connecting…")
        self._summary.add_class("kp-summary")
        self._status = W.HTML("")
        self._status.add_class("kp-status")
        self._rows_box = W.VBox([])
        super().__init__([self._title, self._summary, self._header(), self._rows_box,
                          self._status])
        self.add_class("kp-panel")
        self.live = LiveState(self._connector, self._render, interval=interval, max_rate=max_rate)
        if live:
            self.live.start()

    # -- to override ------------------------------------------------------------------------
    def _header(self) -> W.Widget:
        return W.HBox([])

    def _render(self, live: LiveState) -> None:
        raise NotImplementedError

    def text(self) -> str:
        raise NotImplementedError

    # -- shared ---------------------------------------------------------------------------
    def _summary_prefix(self) -> str:
        live = self.live
        if not live.connected and not live.error:
            return "connecting…"
        if not live.connected:
            return (f"<span class='kp-disconnected' style='color:{fmt.colour('disconnected')};"
                    f"font-weight:600'>disconnected</span> — {html.escape(live.error or '')} "
                    "(reconnecting…)")
        return f"bridge <code>{html.escape(live.address)}</code>"

    def _set(self, widget: W.Widget, value: str) -> None:
        if widget.value != value:
            widget.value = value

    def _act(self, what: str, fn: Any, *args: Any) -> None:
        """Run a control action off the notebook's thread; its outcome goes to the status line."""
        def run() -> None:
            try:
                fn(self._connector.get(), *args)
                self._set(self._status, f"✔ {html.escape(what)}")
            except Exception as exc:  # noqa: BLE001 - shown to the user
                self._set(self._status, f"<span style='color:#c62828'>✘ {html.escape(what)}: "
                                        f"{html.escape(str(exc))}</span>")
        self._set(self._status, f"… {html.escape(what)}")
        threading.Thread(target=run, name="kernelpit-panel-action", daemon=True).start()

    def close(self) -> None:
        """Stop the live updates and close the widgets."""
        self.live.stop()
        for child in list(self._rows_box.children):
            child.close()
        super().close()

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        if self.live.running:
            self.wait_for(lambda p: p.ready(), timeout=3)  # so the text view is not empty
        data = super()._repr_mimebundle_(**kwargs) or {}
        data["text/plain"] = self.text()
        return data

    def __repr__(self) -> str:
        return self.text()

    def ready(self) -> bool:
        """True once the first snapshot (or a failure to get one) has been drawn."""
        return self.live.renders > 0 and (self.live.connected or bool(self.live.error))

    def wait_for(self, predicate: Any, timeout: float = 30.0) -> bool:
        """Wait until ``predicate(panel)`` holds (for scripts and tests); False on timeout."""
        end = time.monotonic() + timeout
        while time.monotonic() < end:
            if predicate(self):
                return True
            time.sleep(0.05)
        return False


def _cell(key: str, value: str) -> W.HTML:
    cell = W.HTML(value, layout=W.Layout(width="auto", overflow="hidden", margin="0 4px 0 0"))
    cell.add_class(f"kp-col-{key}")
    return cell


def _grid(children: list[W.Widget], **layout: Any) -> dict[str, Any]:
    return dict(children=children, layout=W.Layout(grid_template_columns=GRID, width="auto",
                                                   grid_gap="0px", **layout))


class _WorkerRow(W.GridBox):
    def __init__(self, panel: "HealthPanel", worker_id: int) -> None:
        self.worker_id = worker_id
        self.cells = {k: _cell(k, "") for k in CELL}
        self.cells["state"].add_class("kp-worker-state")
        buttons = []
        for name, icon, tip in (("interrupt", "stop", "Interrupt: cancel its calls, SIGINT"),
                                ("restart", "refresh", "Restart: kill it, start a fresh one"),
                                ("recycle", "recycle", "Recycle: successor first, then drain")):
            b = W.Button(icon=icon, tooltip=tip, layout=W.Layout(width="30px", height="26px",
                                                                 padding="0"))
            b.add_class(f"kp-{name}")
            b.on_click(lambda _b, n=name: panel._act(
                f"{n} worker {worker_id}", lambda c, wid, n=n: getattr(c, n)(wid), worker_id))
            buttons.append(b)
        super().__init__(**_grid([*self.cells.values(), *buttons], align_items="center"))
        self.add_class("kp-worker-row")

    def update(self, cells: dict[str, str]) -> None:
        for key, widget in self.cells.items():
            value = state_badge(cells[key]) if key == "state" else html.escape(cells[key])
            if widget.value != value:
                widget.value = value


def charts_html(series: Any) -> str:
    """The live charts of the last minutes: calls/s, queue depth, p50/p99 latency, RSS per
    worker with the max_memory line (a leak shows before the recycle)."""
    points = list(series.points)
    if len(points) < 2:
        return ""
    ms = lambda v: None if v is None else v * 1e3  # noqa: E731
    workers = sorted({w for p in points for w in p.rss})
    mib = 2**20
    rss = {f"w{w}": [p.rss[w] / mib if w in p.rss else None for p in points] for w in workers}
    limit = series.max_memory / mib if series.max_memory else None
    charts = [
        charts_mod.line_chart("calls/s", {"": [p.calls_per_s for p in points]}, fmt="{:.0f}"),
        charts_mod.line_chart("queue depth", {"": [float(p.queue_depth) for p in points]},
                              fmt="{:.0f}"),
        charts_mod.line_chart("latency (ms)", {"p50": [ms(p.p50) for p in points],
                                               "p99": [ms(p.p99) for p in points]}),
        charts_mod.line_chart("RSS (MiB)", rss, limit=limit, fmt="{:.0f}",
                              limit_label=f"max_memory {limit:.0f}" if limit else ""),
    ]
    minutes = (points[-1].t - points[0].t) / 60
    return (f"<div style='display:flex;gap:8px;flex-wrap:wrap;margin:6px 0'>{''.join(charts)}"
            f"</div><div style='color:#777;font-size:90%'>last {minutes:.1f} min</div>")


class HealthPanel(_Panel):
    """One row per worker — state, pid, uptime, calls, current call, RSS, CPU, heartbeat,
    recycle countdown — with interrupt / restart / recycle buttons, and a pool summary."""

    title = "Kernelpit workers"

    def __init__(self, source: Any = None, **kwargs: Any) -> None:
        self._rows: dict[int, _WorkerRow] = {}
        self._charts = W.HTML("")
        self._charts.add_class("kp-charts")
        super().__init__(source, **kwargs)
        self.children = (*self.children[:-1], self._charts, self.children[-1])
        self.add_class("kp-health")

    def _header(self) -> W.Widget:
        header = W.GridBox(**_grid([*(_cell(k, f"<b>{HEADERS[k]}</b>") for k in CELL),
                                    *(W.HTML("") for _ in BUTTONS)],
                                   border_bottom="1px solid #ccc"))
        header.add_class("kp-header")
        return header

    def summary_text(self) -> str:
        live = self.live
        if not live.connected:
            if not live.error:
                return "connecting…"
            return f"disconnected: {live.error} (reconnecting)"
        counts = live.counts()
        ready = counts.get("idle", 0) + counts.get("ready", 0)
        parts = [f"{len(live.workers)} workers", f"{ready} ready", f"{counts.get('busy', 0)} busy",
                 f"{counts.get('starting', 0)} starting"]
        for extra in ("stopping", "dead", "spare"):
            if counts.get(extra):
                parts.append(f"{counts[extra]} {extra}")
        parts.append(fmt.queue_summary(live.tenants))
        parts.append(f"{live.calls_per_second():.1f} calls/s")
        return ", ".join(parts)

    def _render(self, live: LiveState) -> None:
        with self._lock:
            now = time.time()
            ids = sorted(live.workers)
            if ids != list(self._rows):
                old = self._rows
                self._rows = {i: old.pop(i) if i in old else _WorkerRow(self, i) for i in ids}
                for row in old.values():
                    row.close()
                self._rows_box.children = list(self._rows.values())
            for wid, row in self._rows.items():
                row.update(worker_cells(live.workers[wid], now))
            live.sample()
            self._set(self._charts, charts_html(live.series))
            summary = self.summary_text()
            prefix = self._summary_prefix()
            self._set(self._summary, prefix if not live.connected else
                      f"{prefix} · {html.escape(summary)}")

    def text(self) -> str:
        live, now = self.live, time.time()
        rows = [[c for k, c in worker_cells(w, now).items()]
                for _, w in sorted(live.workers.items())]
        head = (f"Kernelpit workers — {live.address or 'connecting'}: {self.summary_text()}"
                if live.connected else f"Kernelpit workers — {self.summary_text()}")
        return head + "\n" + fmt.table(rows, [HEADERS[k] for k in CELL])


SESSION_CELL = {"id": "150px", "worker": "60px", "age": "70px", "idle": "70px", "ttl": "80px",
                "calls": "56px", "state": "110px", "metadata": "220px"}
SESSION_HEADERS = {"id": "session", "worker": "worker", "age": "age", "idle": "idle",
                   "ttl": "TTL left", "calls": "calls", "state": "state", "metadata": "metadata"}


def session_cells(s: Any, now: float) -> dict[str, str]:
    idle = max(0.0, now - s.last_used)
    return {"id": s.id, "worker": str(s.worker), "age": fmt.human_seconds(now - s.created),
            "idle": fmt.human_seconds(idle),
            "ttl": "-" if s.ttl is None else fmt.human_seconds(max(0.0, s.ttl - idle)),
            "calls": str(s.calls), "state": f"lost: {s.lost}" if s.lost else "ok",
            "metadata": " ".join(f"{k}={v}" for k, v in s.metadata.items()) or "-"}


class _SessionRow(W.HBox):
    def __init__(self, panel: "SessionsPanel", session_id: str) -> None:
        self.session_id = session_id
        self.cells = {k: W.HTML("", layout=W.Layout(width=w, overflow="hidden"))
                      for k, w in SESSION_CELL.items()}
        close = W.Button(description="close", icon="times", tooltip="Close the session",
                         layout=W.Layout(width="80px", height="26px"))
        close.add_class("kp-close")
        close.on_click(lambda _b: panel._act(f"close session {session_id}", _close_session,
                                             session_id))
        super().__init__([*self.cells.values(), close], layout=W.Layout(align_items="center"))
        self.add_class("kp-session-row")

    def update(self, cells: dict[str, str]) -> None:
        for key, widget in self.cells.items():
            value = html.escape(cells[key])
            if key == "state" and cells[key] != "ok":
                value = f"<span style='color:#c62828'>{value}</span>"
            if widget.value != value:
                widget.value = value


def _close_session(client: Any, session_id: str) -> None:
    client.close_session(session_id)


class SessionsPanel(_Panel):
    """One row per open session — id, worker, age, idle, TTL left, calls, metadata — with a
    close button."""

    title = "Kernelpit sessions"

    def __init__(self, source: Any = None, **kwargs: Any) -> None:
        self._rows: dict[str, _SessionRow] = {}
        super().__init__(source, **kwargs)
        self.add_class("kp-sessions")

    def _header(self) -> W.Widget:
        return W.HBox([W.HTML(f"<b>{SESSION_HEADERS[k]}</b>", layout=W.Layout(width=w))
                       for k, w in SESSION_CELL.items()],
                      layout=W.Layout(border_bottom="1px solid #ccc"))

    def _render(self, live: LiveState) -> None:
        with self._lock:
            now = time.time()
            ids = sorted(live.sessions)
            if ids != list(self._rows):
                old = self._rows
                self._rows = {i: old.pop(i) if i in old else _SessionRow(self, i) for i in ids}
                for row in old.values():
                    row.close()
                self._rows_box.children = list(self._rows.values())
            for sid, row in self._rows.items():
                row.update(session_cells(live.sessions[sid], now))
            prefix = self._summary_prefix()
            self._set(self._summary, prefix if not live.connected else
                      f"{prefix} · {len(ids)} open session{'s' if len(ids) != 1 else ''}")

    def text(self) -> str:
        live, now = self.live, time.time()
        if not live.connected:
            if not live.error:
                return "Kernelpit sessions — connecting…"
            return f"Kernelpit sessions — disconnected: {live.error} (reconnecting)"
        if not live.sessions:
            return f"Kernelpit sessions — {live.address}: no open sessions"
        rows = [list(session_cells(s, now).values()) for _, s in sorted(live.sessions.items())]
        return (f"Kernelpit sessions — {live.address}: {len(rows)} open\n"
                + fmt.table(rows, list(SESSION_HEADERS.values())))


class ToolsView:
    """The tools served, with signatures and docs (HTML in notebooks, a table as text)."""

    def __init__(self, tools: list[Any]) -> None:
        self.tools = tools

    def __repr__(self) -> str:
        rows = [(t.name, t.pool, t.signature, (t.doc or "").strip().split("\n")[0])
                for t in self.tools]
        return fmt.table(rows, ("tool", "pool", "signature", "doc"))

    def _repr_html_(self) -> str:
        rows = [(f"<code><b>{html.escape(t.name)}</b>"
                 f"{html.escape(t.signature.removeprefix(t.name))}</code>",
                 html.escape(t.pool),
                 "<pre style='margin:0;white-space:pre-wrap'>"
                 f"{html.escape((t.doc or '').strip())}</pre>",
                 " ".join(flag for flag, on in (("streaming", t.streaming),
                                                ("thread-safe", t.thread_safe),
                                                ("idempotent", t.idempotent)) if on))
                for t in self.tools]
        return fmt.html_table(rows, ("tool", "pool", "doc", "flags"), "kp-tools")
