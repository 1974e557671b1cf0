"""Small formatting helpers shared by the panels' widget and text views."""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Sequence

STATE_COLOURS = {
    "idle": "#2e7d32", "ready": "#2e7d32", "busy": "#1565c0", "starting": "#8d6e00",
    "stopping": "#e65100", "draining": "#e65100", "recycling": "#e65100", "dead": "#c62828",
    "disconnected": "#c62828",
}


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, "#555555")


def human_bytes(n: float | None) -> str:
    if not n:
        return "-"
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(size) < 1024 or unit == "TiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return str(n)


def human_seconds(s: float | None) -> str:
    if s is None:
        return "-"
    s = max(0.0, float(s))
    if s < 10:
        return f"{s:.1f}s"
    s = int(s)
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s" if s >= 60 else f"{s}s"
    return f"{s // 3600}h{s % 3600 // 60:02d}m"


def recycle_text(reason: str | None, recycle_in: dict[str, float] | None) -> str:
    """``recycled: memory`` or the nearest recycle trigger, e.g. ``in 3 calls``."""
    if reason:
        return f"recycling: {reason}"
    parts = []
    for key, value in sorted((recycle_in or {}).items()):
        if key == "calls":
            parts.append(f"{value:g} calls")
        elif key in ("seconds", "age"):
            parts.append(human_seconds(value))
        elif key in ("bytes", "memory"):
            parts.append(human_bytes(value))
        else:
            parts.append(f"{key} {value:g}")
    return ("recycle in " + " / ".join(parts)) if parts else "-"


def table(rows: Sequence[Sequence[Any]], header: Sequence[str]) -> str:
    cells = [[str(h) for h in header]] + [["" if c is None else str(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(header))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in cells]
    return "\n".join([lines[0], "  ".join("-" * w for w in widths), *lines[1:]])


def html_table(rows: Iterable[Sequence[Any]], header: Sequence[str], cls: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ago(t: float | None, now: float | None = None) -> float | None:
    if t is None:
        return None
    return max(0.0, (now or time.time()) - t)
