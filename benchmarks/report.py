"""The one table the suite prints (and docs/performance.md quotes)."""

from __future__ import annotations

from typing import Any


def fmt(x: Any) -> str:
    if x is None or x != x:
        return "-"
    x = float(x)
    if x == 0:
        return "0"
    a = abs(x)
    if a >= 10_000:
        return f"{x:,.0f}"
    if a >= 100:
        return f"{x:.0f}"
    if a >= 10:
        return f"{x:.1f}"
    if a >= 1:
        return f"{x:.2f}"
    if a >= 0.01:
        return f"{x:.3f}"
    return f"{x:.2g}"


def _spread(r: dict[str, Any]) -> str:
    if r.get("n", 0) <= 1:
        return ""
    return f"{fmt(r.get('min'))}..{fmt(r.get('max'))}"


SHORT = {"ipyparallel": "ipp", "jupyter_client": "jc"}


def _vs_peers(r: dict[str, Any]) -> str:
    """``ipp 2.59x dask 0.93x``: this Kernelpit row against every peer of its case."""
    return "  ".join(f"{SHORT.get(p, p)} {x:.2f}x" for p, x in (r.get("vs_peers") or {}).items())


def render(doc: dict[str, Any]) -> str:
    meta = doc["meta"]
    m = meta["machine"]
    head = (f"Kernelpit benchmarks ({meta['mode']}), {meta['date']}, {m['host']}: {m['nproc']} CPU "
            f"({m['cpu']}), Python {m['python']}, load avg at start "
            f"{' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}")
    cols = ("scenario", "case", "system", "median", "p99", "min..max", "unit", "n", "Kp/peer")
    lines: list[tuple[str, ...]] = []
    for key, sc in doc["scenarios"].items():
        label = key.split("_", 1)[0].upper()
        first = True
        if sc.get("error"):
            lines.append((label, "", "(scenario failed)", "", "", "", "", "", sc["error"][:80]))
            continue
        for r in sc["rows"]:
            scen = label if first else ""
            first = False
            if r.get("status") != "ok":
                lines.append((scen, r.get("case", ""), r["system"], r["status"], "", "", r.get("unit", ""),
                              "", (r.get("reason") or "")[:90]))
                continue
            p99 = fmt(r.get("p99")) if r.get("kind") == "per-op" else "-"
            lines.append((scen, r.get("case", ""), r["system"], fmt(r.get("median")), p99,
                          _spread(r), r["unit"], str(r.get("n", "")), _vs_peers(r)))
    widths = [max(len(c), *(len(l[i]) for l in lines if i < len(l) - 1 or True)) for i, c in enumerate(cols)]
    widths[-1] = len(cols[-1])

    def line(vals: tuple[str, ...]) -> str:
        parts = [v.ljust(widths[i]) if i < 3 or i == 6 else v.rjust(widths[i])
                 for i, v in enumerate(vals[:-1])]
        return "  ".join(parts) + "  " + vals[-1]
    out = [head, "", line(cols), line(tuple("-" * w for w in widths[:-1]) + ("-" * 7,))]
    last = None
    for vals in lines:
        if vals[0] and last is not None:
            out.append("")
        last = vals
        out.append(line(vals).rstrip())
    out.append("")
    out.append("Kp/peer: for each Kernelpit row, how many times better its median is than each "
               "peer's in the same case (>1 = Kernelpit better, <1 = the peer is ahead).")
    out.append("ref-* rows are references for the targets (not peers): a plain ipykernel start, "
               "a bare grpc.aio echo and stream, a memcpy into pre-faulted memory.")
    out.append("median/p99 are over all operations for latencies; for rates, times and sizes "
               "min..max is over repeats.")
    out.append("")
    out.append("TARGETS")
    for key, sc in doc["scenarios"].items():
        for t in sc.get("targets", []):
            status = {True: "MET", False: "MISSED", None: "NOT MEASURED"}[t["met"]]
            x = "x" if t.get("ratio") else ""
            val = fmt(t["value"]) + x if t["value"] is not None else "-"
            note = t.get("note") or t.get("detail")
            note = f"  ({note})" if note else ""
            out.append(f"  {t['id']:<24} {t['text']:<62} {val:>9} {t['op']} "
                       f"{fmt(t['threshold']) + x:<7} {status}{note}")
    if meta.get("leftover_processes"):
        out.append("")
        out.append(f"LEFTOVER PROCESSES (killed): {meta['leftover_processes']}")
    else:
        out.append("")
        out.append("No peer or worker process outlived the run (checked with psutil).")
    return "\n".join(out)


def machine_lines(doc: dict[str, Any]) -> list[str]:
    meta = doc["meta"]
    m = meta["machine"]
    pk = m.get("packages", {})
    ver = ", ".join(f"{k} {v}" for k, v in pk.items() if v)
    mem = f"{m['memory_bytes'] / 2**30:.0f} GiB RAM, " if m.get("memory_bytes") else ""
    return [
        f"- Run finished {meta['date']} ({meta['mode']} mode, {meta['duration_s'] / 60:.0f} min), host `{m['host']}`, "
        + (f"git `{m['git_commit_at_start']}`"
           f"{' with uncommitted core changes' if m.get('core_dirty_at_start') else ''} at start, "
           if "git_commit_at_start" in m else "")
        + f"git `{m.get('git_commit', '')}`{' with uncommitted core changes' if m.get('core_dirty') else ''}"
        + (" at end" if "git_commit_at_start" in m else ""),
        f"- CPU: {m['nproc']} × {m['cpu']}; {mem}{m['platform']}",
        f"- Python {m['python']} ({m['implementation']})",
        f"- Packages: {ver}",
        f"- Load average (1/5/15 min) at start {' '.join(f'{x:.2f}' for x in meta['loadavg_start'])}, "
        f"at end {' '.join(f'{x:.2f}' for x in meta['loadavg_end'])}",
    ]


def targets_markdown(doc: dict[str, Any]) -> list[str]:
    """The targets as the Markdown table of docs/performance.md."""
    out = ["| id | target | value | threshold | status | from |", "|---|---|---|---|---|---|"]
    for sc in doc["scenarios"].values():
        for t in sc.get("targets", []):
            x = "x" if t.get("ratio") else ""
            val = fmt(t["value"]) + x if t["value"] is not None else "-"
            status = {True: "met", False: "**missed**", None: "not measured"}[t["met"]]
            out.append(f"| {t['id']} | {t['text']} | {val} | {t['op']} {fmt(t['threshold'])}{x} | "
                       f"{status} | {t.get('detail') or t.get('note') or ''} |")
    return out


def main(argv: list[str] | None = None) -> int:
    """``python -m benchmarks.report RESULT.json [--markdown]``: print a result file's table
    again (``--markdown``: also the machine lines and the targets table of docs/performance.md)."""
    import json
    import sys
    args = sys.argv[1:] if argv is None else argv
    if not args:
        print("usage: python -m benchmarks.report RESULT.json [--markdown]", file=sys.stderr)
        return 2
    with open(args[0]) as f:
        doc = json.load(f)
    print(render(doc))
    print()
    print("\n".join(machine_lines(doc)))
    if "--markdown" in args[1:]:
        print()
        print("\n".join(targets_markdown(doc)))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
