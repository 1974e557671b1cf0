"""Small formatting helpers shared by the panels' widget and text views."""

from __future__ import annotations

import html
import time
from typing import Any, Iterable, Sequence

from kernelpit.terminal import human_bytes, human_seconds, table  # noqa: F401 - the panels' too

STATE_COLOURS = {
    "idle": "#2e7d32", "ready": "#2e7d32", "busy": "#1565c0", "starting": "#8d6e00",
    "stopping": "#e65100", "recycling": "#e65100", "dead": "#c62828",
    "disconnected": "#c62828",
}


def colour(state: str) -> str:
    return STATE_COLOURS.get(state, "#555555")


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


def html_table(rows: Iterable[Sequence[Any]], header: Sequence[str], cls: str = "") -> str:
    head = "".join(f"<th style='text-align:left'>{html.escape(str(h))}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td style='text-align:left'>{c}</td>" for c in r) + "</tr>"
                   for r in rows)
    return f"<table class='{cls}'><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def ago(t: float | None, now: float | None = None) -> float | None:
    if t is None:
        return None
    return max(0.0, (now or time.time()) - t)
