"""Everything Kernelpit writes to a terminal: sizes, durations, tables, a call's live output.

Shared by the CLI and by ``options(display=True)`` outside a notebook (and by the
panels' text views), so there is one of each.  Tables and the progress bar are
drawn by `rich`, imported only when one is drawn (it costs about 50 ms).
"""

from __future__ import annotations

import io
import sys
from typing import Any, Callable, Sequence, TextIO


def human_bytes(n: float | None) -> str:
    """``12.3 MiB``; ``-`` for none."""
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def human_seconds(s: float | None) -> str:
    """``4.2s``, ``3m05s``, ``2h01m``; ``-`` for none."""
    if s is None:
        return "-"
    s = max(0.0, float(s))
    if s < 10:
        return f"{s:.1f}s"
    whole = int(s)
    if whole < 3600:
        return f"{whole // 60}m{whole % 60:02d}s" if whole >= 60 else f"{whole}s"
    return f"{whole // 3600}h{whole % 3600 // 60:02d}m"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str], width: int = 200) -> str:
    """A plain-text table: a header row, then one line per row, columns aligned."""
    from rich.box import SIMPLE_HEAD
    from rich.console import Console
    from rich.table import Table

    grid = Table(*header, box=SIMPLE_HEAD, show_edge=False, pad_edge=False,
                 header_style="bold", highlight=False)
    for row in rows:
        grid.add_row(*("" if cell is None else str(cell) for cell in row))
    out = io.StringIO()
    Console(file=out, width=width, color_system=None, highlight=False,
            force_jupyter=False).print(grid)  # in a notebook too: text, never a display
    return "\n".join(line.rstrip() for line in out.getvalue().splitlines() if line.strip())


def progress_text(progress: dict[str, Any] | None, width: int = 10) -> str:
    """A job's last progress as ``███░░ 40% 4/10 msg``; ``-`` for none."""
    if not progress:
        return "-"
    done, total = progress.get("done") or 0, progress.get("total")
    message = progress.get("message") or ""
    if total:
        share = max(0.0, min(1.0, done / total))
        filled = round(share * width)
        text = f"{'█' * filled}{'░' * (width - filled)} {100 * share:.0f}% {done:g}/{total:g}"
    else:
        text = f"{done:g}"
    return f"{text} {message}".rstrip()


JOB_COLUMNS = ("JOB", "STATE", "TOOL", "PROGRESS", "AGE", "WORKER", "ATTEMPT")


def job_row(info: Any, now: float) -> tuple[Any, ...]:
    """One job (a JobInfo) as a row of :data:`JOB_COLUMNS` (the CLI table and the panel)."""
    return (info.id, info.state, info.tool, progress_text(info.progress),
            human_seconds(now - info.created), "-" if info.worker is None else info.worker,
            f"{info.attempt}/{info.max_attempts}")


class ProgressBar:
    """A call's progress: a live bar on a terminal (rich), plain lines elsewhere."""

    def __init__(self, out: TextIO, enabled: bool = True) -> None:
        self.out = out
        self.enabled = enabled
        self.tty = out.isatty()
        self._live: Any = None
        self._task: Any = None

    def update(self, done: float, total: float | None, message: str) -> None:
        if not self.enabled:
            return
        if not self.tty:
            share = f"{100 * max(0.0, min(1.0, done / total)):5.1f}% " if total else ""
            count = f"{done:g}/{total:g}" if total else f"{done:g}"
            self.out.write(f"{share}{count} {message}".rstrip() + "\n")
            self.out.flush()
            return
        if self._live is None:
            self._start()
        count = f"{done:g}/{total:g}" if total else f"{done:g}"
        self._live.update(self._task, completed=done, total=total, message=f"{count} {message}")

    def _start(self) -> None:
        from rich.console import Console
        from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn

        self._live = Progress(BarColumn(), TaskProgressColumn(),
                              TextColumn("{task.fields[message]}"),
                              console=Console(file=self.out, force_jupyter=False), transient=True,
                              refresh_per_second=10)
        self._task = self._live.add_task("", total=None, message="")
        self._live.start()

    def clear(self) -> None:
        """Take the bar off the screen (before other output, and at the end)."""
        if self._live is not None:
            self._live.stop()
            self._live = None


