"""Workloads of the scenarios whose targets are missed, alone, for a profiler.

    py-spy record -o out.txt --format raw -r 500 -- python -m benchmarks.profile_targets map
    python -m benchmarks.profile_targets start4
    python -m benchmarks.profile_targets stream 20000 3 1

``map``: Pool.map of 20,000 tiny items (scenario 3).  ``start4``: kernelpit.Pool(workers=4)
(scenario 4), with a timeline of the start from the pool's log when available.  ``stream``:
a progress flood embedded and through a bridge (scenario 6).  ``ray_arrow [calls]``: a cached
100 MB Arrow table from a worker on another node of a local Ray cluster and from a local
worker, interleaved (scenario 9; ``py-spy record --subprocesses`` sees the node's kernel).
"""

from __future__ import annotations

import sys
import time

import kernelpit

from . import kp


def run_map(n: int = 20_000) -> None:
    with kernelpit.Pool(**kp.pool_settings(2, queue_size=2 * n)) as pool:
        items = list(range(n))
        opts = kp.map_options(pool.map, n, 2)
        pool.map("inc", items[:200], **opts)
        t0 = time.perf_counter()
        pool.map("inc", items, **opts)
        dt = time.perf_counter() - t0
        print(f"map {n} items: {dt:.2f} s = {n / dt:,.0f} items/s ({opts or 'one call per item'})")
        for k in (1000, 2000, 5000, 10_000):
            t0 = time.perf_counter()
            pool.map("inc", items[:k], **opts)
            dt = time.perf_counter() - t0
            print(f"map {k} items: {k / dt:,.0f} items/s")


def _timeline() -> dict:
    """Timestamp each worker's start phases by wrapping pool internals (profiling only)."""
    from kernelpit.pool import worker as wmod
    marks: dict = {}
    orig_launch, orig_msg, orig_start = wmod.launch, wmod.Worker.on_message, wmod.Worker.start

    async def launch(*a, **kw):
        marks.setdefault("launch_begin", []).append(time.perf_counter())
        km = await orig_launch(*a, **kw)
        marks.setdefault("launched", []).append(time.perf_counter())
        return km

    def on_message(self, msg):
        if msg.get("op") == "hello":
            marks.setdefault("hello", []).append(time.perf_counter())
        return orig_msg(self, msg)

    async def start(self):
        await orig_start(self)
        marks.setdefault("ready", []).append(time.perf_counter())

    wmod.launch, wmod.Worker.on_message, wmod.Worker.start = launch, on_message, start
    from kernelpit.provisioners import fork
    orig_zstart, orig_spawn = fork.Zygote.start, fork.Zygote.spawn

    async def zstart(self, *a, **kw):
        marks.setdefault("zygote_begin", []).append(time.perf_counter())
        await orig_zstart(self, *a, **kw)
        marks.setdefault("zygote_ready", []).append(time.perf_counter())

    async def spawn(self, *a, **kw):
        marks.setdefault("fork_asked", []).append(time.perf_counter())
        child = await orig_spawn(self, *a, **kw)
        marks.setdefault("forked", []).append(time.perf_counter())
        return child

    fork.Zygote.start, fork.Zygote.spawn = zstart, spawn
    return marks


def run_maploop(n: int = 20_000, loops: int = 40) -> None:
    """The batched map only, repeated, so a profile is not dominated by start-up."""
    with kernelpit.Pool(**kp.pool_settings(2, queue_size=2 * n)) as pool:
        items = list(range(n))
        opts = kp.map_options(pool.map, n, 2)
        pool.map("inc", items, **opts)
        t0 = time.perf_counter()
        for _ in range(loops):
            pool.map("inc", items, **opts)
        dt = time.perf_counter() - t0
        print(f"map {n} items x {loops}: {n * loops / dt:,.0f} items/s ({opts})")


