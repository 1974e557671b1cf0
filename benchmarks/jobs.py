"""Durable jobs against plain calls, as ratios measured in one run (targets from issue 13).

    python -m benchmarks.jobs [--store sqlite|postgres|both] [--calls N] [--flood N]
    python -m benchmarks.jobs --only latency --calls 3000     # one phase, for a profiler

* latency: submit -> result p50 over the p50 of a plain call (<= 3x SQLite, <= 5x PostgreSQL)
* submissions/s (N submits in flight together) over plain calls/s the same way (>= 0.25x)
* a flooding producer (a generator yielding N values) journaled, in events/s, over the same
  tool streamed without a journal (>= 0.5x); the job counts until its last event is committed
* replaying that journal to a reattaching reader, in events/s, over the live stream (>= 1x)

PostgreSQL runs as tests/pg.py starts it (a throwaway server on loopback; Debian's
``postgresql`` package).  Everything is in one process on one pool of 2 workers.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import sys
import tempfile
import time
from typing import Any

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ADAPTERS = os.path.join(ROOT, "tests", "adapters")
TARGETS = {"latency": (3.0, 5.0), "submissions": (0.25, 0.25), "journal": (0.5, 0.5),
           "replay": (1.0, 1.0)}


async def _p50(fn: Any, n: int) -> float:
    samples = []
    for _ in range(n):
        t = time.perf_counter()
        await fn()
        samples.append(time.perf_counter() - t)
    return statistics.median(samples)


async def _rate(fn: Any, n: int, concurrency: int = 64) -> float:
    """Operations per second with ``concurrency`` of them in flight."""
    left = iter(range(n))

    async def lane() -> None:
        for _ in left:
            await fn()
    t = time.perf_counter()
    await asyncio.gather(*(lane() for _ in range(concurrency)))
    return n / (time.perf_counter() - t)


async def measure(manager: Any, store_kind: str, target: str, calls: int,
                  flood: int, only: str | None = None) -> dict[str, Any]:
    from kernelpit.jobs import JobRunner, open_store
    from kernelpit.pool.call import CallOptions

    opts = CallOptions()
    store = await open_store(target, namespace=f"bench-{os.getpid()}")
    runner = await JobRunner(manager, store).start()
    try:
        plain = lambda: manager.call("plus", [1, 2], {}, opts)  # noqa: E731

        async def job() -> None:
            info = await runner.submit("plus", [1, 2], {}, opts)
            await runner.result(info.id)

        for _ in range(20):  # warm both paths
            await plain()
            await job()
        call_p50 = await _p50(plain, calls)
        job_p50 = await _p50(job, calls)
        if only == "latency":
            return {"store": store_kind, "call p50 ms": call_p50 * 1e3,
                    "job p50 ms": job_p50 * 1e3, "latency": job_p50 / call_p50}

        call_rate = await _rate(plain, calls * 4)
        submitted: list[str] = []

        async def submit() -> None:
            submitted.append((await runner.submit("plus", [1, 2], {}, opts)).id)
        submit_rate = await _rate(submit, calls * 4)
        await asyncio.gather(*(runner.result(i) for i in submitted))

        stream_rates, journal_rates, replay_rates = [], [], []
        for _ in range(3):
            t = time.perf_counter()
            n = 0
            async for _event in manager.stream("flood", [flood], {}, opts):
                n += 1
            stream_rates.append(n / (time.perf_counter() - t))
            t = time.perf_counter()
            info = await runner.submit("flood", [flood], {}, opts)
            await runner.result(info.id)
            journal_rates.append((await runner.get(info.id)).last_seq /
                                 (time.perf_counter() - t))
            t = time.perf_counter()
            m = 0
            async for _entry in runner.events(info.id):
                m += 1
            replay_rates.append(m / (time.perf_counter() - t))
        stream_rate = statistics.median(stream_rates)
        return {
            "store": store_kind,
            "call p50 ms": call_p50 * 1e3, "job p50 ms": job_p50 * 1e3,
            "latency": job_p50 / call_p50,
            "calls/s": call_rate, "submissions/s": submit_rate,
            "submissions": submit_rate / call_rate,
            "stream events/s": stream_rate,
            "journaled events/s": statistics.median(journal_rates),
            "journal": statistics.median(journal_rates) / stream_rate,
            "replay events/s": statistics.median(replay_rates),
            "replay": statistics.median(replay_rates) / stream_rate,
        }
    finally:
        await runner.stop()
        await store.close()


def verdict(kind: str, result: dict[str, Any]) -> list[str]:
    lines = []
    for name, (sqlite_target, pg_target) in TARGETS.items():
        target = sqlite_target if kind == "sqlite" else pg_target
        value = result[name]
        ok = value <= target if name == "latency" else value >= target
        sign = "<=" if name == "latency" else ">="
        lines.append(f"  {name:<12} {value:6.2f}x  (target {sign} {target:g}x)  "
                     f"{'met' if ok else 'MISSED'}")
    return lines


async def main_async(opts: argparse.Namespace) -> int:
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    from kernelpit.config import PoolConfig
    from kernelpit.pool import PoolManager

    manager = PoolManager([PoolConfig(adapters=["kp_jobs"], workers=2, path=[ADAPTERS])])
    await manager.start()
    missed = 0
    try:
        kinds = ["sqlite", "postgres"] if opts.store == "both" else [opts.store]
        with tempfile.TemporaryDirectory() as tmp:
            for kind in kinds:
                if kind == "sqlite":
                    target = os.path.join(tmp, "bench.sqlite")
                else:
                    import pg

                    try:
                        target = pg.server().database("kernelpit_bench")
                    except LookupError as exc:
                        print(f"postgres: skipped ({exc})")
                        continue
                result = await measure(manager, kind, target, opts.calls, opts.flood, opts.only)
                if opts.only == "latency":
                    print(f"{kind}: call p50 {result['call p50 ms']:.3f} ms, job p50 "
                          f"{result['job p50 ms']:.3f} ms: {result['latency']:.2f}x")
                    continue
                print(f"{kind}: call p50 {result['call p50 ms']:.3f} ms, job p50 "
                      f"{result['job p50 ms']:.3f} ms; calls/s {result['calls/s']:.0f}, "
                      f"submissions/s {result['submissions/s']:.0f}; stream "
                      f"{result['stream events/s']:.0f} ev/s, journaled "
                      f"{result['journaled events/s']:.0f} ev/s, replay "
                      f"{result['replay events/s']:.0f} ev/s")
                lines = verdict(kind, result)
                missed += sum("MISSED" in line for line in lines)
                print("\n".join(lines))
    finally:
        await manager.close()
    return 1 if missed else 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m benchmarks.jobs",
                                     description=__doc__.split("\n\n")[0])
    parser.add_argument("--store", choices=["sqlite", "postgres", "both"], default="both")
    parser.add_argument("--calls", type=int, default=300)
    parser.add_argument("--flood", type=int, default=20_000)
    parser.add_argument("--only", choices=["latency"], help="measure only this ratio")
    return asyncio.run(main_async(parser.parse_args(argv)))


if __name__ == "__main__":
    sys.exit(main())
