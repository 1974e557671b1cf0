"""The scheduler's own cost per call, without kernels: ``python -m benchmarks.dispatch``.

Runs the pool's real dispatch path (``WorkerGroup.submit``, the end of a call, ``pump``) over
real ``Call`` objects and kernel-less workers (``WorkerBase``), and prints CPU nanoseconds per
call for: the fast path (a worker is free), a backlog of one tenant, and a backlog shared
by 8 tenants.  Works against older trees too (no tenants, no ``WorkerGroup.ended``): run it
with PYTHONPATH pointing at another checkout's package to compare.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any

from kernelpit.config import PoolConfig
from kernelpit.options import CallOptions
from kernelpit.pool.call import Call
from kernelpit.pool.group import WorkerGroup
from kernelpit.pool.state import WorkerBase


class Worker(WorkerBase):
    def begin(self, call: Call) -> None:  # what Worker.begin does, minus the socket
        self.inflight[call.id] = call
        call.worker = self


def _group(workers: int) -> WorkerGroup:
    cfg = PoolConfig(name="p", workers=workers, queue_size=10**6)
    group = WorkerGroup(cfg, None, Path("/nonexistent"), "run", lambda: 0,  # type: ignore[arg-type]
                        lambda w: None, asyncio.Semaphore(1))
    for i in range(1, workers + 1):
        w = group.workers[i] = Worker(i, cfg)
        w.ready()
    return group


def _end(group: WorkerGroup, worker: Worker, call: Call) -> None:
    if hasattr(group, "ended"):
        group.ended(worker, call)
    else:
        worker.end(call)
    group.pump(worker)


def _calls(n: int, tenants: int) -> list[Call]:
    try:
        options = [CallOptions(tenant=f"t{i}") for i in range(tenants)]  # type: ignore[call-arg]
    except TypeError:  # a tree without tenants
        options = [CallOptions()] * tenants
    return [Call("f", [], {}, options[i % tenants]) for i in range(n)]


def fast_path(n: int) -> float:
    """ns per call: submit to a free worker, then end it (no queue)."""
    group = _group(2)
    calls = _calls(n, 1)
    t0 = time.process_time_ns()
    for call in calls:
        group.submit(call)
        _end(group, call.worker, call)  # type: ignore[arg-type]
    return (time.process_time_ns() - t0) / n


def backlog(n: int, tenants: int, workers: int = 2) -> float:
    """ns per call: ``n`` calls queued behind busy workers, then run to the end, one by one."""
    group = _group(workers)
    calls = _calls(n, tenants)
    t0 = time.process_time_ns()
    for call in calls:
        group.submit(call)
    while True:
        busy = [w for w in group.workers.values() if w.inflight]
        if not busy:
            break
        for w in busy:
            _end(group, w, next(iter(w.inflight.values())))
    return (time.process_time_ns() - t0) / n


def main(argv: list[str] | None = None) -> dict[str, Any]:
    n = 20_000

    async def run() -> dict[str, Any]:
        out: dict[str, list[float]] = {"fast path": [], "backlog, 1 tenant": [],
                                       "backlog, 8 tenants": []}
        for _ in range(5):
            out["fast path"].append(fast_path(n))
            out["backlog, 1 tenant"].append(backlog(n, 1))
            out["backlog, 8 tenants"].append(backlog(n, 8))
        return {k: round(min(v)) for k, v in out.items()}  # CPU time, least of 5: the machine is shared

    result = asyncio.run(run())
    import kernelpit
    result["tree"] = str(Path(kernelpit.__file__).parent.parent)
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main(sys.argv[1:])
