"""Measure the pool owner's RSS in a fresh process (``python -m benchmarks.memprobe [workers]``).

A fresh process, so the numbers are not inflated by the suite's own imports
(Dask, ipyparallel, numpy).  Prints one JSON line.
"""

from __future__ import annotations

import gc
import json
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psutil

import kernelpit

from . import kp

ME = psutil.Process()


class Peak:
    """Samples this process's RSS every 5 ms while active; ``peak`` is the maximum seen."""

    def __init__(self) -> None:
        self.peak = ME.memory_info().rss
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, ME.memory_info().rss)
            time.sleep(0.005)

    def __enter__(self) -> "Peak":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()
        self.peak = max(self.peak, ME.memory_info().rss)


def main() -> None:
    workers = int(sys.argv[1]) if len(sys.argv) > 1 else 2
    gc.collect()
    out: dict[str, object] = {"owner_baseline": ME.memory_info().rss}
    with kernelpit.Pool(**kp.pool_settings(workers)) as pool:
        for _ in range(200):
            pool.call("noop")
        time.sleep(0.5)
        gc.collect()
        out["owner_idle"] = ME.memory_info().rss
        out["workers_idle"] = [w.rss for w in pool.workers()]

        def caller(k: int) -> None:
            for _ in range(k):
                pool.call("noop")
        with Peak() as p, ThreadPoolExecutor(32) as ex:
            list(ex.map(caller, [200] * 32))
        out["owner_peak_load"] = p.peak
        with Peak() as p:
            for _ in pool.stream("progress_ts", n=10_000):
                pass
        out["owner_peak_stream"] = p.peak
        with pool.session() as s:
            s.call("payload_bytes", nbytes=100_000_000)
            gc.collect()
            with Peak() as p:
                v = s.call("payload_bytes", nbytes=100_000_000)
                del v
            s.call("drop_payloads")
        out["owner_peak_payload"] = p.peak
        gc.collect()
        time.sleep(0.3)
        out["owner_after"] = ME.memory_info().rss
        out["workers_after"] = [w.rss for w in pool.workers()]
    print(json.dumps(out))


if __name__ == "__main__":
    main()