def run_ipp_map(n: int = 20_000, loops: int = 40) -> None:
    from .peers import IppPeer
    from . import peerfuncs as pf
    peer = IppPeer(2)
    peer.start()
    try:
        view = peer.view
        chunk = kp.chunksize_for(n, 2)
        items = list(range(n))
        view.map_sync(pf.inc, items, chunksize=chunk)
        t0 = time.perf_counter()
        for _ in range(loops):
            view.map_sync(pf.inc, items, chunksize=chunk)
        dt = time.perf_counter() - t0
        print(f"ipyparallel map_sync {n} items x {loops}: {n * loops / dt:,.0f} items/s (chunksize={chunk})")
    finally:
        peer.stop()


def run_start(n: int = 4, reps: int = 3) -> None:
    marks = _timeline()
    for _ in range(reps):
        marks.clear()
        t0 = time.perf_counter()
        pool = kernelpit.Pool(**kp.pool_settings(n))
        dt = time.perf_counter() - t0
        pool.close()
        print(f"start {n} workers: {dt:.3f} s")
        for phase in ("zygote_begin", "zygote_ready", "launch_begin", "fork_asked", "forked",
                      "launched", "hello", "ready"):
            print(f"   {phase:<13}" + " ".join(f"{x - t0:6.3f}" for x in sorted(marks.get(phase, []))))


def _flood_once(handle, n: int) -> tuple[float, list[float], int]:
    """One ``progress_ts`` flood: (events/s, delivery latencies in ms, events delivered)."""
    lat = []
    t0 = time.perf_counter()
    for ev in handle.stream("progress_ts", n=n):
        if ev.kind == "progress":
            lat.append((time.monotonic() - float(ev.message)) * 1e3)
        elif ev.kind == "error":
            ev.raise_()
    return n / (time.perf_counter() - t0), lat, len(lat)


