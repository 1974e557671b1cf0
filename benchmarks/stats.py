"""Summaries of samples, and the rows and targets a scenario reports."""

from __future__ import annotations

import math
import statistics
import time
from typing import Any, Callable, Iterable


def percentile(sorted_xs: list[float], q: float) -> float:
    """Nearest-rank percentile of an already sorted list (q in 0..100)."""
    if not sorted_xs:
        return math.nan
    k = max(0, min(len(sorted_xs) - 1, math.ceil(q / 100 * len(sorted_xs)) - 1))
    return sorted_xs[k]


def timed_loop(fn: Callable[[], Any], n: int, warmup: int) -> list[float]:
    """Seconds of each of ``n`` calls of ``fn``, after ``warmup`` untimed ones."""
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def summarize(samples: Iterable[float]) -> dict[str, Any]:
    xs = sorted(samples)
    if not xs:
        return {"n": 0}
    return {"n": len(xs), "min": xs[0], "median": statistics.median(xs),
            "p99": percentile(xs, 99), "max": xs[-1], "mean": statistics.fmean(xs)}


def row(system: str, *, case: str = "", unit: str, better: str, samples: Iterable[float] = (),
        kind: str = "per-op", **extra: Any) -> dict[str, Any]:
    """A measured row.

    ``kind`` is ``per-op`` (every sample is one operation: median and p99 are of
    all operations) or ``per-repeat`` (one sample per repeat: min/median/max
    over repeats).  ``better`` is ``lower`` or ``higher``.
    """
    s = summarize(samples)
    out = {"system": system, "case": case, "status": "ok", "unit": unit, "better": better,
           "kind": kind, **s}
    if s["n"] == 0:
        out["status"] = "error"
        out.setdefault("reason", "no samples")
    out.update(extra)
    return out


def skipped(system: str, reason: str, *, case: str = "", unit: str = "", better: str = "lower",
            status: str = "skipped") -> dict[str, Any]:
    return {"system": system, "case": case, "status": status, "reason": reason, "unit": unit,
            "better": better, "n": 0}


def failed(system: str, exc: BaseException, *, case: str = "", unit: str = "",
           better: str = "lower") -> dict[str, Any]:
    return skipped(system, f"{type(exc).__name__}: {exc}".strip(), case=case, unit=unit,
                   better=better, status="error")


def speedup(kp: dict[str, Any] | None, peer: dict[str, Any] | None) -> float | None:
    """How many times better Kernelpit's median is than the peer's (>1: Kernelpit wins)."""
    if not kp or not peer or kp.get("status") != "ok" or peer.get("status") != "ok":
        return None
    a, b = kp.get("median"), peer.get("median")
    if not a or not b or a != a or b != b:
        return None
    return (b / a) if kp["better"] == "lower" else (a / b)


def is_kernelpit(r: dict[str, Any]) -> bool:
    return r["system"].startswith("kernelpit")


def is_reference(r: dict[str, Any]) -> bool:
    """A reference row (``ref-...``): what a target is measured against, not a competitor."""
    return r["system"].startswith("ref-")


def add_ratios(rows: list[dict[str, Any]]) -> None:
    """Set ``vs_peers`` on every Kernelpit row: for each peer row of the same case, how many
    times better this row's median is (>1: Kernelpit wins; a row behind a peer shows < 1)."""
    for r in rows:
        if not is_kernelpit(r) or r.get("status") != "ok":
            continue
        ratios = {p["system"]: speedup(r, p) for p in rows
                  if p["case"] == r["case"] and not is_kernelpit(p) and not is_reference(p)}
        r["vs_peers"] = {k: v for k, v in ratios.items() if v is not None}


def ratio(a: dict[str, Any] | None, b: dict[str, Any] | None, of: str = "median") -> float | None:
    """``a[of] / b[of]`` of two measured rows, or None when either is missing."""
    if not a or not b or a.get("status") != "ok" or b.get("status") != "ok":
        return None
    x, y = a.get(of), b.get(of)
    if not x or not y or x != x or y != y:
        return None
    return x / y


def find(rows: list[dict[str, Any]], system: str, case: str = "") -> dict[str, Any] | None:
    for r in rows:
        if r["system"] == system and r["case"] == case and r.get("status") == "ok":
            return r
    return None


def target(tid: str, text: str, value: float | None, threshold: float, op: str,
           why_unknown: str = "", *, ratio: bool = False, detail: str = "") -> dict[str, Any]:
    """A target: ``value op threshold`` (op is ``<=`` or ``>=``); met is None when not measured.

    ``ratio``: value and threshold are ratios of two numbers of the same run (printed as
    ``1.23x``); ``detail`` says what they were.
    """
    out = {"id": tid, "text": text, "threshold": threshold, "op": op, "ratio": ratio}
    if value is None or value != value:
        return {**out, "value": None, "met": None, "note": why_unknown or "not measured"}
    met = value <= threshold if op == "<=" else value >= threshold
    return {**out, "value": value, "met": met, **({"detail": detail} if detail else {})}
