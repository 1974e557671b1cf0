"""What the Prometheus metrics cost per call: interleaved A/B runs, metrics on and off.

Two embedded pools run side by side, identical but for ``metrics=`` (A: on, on a registry
of its own, which turns the telemetry bus on; B: off).  Each round measures A then B (the
order alternates every round) on:

* S1-like: no-op call latency, one blocking caller (median of ``--calls`` calls);
* S2-like: no-op throughput, 32 asyncio tasks on the pool's loop (calls/s).

The machine's noise is larger than the effect, so only ratios of neighbouring runs are
compared: the report is the median over rounds of A/B (latency) and B/A (throughput), i.e.
"how many times slower with metrics on"; the target is <= 1.05.

    python -m benchmarks.observability            # 10 rounds
    python -m benchmarks.observability --rounds 20 --calls 2000
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import time
from typing import Any

import kernelpit

CALLERS = 32


def s1_median_ms(pool: Any, calls: int) -> float:
    xs = []
    for _ in range(calls):
        t0 = time.perf_counter()
        pool.call("noop")
        xs.append(time.perf_counter() - t0)
    return statistics.median(xs) * 1e3


def s2_rate(pool: Any, total: int) -> float:
    aio = pool._async  # the same pool's asyncio API, on its own loop
    per = total // CALLERS

    async def run() -> float:
        async def caller(k: int) -> None:
            for _ in range(k):
                await aio.call("noop")
        t0 = time.perf_counter()
        await asyncio.gather(*(caller(per) for _ in range(CALLERS)))
        return per * CALLERS / (time.perf_counter() - t0)
    return pool._portal.call(run)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--calls", type=int, default=1000, help="S1 calls per run")
    parser.add_argument("--total", type=int, default=2048, help="S2 calls per run")
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args(argv)
    from prometheus_client import CollectorRegistry

    settings = dict(adapters=["kernelpit.kernels.demo"], workers=args.workers)
    s1_ratios, s2_ratios, runs = [], [], []
    with kernelpit.Pool(name="metrics-on", metrics=CollectorRegistry(), **settings) as on, \
            kernelpit.Pool(name="metrics-off", **settings) as off:
        for pool in (on, off):  # warm up both
            s1_median_ms(pool, 200)
            s2_rate(pool, 512)
        for r in range(args.rounds):
            order = (on, off) if r % 2 == 0 else (off, on)
            s1 = {p is on: s1_median_ms(p, args.calls) for p in order}
            s2 = {p is on: s2_rate(p, args.total) for p in order}
            s1_ratios.append(s1[True] / s1[False])
            s2_ratios.append(s2[False] / s2[True])
            runs.append({"s1_ms_on": s1[True], "s1_ms_off": s1[False],
                         "s2_rate_on": s2[True], "s2_rate_off": s2[False]})
            print(f"round {r + 1}: S1 {s1[True]:.3f} / {s1[False]:.3f} ms = "
                  f"{s1_ratios[-1]:.3f};  S2 {s2[True]:.0f} / {s2[False]:.0f} calls/s -> "
                  f"{s2_ratios[-1]:.3f}", flush=True)
    result = {"s1_ratio_median": statistics.median(s1_ratios),
              "s2_ratio_median": statistics.median(s2_ratios), "rounds": runs,
              "target": 1.05}
    print(json.dumps({k: v for k, v in result.items() if k != "rounds"}))
    return result


if __name__ == "__main__":
    main()
