"""Make sure no peer process outlives the suite, and say so when one tried.

Only the suite's own processes are ever reaped: its descendants, and orphans that carry
the run's mark (:data:`MARK` in their environment, inherited from the suite).  A matching
process someone else started during the run on a shared machine is left alone.
"""

from __future__ import annotations

import os
import secrets
import time
from typing import Any

import psutil

MARK = "KERNELPIT_BENCH_RUN"


def mark_run() -> str:
    """Mark this process (and so every process it starts) as part of this run."""
    os.environ[MARK] = secrets.token_hex(8)
    return os.environ[MARK]


def _marked(proc: psutil.Process) -> bool:
    try:
        return proc.environ().get(MARK) == os.environ.get(MARK, "-")
    except psutil.Error:
        return False

PATTERNS = ("ipyparallel", "ipengine", "ipcontroller", "ipcluster", "distributed", "dask",
            "kernelpit.kernels", "kernelpit serve", "ipykernel")


def _matches(proc: psutil.Process) -> str | None:
    try:
        cmd = " ".join(proc.cmdline())
    except psutil.Error:
        return None
    return cmd if any(p in cmd for p in PATTERNS) else None


def _own_helper(proc: psutil.Process) -> bool:
    """multiprocessing's resource tracker: it belongs to this process and exits with it."""
    try:
        return "multiprocessing.resource_tracker" in " ".join(proc.cmdline())
    except psutil.Error:
        return True


def snapshot() -> set[int]:
    """Pids of matching processes that existed before the suite started (not ours to reap)."""
    return {p.pid for p in psutil.process_iter() if _matches(p)}


def reap(before: set[int], started: float, wait: float = 8.0) -> list[dict[str, Any]]:
    """Wait for our peer/worker processes to exit; kill and report any that do not."""
    me = psutil.Process()

    def ours() -> list[psutil.Process]:
        # every descendant is ours (Dask's spawned workers run "python -c from multiprocessing...")
        found = {p.pid: p for p in me.children(recursive=True) if not _own_helper(p)}
        # orphans: started during the run, re-parented to init (e.g. engines of a dead controller)
        for p in psutil.process_iter(["ppid", "create_time"]):
            try:
                if (p.pid not in before and p.info["ppid"] == 1
                        and p.info["create_time"] >= started - 1 and _matches(p) and _marked(p)):
                    found[p.pid] = p
            except psutil.Error:
                pass
        return list(found.values())

    deadline = time.monotonic() + wait
    left = ours()
    while left and time.monotonic() < deadline:
        time.sleep(0.2)
        left = [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE]
    report = []
    for p in left:
        try:
            report.append({"pid": p.pid, "cmdline": " ".join(p.cmdline())[:200]})
            p.kill()
        except psutil.Error:
            pass
    return report
