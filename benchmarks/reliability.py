"""Reliability figures for docs/reliability.md: crash recovery, recycling under load, a soak.

    python -m benchmarks.reliability              # kill loop, crash + recycling figures (~1.5 min)
    python -m benchmarks.reliability --soak 600   # plus a 10-minute soak

Prints a table and writes benchmarks/results/reliability-<date>-<host>.json.
Figures only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import threading
import time
from pathlib import Path

import psutil

import kernelpit

ADAPTER = "kernelpit.kernels.demo"
RESULTS = Path(__file__).parent / "results"


def _serving(pool):
    return [w for w in pool.workers() if w.state in ("idle", "busy") and not w.spare]


def _wait(predicate, timeout=60.0):
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.002)


def crash_recovery(kills: int) -> dict:
    """kill -9 a busy worker: time to the caller's error, and until the pool is full again."""
    to_error, to_full = [], []
    with kernelpit.Pool(adapters=[ADAPTER], workers=2, taint_threshold=10**6) as pool:
        for _ in range(kills):
            _wait(lambda: len(_serving(pool)) == 2 and all(w.state == "idle" for w in _serving(pool)))
            victim = _serving(pool)[0]
            stream = pool.options(worker=victim.id).stream("spin", 30)
            next(stream)  # started
            t0 = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            last = list(stream)[-1]
            to_error.append(time.perf_counter() - t0)
            assert isinstance(last.error, kernelpit.WorkerCrashed), last
            _wait(lambda: len([w for w in _serving(pool) if w.state == "idle"]) == 2)
            to_full.append(time.perf_counter() - t0)
    return {"kills": kills, "to_error_ms": _summary([x * 1000 for x in to_error]),
            "to_full_s": _summary(to_full)}


def kill_loop(kills: int, seconds: float = 10.0) -> dict:
    """Issue 12's defect, replayed: 4 callers run a 50 ms tool on 2 workers while workers are
    killed with SIGKILL from outside, ``kills`` times in about ``seconds``; with the default
    taint settings the tool must never be quarantined, and the refill must not back off."""
    outcomes: dict[str, int] = {}
    stop = threading.Event()

    def caller() -> None:
        while not stop.is_set():
            try:
                pool.call("train", epochs=1, seconds_per_epoch=0.05)
                name = "ok"
            except Exception as exc:  # noqa: BLE001 - counted by type
                name = type(exc).__name__
            outcomes[name] = outcomes.get(name, 0) + 1

    with kernelpit.Pool(adapters=[ADAPTER], workers=2) as pool:
        threads = [threading.Thread(target=caller) for _ in range(4)]
        for t in threads:
            t.start()
        t0, done = time.perf_counter(), 0
        while done < kills:
            for w in pool.workers():
                if w.pid and done < kills:
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(w.pid, signal.SIGKILL)
                        done += 1
                    time.sleep(seconds / kills)  # a kill loop, paced as in the report
        last_kill = time.perf_counter()
        _wait(lambda: len([w for w in _serving(pool) if w.state in ("idle", "busy")]) == 2)
        refill = time.perf_counter() - last_kill
        stop.set()
        for t in threads:
            t.join()
        group = pool._async._backend.manager.groups["default"]
        backoffs = group.start_backoffs
    return {"kills": kills, "kill_seconds": round(last_kill - t0, 1), "outcomes": outcomes,
            "refill_after_last_kill_s": round(refill, 2), "start_backoffs": backoffs}


def _load(pool, seconds: float, callers: int, tool: str, *args) -> tuple[int, list[str]]:
    calls, failures = [0], []
    stop = time.monotonic() + seconds

    def caller():
        while time.monotonic() < stop:
            try:
                pool.call(tool, *args)
                calls[0] += 1
            except Exception as exc:  # noqa: BLE001 - counted, reported
                failures.append(f"{type(exc).__name__}: {exc}")

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return calls[0], failures


def recycling_under_load(seconds: float) -> dict:
    out = {}
    for name, settings in [("max_calls=500", {"max_calls": 500}),
                           ("max_age=2s", {"max_age": 2.0, "health_interval": 0.2})]:
        with kernelpit.Pool(adapters=[ADAPTER], workers=2, **settings) as pool:
            first = {w.id for w in pool.workers()}
            calls, failures = _load(pool, seconds, 4, "add", 1, 2)
            recycles = max(w.recycles for w in _serving(pool))
            replaced = len(first - {w.id for w in pool.workers()})
        out[name] = {"calls": calls, "failed": len(failures), "failures": failures[:5],
                     "recycles_in_slot": recycles, "original_workers_replaced": replaced}
    return out


def soak(seconds: float) -> dict:
    """The highest rate 8 callers sustain on 2 workers, for ``seconds``; RSS before and after."""
    me = psutil.Process()
    with kernelpit.Pool(adapters=[ADAPTER], workers=2, max_calls=50_000) as pool:
        pool.map("add", range(2000), range(2000))
        rss0 = me.memory_info().rss
        workers0 = [w.rss for w in pool.workers()]
        t0 = time.perf_counter()
        calls, failures = _load(pool, seconds, 8, "add", 1, 2)
        elapsed = time.perf_counter() - t0
        rss1 = me.memory_info().rss
        workers1 = [w.rss for w in _serving(pool)]
        recycles = max(w.recycles for w in _serving(pool))
    return {"seconds": round(elapsed, 1), "calls": calls, "calls_per_s": round(calls / elapsed),
            "failed": len(failures), "failures": failures[:5],
            "controller_rss_mb": [round(rss0 / 1e6, 1), round(rss1 / 1e6, 1)],
            "worker_rss_mb": [[round(r / 1e6, 1) for r in workers0],
                              [round(r / 1e6, 1) for r in workers1]],
            "recycles_in_slot": recycles}


def _summary(xs: list[float]) -> dict:
    xs = sorted(xs)
    return {"min": round(xs[0], 3), "median": round(statistics.median(xs), 3),
            "max": round(xs[-1], 3), "n": len(xs)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kills", type=int, default=20)
    parser.add_argument("--recycle-seconds", type=float, default=10.0)
    parser.add_argument("--soak", type=float, default=0.0, help="soak seconds (0: skip)")
    args = parser.parse_args(argv)
    report = {"machine": {"host": socket.gethostname(), "cpus": os.cpu_count(),
                          "python": platform.python_version()},
              "date": datetime.datetime.now().isoformat(timespec="seconds")}
    report["kill_loop"] = kill_loop(args.kills)
    print("kill loop:", json.dumps(report["kill_loop"]))
    report["crash_recovery"] = crash_recovery(args.kills)
    print("crash recovery:", json.dumps(report["crash_recovery"]))
    report["recycling_under_load"] = recycling_under_load(args.recycle_seconds)
    print("recycling under load:", json.dumps(report["recycling_under_load"]))
    if args.soak:
        report["soak"] = soak(args.soak)
        print("soak:", json.dumps(report["soak"]))
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"reliability-{datetime.date.today()}-{socket.gethostname()}.json"
    path.write_text(json.dumps(report, indent=2))
    print(f"wrote {path}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