class EventPrinter:
    """A call's events on a terminal: output passed through, progress as a bar on ``err``,
    partial results as JSON lines (``partials``, a function of the value, or None)."""

    def __init__(self, out: TextIO | None = None, err: TextIO | None = None, *,
                 progress: bool = True,
                 partials: Callable[[Any], str] | None = None) -> None:
        self.out = out or sys.stdout
        self.err = err or sys.stderr
        self.bar = ProgressBar(self.err, progress)
        self.partials = partials

    def feed(self, ev: Any) -> None:
        kind = ev.kind
        if kind == "progress":
            self.bar.update(ev.done, ev.total, ev.message)
            return
        if kind in ("stdout", "stderr", "display", "partial", "result", "error"):
            self.bar.clear()
        if kind == "stdout":
            self.out.write(ev.text)
            self.out.flush()
        elif kind == "stderr":
            self.err.write(ev.text)
            self.err.flush()
        elif kind == "display":
            text = ev.data.get("text/plain")
            if text is not None:
                self.out.write(f"{text}\n")
        elif kind == "partial" and self.partials is not None:
            self.out.write(self.partials(ev.value) + "\n")
            self.out.flush()

    def flush(self) -> None:
        self.bar.clear()


SPARK = "▁▂▃▄▅▆▇█"


def queue_summary(tenants: Sequence[Any], most: int = 3) -> str:
    """Calls waiting, in all and for the tenants with the most (``TenantLoad``\\ s):
    ``5 waiting (ci 3, owner/ab12cd34 2)``; ``0 waiting`` when none."""
    per: dict[str, int] = {}
    for t in tenants:
        if t.waiting:
            per[t.tenant] = per.get(t.tenant, 0) + t.waiting
    total = sum(per.values())
    if not per:
        return "0 waiting"
    top = sorted(per.items(), key=lambda kv: (-kv[1], kv[0]))
    shown = ", ".join(f"{name} {n}" for name, n in top[:most])
    more = f", {len(top) - most} more" if len(top) > most else ""
    return f"{total} waiting ({shown}{more})"


def tenants_table(tenants: Sequence[Any]) -> str:
    """Each tenant's calls waiting and running, per pool (``TenantLoad``\\ s)."""
    return table([(t.tenant, t.pool, t.waiting, t.running) for t in tenants],
                 ("TENANT", "POOL", "WAITING", "RUNNING"))


def sparkline(values: Sequence[float | None], width: int = 40, top: float | None = None) -> str:
    """The last ``width`` values as block characters (a blank for a missing one)."""
    values = list(values)[-width:]
    known = [v for v in values if v is not None]
    top = max([*known, top or 0.0, 1e-12])
    return "".join(" " if v is None else SPARK[min(7, int(v / top * 7.999))] for v in values)


def charts_text(series: Any, width: int = 40) -> str:
    """The health panel's charts as text lines: calls/s, queue depth, p50/p99 latency and
    RSS per worker against max_memory (a ``LiveSeries``)."""
    points = list(series.points)
    if not points:
        return "(charts start after the first second)"
    last = points[-1]

    def ms(v: float | None) -> str:
        return "-" if v is None else f"{v * 1e3:.2f} ms"

    lines = [f"calls/s      {sparkline([p.calls_per_s for p in points], width)}  "
             f"{last.calls_per_s:.0f}",
             f"queue depth  {sparkline([float(p.queue_depth) for p in points], width)}  "
             f"{last.queue_depth}",
             f"latency p50  {sparkline([p.p50 for p in points], width)}  {ms(last.p50)}",
             f"latency p99  {sparkline([p.p99 for p in points], width)}  {ms(last.p99)}"]
    limit = series.max_memory
    for w in sorted({w for p in points for w in p.rss}):
        rss = [p.rss.get(w) for p in points]
        now = next((v for v in reversed(rss) if v is not None), 0)
        bar = sparkline([None if v is None else float(v) for v in rss], width, limit)
        tail = f"{human_bytes(now)}" + (f" (recycles at {human_bytes(limit)})" if limit else "")
        lines.append(f"RSS worker {w:<2} {bar}  {tail}")
    minutes = (points[-1].t - points[0].t) / 60
    lines.append(f"(last {minutes:.1f} min; RSS bars are drawn against max_memory when set)")
    return "\n".join(lines)
