"""Kernelpit benchmark suite: ``python -m benchmarks`` or ``python benchmarks/run.py``.

Runs each scenario on Kernelpit and on each peer that can do it (ipyparallel,
Dask distributed, raw jupyter_client), prints one table and writes
``benchmarks/results/<date>-<host>.json``.  See docs/performance.md.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `benchmarks` importable
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    __package__ = "benchmarks"

from benchmarks import cleanup, quiet  # noqa: E402
from benchmarks.peers import ROOT, bytecode_as_installed, worker_environment  # noqa: E402
from benchmarks.report import render  # noqa: E402
from benchmarks.scenarios import SCENARIOS, Context  # noqa: E402

ALL_PEERS = ("ipyparallel", "dask", "jupyter_client")
PACKAGES = ("kernelpit", "jupyter_client", "ipykernel", "ipython", "pyzmq", "grpcio", "protobuf", "psutil",
            "ipyparallel", "dask", "distributed", "cloudpickle", "msgpack", "tornado")


def _log(msg: str) -> None:
    print(msg, file=sys.stderr, flush=True)


def machine() -> dict[str, Any]:
    from importlib import metadata
    cpu = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        cpu = platform.processor()
    versions = {}
    for name in PACKAGES:
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    try:
        commit = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, text=True,
                                capture_output=True).stdout.strip()
        dirty = bool(subprocess.run(["git", "status", "--porcelain", "--", "bridge", "kernels"],
                                    cwd=ROOT, text=True, capture_output=True).stdout.strip())
    except OSError:
        commit, dirty = "", False
    mem = None
    try:
        import psutil
        mem = psutil.virtual_memory().total
    except Exception:
        pass
    return {"host": socket.gethostname(), "nproc": os.cpu_count(), "cpu": cpu,
            "memory_bytes": mem, "python": platform.python_version(),
            "implementation": platform.python_implementation(), "platform": platform.platform(),
            "packages": versions, "git_commit": commit, "core_dirty": dirty}


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m benchmarks", description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help="smaller sizes and fewer repeats (< 3 min)")
    p.add_argument("--repeats", type=int, default=None, help="override every scenario's repeats")
    p.add_argument("--only", default="", help="comma-separated scenarios, e.g. s1,s5 (default: all)")
    p.add_argument("--peers", default=",".join(ALL_PEERS),
                   help=f"comma-separated peers to run ({','.join(ALL_PEERS)}), or 'none'")
    p.add_argument("--no-remote", action="store_true",
                   help="skip Kernelpit's remote (gRPC) client and bridge rows")
    p.add_argument("--workers", type=int, default=2, help="workers per pool (default 2)")
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results"),
                   help="directory for the JSON result (default benchmarks/results)")
    return p.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    only = [s.strip().lower() for s in args.only.split(",") if s.strip()] or list(SCENARIOS)
    unknown = [s for s in only if s not in SCENARIOS]
    if unknown:
        _log(f"unknown scenario(s) {unknown}; known: {', '.join(SCENARIOS)}")
        return 2
    peers = set() if args.peers.strip() == "none" else {
        p.strip() for p in args.peers.split(",") if p.strip()}
    worker_environment()
    compiled = bytecode_as_installed()
    import signal

    def _terminate(signum: int, frame: Any) -> None:  # SIGTERM: still stop every peer
        raise SystemExit(128 + signum)
    signal.signal(signal.SIGTERM, _terminate)
    cleanup.mark_run()  # before any child starts: the reaper touches only marked processes
    started = time.time()
    info_start = machine()  # the tree under test when the run began (the core may change during it)
    before = cleanup.snapshot()
    ctx = Context(quick=args.quick, repeats=args.repeats, peers=peers, workers=args.workers, log=_log,
                  with_remote=not args.no_remote)
    load_start = os.getloadavg()
    results: dict[str, Any] = {}
    try:
        for key in only:
            name, fn = SCENARIOS[key]
            _log(f"[{time.time() - started:6.1f}s] {name} ...")
            ctx.settle(name)
            t0 = time.perf_counter()
            try:
                res = fn(ctx)
            except Exception as exc:  # noqa: BLE001 - one broken scenario must not hide the rest
                import traceback
                res = {"title": name, "rows": [], "targets": [],
                       "error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc()}
                _log(res["traceback"])
            res["seconds"] = time.perf_counter() - t0
            results[name] = res
    finally:
        ctx.close()
        leftovers = cleanup.reap(before, started)
    now = dt.datetime.now(dt.timezone.utc)
    info = machine()
    info["git_commit_at_start"] = info_start["git_commit"]
    info["core_dirty_at_start"] = info_start["core_dirty"]
    doc = {
        "meta": {"date": now.isoformat(timespec="seconds"), "mode": "quick" if args.quick else "full",
                 "repeats_override": args.repeats, "workers": args.workers,
                 "scenarios": list(results), "peers": sorted(peers),
                 "duration_s": time.time() - started, "loadavg_start": load_start,
                 "loadavg_end": os.getloadavg(), "leftover_processes": leftovers, "machine": info,
                 "settle": {"quiet_percent": quiet.QUIET_PERCENT, "waits": ctx.settles},
                 "kernelpit_bytecode_compiled": compiled},
        "scenarios": results,
    }
    out_dir = Path(args.out)
    out_dir.mkdir(parents=True, exist_ok=True)
    path = out_dir / f"{now.date().isoformat()}-{info['host']}.json"
    path.write_text(json.dumps(doc, indent=1, default=str) + "\n")
    print(render(doc))
    print(f"\nwrote {path}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