def _noop_p50(handle, n: int = 2000) -> float:
    for _ in range(50):
        handle.call("noop")
    xs = []
    for _ in range(n):
        t0 = time.perf_counter()
        handle.call("noop")
        xs.append(time.perf_counter() - t0)
    xs.sort()
    return xs[len(xs) // 2] * 1e3


def _flood_report(label: str, handle, n: int, loops: int) -> None:
    noop = _noop_p50(handle)
    for _ in range(loops):
        rate, lat, got = _flood_once(handle, n)
        lat.sort()
        p50, p99 = lat[len(lat) // 2], lat[min(len(lat) - 1, int(len(lat) * .99))]
        print(f"{label} flood {n}: {rate:,.0f} events/s, {got:,} delivered ({n - got:,} coalesced), "
              f"latency p50 {p50:.2f} ms ({p50 / noop:.1f}x no-op {noop:.3f} ms) "
              f"p99 {p99:.2f} ms ({p99 / noop:.1f}x)", flush=True)


def run_stream(n: int = 20_000, loops: int = 3, remote: int = 1) -> None:
    """Scenario 6: a tool floods ``n`` progress events, embedded, then through a bridge process
    (``remote``: 0 embedded only, 1 both, 2 remote only); latency on the shared monotonic clock,
    as a ratio to the no-op p50 of the same handle."""
    if remote != 2:
        with kernelpit.Pool(**kp.pool_settings(2)) as pool:
            _flood_report("embedded", pool, n, loops)
    if remote:
        bridge = kp.RemoteBridge(2)
        bridge.start()
        try:
            with bridge.connect() as client:
                _flood_report("remote", client, n, loops)
        finally:
            bridge.stop()


def _cpu_split(bridge_pid: int):
    """CPU seconds used by this process (client), the bridge, and the bridge's workers."""
    import psutil
    me, br = psutil.Process(), psutil.Process(bridge_pid)

    def now() -> dict:
        kids = br.children(recursive=True)
        t = lambda p: sum(p.cpu_times()[:2])  # noqa: E731
        return {"client": t(me), "bridge": t(br), "workers": sum(t(k) for k in kids)}
    return now


def run_remote(callers: int = 32, seconds: int = 6, use_aio: int = 0) -> None:
    """S2 over gRPC: ``callers`` threads (or asyncio tasks) on one client of a bridge process."""
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    bridge = kp.RemoteBridge(2)
    bridge.start()
    cpu = _cpu_split(bridge.pid)
    before, t_start = cpu(), time.perf_counter()
    try:
        _run_remote(bridge, callers, seconds, use_aio)
        after, wall = cpu(), time.perf_counter() - t_start
        print("CPU seconds during the load (wall %.1f s, 2 cores = %.1f CPU-s available): %s" % (
            wall, 2 * wall, {k: round(after[k] - before[k], 2) for k in after}))
    finally:
        bridge.stop()


def _run_remote(bridge, callers: int, seconds: int, use_aio: int) -> None:
    import asyncio
    from concurrent.futures import ThreadPoolExecutor
    if True:
        if use_aio:
            async def go() -> None:
                async with bridge.connect_async() as c:
                    count = 0
                    end = time.monotonic() + seconds

                    async def caller() -> None:
                        nonlocal count
                        while time.monotonic() < end:
                            await c.call("noop")
                            count += 1
                    t0 = time.perf_counter()
                    await asyncio.gather(*(caller() for _ in range(callers)))
                    print(f"remote aio {callers} tasks: {count / (time.perf_counter() - t0):,.0f} calls/s")
            asyncio.run(go())
            return
        with bridge.connect() as c:
            counts = [0] * callers
            end = time.monotonic() + seconds

            def caller(i: int) -> None:
                while time.monotonic() < end:
                    c.call("noop")
                    counts[i] += 1
            t0 = time.perf_counter()
            with ThreadPoolExecutor(callers) as ex:
                list(ex.map(caller, range(callers)))
            print(f"remote {callers} threads: {sum(counts) / (time.perf_counter() - t0):,.0f} calls/s")


def run_ray_arrow(calls: int = 6) -> None:
    from .scale import RAY_ARROW, MB, _cluster

    raycluster = _cluster()
    made = raycluster.start_cluster()
    try:
        pools = {"ray": {**kp.pool_settings(1), "placement": "ray",
                         "resources": {"CPU": 0.5, "node_a": 1}},
                 "local": kp.pool_settings(1)}
        with kernelpit.Pool(pools=pools, ray_address=made.address) as pool:
            handles = {name: pool.options(pool=name) for name in ("local", "ray")}
            for handle in handles.values():
                handle.call("payload_arrow", nbytes=RAY_ARROW)  # made once, cached
            import os  # for `py-spy record -p PID` of each process alone (the node's kernel
            # is a pid of this machine only because the test cluster's nodes share one host)
            print("pids: controller", os.getpid(), " ".join(
                f"{w.pool} {w.pid}" for w in pool.workers()), flush=True)
            speeds: dict[str, list[float]] = {name: [] for name in handles}
            for _ in range(calls):
                for name, handle in handles.items():
                    t0 = time.perf_counter()
                    table = handle.call("payload_arrow", nbytes=RAY_ARROW)
                    speeds[name].append(table.nbytes / MB / (time.perf_counter() - t0))
                    del table
            for name, got in speeds.items():
                print(f"100 MB Arrow from {name}: " + " ".join(f"{v:,.0f}" for v in got) + " MB/s")
            ratios = sorted(r / l for r, l in zip(speeds["ray"], speeds["local"]))
            print(f"ray / local, per pair: median {ratios[len(ratios) // 2]:.2f} "
                  f"(min {ratios[0]:.2f}, max {ratios[-1]:.2f})")
    finally:
        raycluster.stop_cluster(made)


if __name__ == "__main__":
    what = sys.argv[1] if len(sys.argv) > 1 else "map"
    args = [int(a) for a in sys.argv[2:]]
    {"map": run_map, "start4": run_start, "stream": run_stream, "remote": run_remote,
     "maploop": run_maploop, "ippmap": run_ipp_map, "ray_arrow": run_ray_arrow}[what](*args)
