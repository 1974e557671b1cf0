"""S9: workers placed on a Ray cluster against local workers, in the same run.

A local multi-node Ray cluster (tests/raycluster.py: a head and two worker nodes, all on
127.0.0.1, each its own raylet and object store) stands in for a real one.  The
controller joins it on the head; the Ray-placed workers are on the two other nodes, so
they take the network path (signed TCP, values inline in signed parts), never shared
memory, although every node here shares one /dev/shm.  The local workers take the Unix
socket and shared memory, as always.  Measured, interleaved where it matters so that the
shared machine's load falls on both alike:

* pool start (2 workers): local vs Ray-placed (the driver's join of the cluster apart);
* no-op p50: a Ray-placed worker over TCP vs a local worker, and Ray's own
  ``ray.get(actor.noop.remote())`` to an actor on the same node as a reference;
* ``map`` throughput over 2 workers;
* a 100 MB Arrow table from a worker on another node vs from a local worker, and the same
  100 MB over raw loopback TCP between two processes (``ref-tcp-loopback``,
  :mod:`.tcpref`): the network path's ceiling on this machine, measured in the same
  triples, so that the report says how far the path is from it as well as from the target.

``python -m benchmarks --quick --only s9 --peers none --no-remote``; the scenario skips
(and says why) when Ray is not installed.
"""

from __future__ import annotations

import concurrent.futures
import sys
import time
from typing import Any

from . import kp
from .peers import ROOT
from .stats import row, skipped, target
from .tcpref import LoopbackTcp

MB = 1_000_000
RAY_ARROW = 100 * MB


def _cluster() -> Any:
    sys.path.insert(0, str(ROOT / "tests"))
    import raycluster  # the tests' local cluster: one definition of it

    return raycluster


def _ray_pools(workers: int) -> dict[str, Any]:
    """``workers`` Ray-placed workers spread over node_a and node_b (never the head)."""
    names = ("node_a", "node_b")
    return {f"ray{i}": {**kp.pool_settings(1), "placement": "ray",
                        "resources": {"CPU": 0.5, names[i % 2]: 1}} for i in range(workers)}


