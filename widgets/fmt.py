"""Small formatting helpers shared by the panels' widget and text views."""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Sequence

from kernelpit.terminal import human_bytes, human_seconds, queue_summary, table  # noqa: F401 - the panels' too

STATE_COLOURS = {
    "idle": "#2e7d32", "ready": "#2e7d32", "busy": "#1565c0", "starting": "#8d6e00",
    "stopping": "#e65100", "recycling": "#e65100", "dead": "#c62828",
    "disconnected": "#c62828",
}


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, "#555555")


def recycle_text(reason: str | None, recycle_in: dict[str, float] | None, rss: float = 0,
                 calls: int = 0, uptime: float = 0.0) -> str:
    """When the worker will be recycled, in words: ``recycles at 400.0 MiB (now 51.0 MiB)``,
    ``recycles after 100 calls (now 12)``, ``recycles at age 10m00s (now 3m05s)``; or
    ``recycling: memory`` while it is."""
    if reason:
        return f"recycling: {reason}"
    parts = []
    for key, left in sorted((recycle_in or {}).items()):
        if key in ("bytes", "memory"):
            parts.append(f"recycles at {human_bytes(rss + left)} (now {human_bytes(rss)})")
        elif key == "calls":
            parts.append(f"recycles after {calls + left:g} calls (now {calls})")
        elif key in ("seconds", "age"):
            parts.append(f"recycles at age {human_seconds(uptime + left)} "
                         f"(now {human_seconds(uptime)})")
        else:
            parts.append(f"{key} {left:g} left")
    return "; ".join(parts) if parts else "-"


def html_table(rows: Iterable[Sequence[Any]], header: Sequence[str], cls: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ago(t: float | None, now: float | None = None) -> float | None:
    if t is None:
        return None
    return max(0.0, (now or time.time()) - t)
