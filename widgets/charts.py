"""Small SVG line charts for the health panel: no plotting library, one string per chart."""

from __future__ import annotations

import html
from typing import Sequence

PALETTE = ("#1565c0", "#2e7d32", "#e65100", "#6a1b9a", "#00838f", "#ad1457")


def line_chart(title: str, series: dict[str, Sequence[float | None]], *, unit: str = "",
               limit: float | None = None, limit_label: str = "", width: int = 236,
               height: int = 90, fmt: str = "{:.3g}") -> str:
    """An SVG chart: one polyline per series (gaps where a value is None), an optional
    dashed ``limit`` line (e.g. max_memory), the latest value of each in the legend."""
    values = [v for ys in series.values() for v in ys if v is not None]
    top = max([*values, limit or 0.0, 1e-12])
    top *= 1.1
    pad_top, pad_bottom = 16, 4
    plot_h = height - pad_top - pad_bottom
    n = max((len(ys) for ys in series.values()), default=0)

    def y(v: float) -> float:
        return pad_top + plot_h * (1 - v / top)

    parts = [f"<svg xmlns='http://www.w3.org/2000/svg' width='{width}' height='{height}' "
             f"class='kp-chart' style='font:10px sans-serif;background:#fafafa;"
             f"border:1px solid #e0e0e0;border-radius:3px'>",
             f"<text x='4' y='11' fill='#333'>{html.escape(title)}</text>"]
    legend = []
    for i, (name, ys) in enumerate(series.items()):
        colour = PALETTE[i % len(PALETTE)]
        runs, run = [], []
        for k, v in enumerate(ys):
            if v is None:
                if run:
                    runs.append(run)
                run = []
                continue
            x = width * k / max(1, n - 1) if n > 1 else width / 2
            run.append(f"{x:.1f},{y(v):.1f}")
        if run:
            runs.append(run)
        for r in runs:
            parts.append(f"<polyline fill='none' stroke='{colour}' stroke-width='1.5' "
                         f"points='{' '.join(r)}'/>")
        last = next((v for v in reversed(ys) if v is not None), None)
        if last is not None:
            legend.append((colour, f"{name} {fmt.format(last)}{unit}"))
    if limit is not None:
        parts.append(f"<line x1='0' x2='{width}' y1='{y(limit):.1f}' y2='{y(limit):.1f}' "
                     "stroke='#c62828' stroke-dasharray='4 3'/>"
                     f"<text x='{width - 4}' y='{y(limit) - 2:.1f}' text-anchor='end' "
                     f"fill='#c62828'>{html.escape(limit_label)}</text>")
    x = width - 4
    for colour, text in reversed(legend):
        parts.append(f"<text x='{x}' y='11' text-anchor='end' fill='{colour}'>"
                     f"{html.escape(text)}</text>")
        x -= 6 * len(text) + 8
    parts.append("</svg>")
    return "".join(parts)