def s9_ray(ctx: Any) -> dict[str, Any]:
    """Ray-placed workers on a local 3-node cluster vs local workers, same run."""
    raycluster = _cluster()  # before Ray is imported: it sets Ray's environment
    import importlib.util

    if importlib.util.find_spec("ray") is None:
        reason = "Ray is not installed (pip install -e '.[ray]')"
        return {"title": "Ray placement", "rows": [skipped("kernelpit-ray", reason)],
                "targets": [], "params": {}}
    import kernelpit
    from kernelpit.provisioners import cluster as ray_cluster

    reps = ctx.repeats(3, 5)
    pairs: list[float] = []
    of_tcp: list[float] = []
    calls = ctx.size(400, 2000)
    items = ctx.size(20_000, 100_000)
    rows: list[dict[str, Any]] = []
    ctx.log("  starting a local 3-node Ray cluster ...")
    made = raycluster.start_cluster()
    try:
        t0 = time.perf_counter()
        ray = ray_cluster.connect(made.address)
        join = time.perf_counter() - t0

        ctx.settle("S9 pool start")
        starts: dict[str, list[float]] = {"local": [], "ray": []}
        for _ in range(ctx.repeats(1, 3)):
            for kind in ("local", "ray"):
                t0 = time.perf_counter()
                settings = ({"pools": _ray_pools(2), "ray_address": made.address}
                            if kind == "ray" else kp.pool_settings(2))
                with kernelpit.Pool(**settings):
                    starts[kind].append(time.perf_counter() - t0)
        rows.append(row("kernelpit-local", case="pool start, 2 workers", unit="s", better="lower",
                        samples=starts["local"], kind="per-repeat"))
        rows.append(row("kernelpit-ray", case="pool start, 2 workers", unit="s", better="lower",
                        samples=starts["ray"], kind="per-repeat",
                        api=f"placement='ray', one worker on each of 2 nodes (joining the "
                            f"cluster first: {join:.2f} s, once per process)"))

        pools = {**_ray_pools(2), "local": kp.pool_settings(2)}
        with kernelpit.Pool(pools=pools, ray_address=made.address) as pool:
            remote, local = pool.options(pool="ray0"), pool.options(pool="local")
            where = {w.pool: w.node for w in pool.workers()}
            assert where["ray0"] == made.node_id("node_a") and where["local"] is None

            @ray.remote(num_cpus=0, resources={"node_a": 0.01})
            class Echo:
                def noop(self) -> None:
                    return None

            echo = Echo.remote()
            ray.get(echo.noop.remote())

            ctx.settle("S9 no-op")
            lat: dict[str, list[float]] = {"local": [], "ray": [], "ray.get": []}
            steps = (("local", lambda: local.call("noop")), ("ray", lambda: remote.call("noop")),
                     ("ray.get", lambda: ray.get(echo.noop.remote())))
            for _, fn in steps:
                for _ in range(50):
                    fn()
            for _ in range(reps):
                for _ in range(calls // reps):
                    for name, fn in steps:  # interleaved: the machine's load hits all three
                        t0 = time.perf_counter()
                        fn()
                        lat[name].append((time.perf_counter() - t0) * 1e3)
            rows.append(row("kernelpit-local", case="no-op", unit="ms", better="lower",
                            samples=lat["local"], api="Unix socket"))
            rows.append(row("kernelpit-ray", case="no-op", unit="ms", better="lower",
                            samples=lat["ray"], api="signed TCP to a worker on another node"))
            rows.append(row("ray", case="no-op", unit="ms", better="lower", samples=lat["ray.get"],
                            api="ray.get(actor.noop.remote()), actor on the same node"))
            ray.kill(echo)

            ctx.settle("S9 map")
            xs = list(range(items))
            maps: dict[str, list[float]] = {"local": [], "ray": []}
            ray_both = [pool.options(pool=p) for p in ("ray0", "ray1")]
            for _ in range(reps):
                t0 = time.perf_counter()
                local.map("inc", xs)
                maps["local"].append(items / (time.perf_counter() - t0))
                t0 = time.perf_counter()
                halves = [xs[:items // 2], xs[items // 2:]]
                with concurrent.futures.ThreadPoolExecutor(2) as ex:
                    list(ex.map(lambda pair: pair[0].map("inc", pair[1]), zip(ray_both, halves)))
                maps["ray"].append(items / (time.perf_counter() - t0))
            rows.append(row("kernelpit-local", case="map items/s, 2 workers", unit="items/s",
                            better="higher", samples=maps["local"], kind="per-repeat"))
            rows.append(row("kernelpit-ray", case="map items/s, 2 workers", unit="items/s",
                            better="higher", samples=maps["ray"], kind="per-repeat",
                            api="one map per node's pool, in two threads"))

            ctx.settle("S9 arrow")
            big: dict[str, list[float]] = {"local": [], "ray": [], "tcp": []}
            for w in pool.workers():  # made once, cached in each worker that may serve it
                if w.pool in ("local", "ray0"):
                    pool.options(pool=w.pool, worker=w.id).call("payload_arrow", nbytes=RAY_ARROW)
            with LoopbackTcp(RAY_ARROW) as tcp:
                tcp.transfer()  # the sender's first write faults its pages in
                for _ in range(ctx.repeats(5, 15)):  # back to back: each sees the same load
                    for name, handle in (("local", local), ("ray", remote)):
                        t0 = time.perf_counter()
                        table = handle.call("payload_arrow", nbytes=RAY_ARROW)
                        big[name].append(table.nbytes / MB / (time.perf_counter() - t0))
                        del table
                    big["tcp"].append(tcp.transfer())
            pairs = sorted(r / lo for r, lo in zip(big["ray"], big["local"]))
            of_tcp = sorted(r / t for r, t in zip(big["ray"], big["tcp"]))
            rows.append(row("kernelpit-local", case="100 MB Arrow, MB/s", unit="MB/s",
                            better="higher", samples=big["local"], kind="per-repeat",
                            api="by reference in /dev/shm"))
            rows.append(row("kernelpit-ray", case="100 MB Arrow, MB/s", unit="MB/s",
                            better="higher", samples=big["ray"], kind="per-repeat",
                            api="from node_a: signed TCP (Poly1305), 4 MiB parts"))
            rows.append(row("ref-tcp-loopback", case="100 MB Arrow, MB/s", unit="MB/s",
                            better="higher", samples=big["tcp"], kind="per-repeat",
                            api="100 MB over loopback TCP between two processes, unsigned, "
                                "into a buffer already faulted in (benchmarks/tcpref.py)"))
    finally:
        raycluster.stop_cluster(made)

    def med(system: str, case: str) -> float | None:
        found = [r for r in rows if r["system"] == system and r["case"] == case
                 and r.get("status") == "ok"]
        return found[0]["median"] if found else None

    noop_ratio = _ratio(med("kernelpit-ray", "no-op"), med("kernelpit-local", "no-op"))
    # the median of the back-to-back pairs' ratios: a pair shares the machine's load of the
    # moment, which moves +-30 % between pairs on a shared machine
    arrow_ratio = pairs[len(pairs) // 2] if pairs else None
    # the same for the network path against what loopback TCP itself carries: the ceiling
    arrow_of_tcp = of_tcp[len(of_tcp) // 2] if of_tcp else None
    tcp_of_local = _ratio(med("ref-tcp-loopback", "100 MB Arrow, MB/s"),
                          med("kernelpit-local", "100 MB Arrow, MB/s"))
    arrow_of_medians = _ratio(med("kernelpit-ray", "100 MB Arrow, MB/s"),
                              med("kernelpit-local", "100 MB Arrow, MB/s"))
    vs_ray = _ratio(med("ray", "no-op"), med("kernelpit-ray", "no-op"))
    map_ratio = _ratio(med("kernelpit-ray", "map items/s, 2 workers"),
                       med("kernelpit-local", "map items/s, 2 workers"))
    start_ratio = _ratio(med("kernelpit-ray", "pool start, 2 workers"),
                         med("kernelpit-local", "pool start, 2 workers"))
    targets = [
        target("S9.noop_ratio", "no-op p50 to a Ray-placed worker <= 1.5x a local worker's",
               noop_ratio, 1.5, "<="),
        target("S9.arrow_ratio", "100 MB Arrow from another node >= 0.5x from a local worker "
               "(median of back-to-back pairs)", arrow_ratio, 0.5, ">=",
               detail=f"{med('kernelpit-ray', '100 MB Arrow, MB/s'):,.0f} vs "
                      f"{med('kernelpit-local', '100 MB Arrow, MB/s'):,.0f} MB/s; raw loopback "
                      f"TCP {med('ref-tcp-loopback', '100 MB Arrow, MB/s'):,.0f} MB/s, the "
                      f"ceiling: Ray-placed {arrow_of_tcp:.2f}x of it, it {tcp_of_local:.2f}x "
                      f"of local" if arrow_of_tcp and tcp_of_local else ""),
    ]
    return {"title": "Ray placement: a local 3-node cluster vs local workers", "rows": rows,
            "targets": targets,
            "notes": [f"ray.get no-op p50 / Kernelpit Ray-placed no-op p50 = {vs_ray:.2f}"
                      if vs_ray else "ray.get not measured",
                      f"map throughput Ray / local = {map_ratio:.2f}" if map_ratio else "",
                      f"100 MB Arrow Ray / local: pairs {pairs[0]:.2f}..{pairs[-1]:.2f}, ratio "
                      f"of the medians {arrow_of_medians:.2f}" if pairs and arrow_of_medians
                      else "",
                      f"100 MB Arrow Ray / raw loopback TCP (ref-tcp-loopback, the network "
                      f"path's ceiling here): median of triples {arrow_of_tcp:.2f} "
                      f"({of_tcp[0]:.2f}..{of_tcp[-1]:.2f}); raw TCP / local = {tcp_of_local:.2f}"
                      if arrow_of_tcp and tcp_of_local else "",
                      f"pool start Ray / local = {start_ratio:.2f}" if start_ratio else ""],
            "ratios": {"arrow_ray_vs_local": arrow_ratio, "arrow_ray_vs_tcp": arrow_of_tcp,
                       "arrow_tcp_vs_local": tcp_of_local, "noop_ray_vs_local": noop_ratio,
                       "noop_ray_get_vs_ray": vs_ray, "map_ray_vs_local": map_ratio,
                       "start_ray_vs_local": start_ratio},
            "params": {"calls": calls, "repeats": reps, "map_items": items,
                       "arrow_bytes": RAY_ARROW, "cluster": "head (1 CPU) + 2 nodes (2 CPUs), "
                       "all on 127.0.0.1, 80 MB object stores"}}


def _ratio(a: float | None, b: float | None) -> float | None:
    return a / b if a and b else None

