"""The eight scenarios.  Each returns ``{"title", "rows", "targets", "notes", "params"}``.

Kernelpit rows come first in each case and carry ``vs_peers``: for every peer
row of the case, how many times better the Kernelpit row's median is (>1:
Kernelpit wins, <1: the peer is ahead).  ``ref-*`` rows are the references the
ratio targets are measured against (benchmarks/references.py).  A peer that
cannot run a scenario gets a ``skipped`` row with the reason.
"""

from __future__ import annotations

import asyncio
import gc
import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Callable

from . import kp, payloads, peerfuncs as pf, quiet, references
from .peers import DaskPeer, IppPeer, RawKernel
from .stats import add_ratios, failed, find, ratio, row, skipped, target, timed_loop
from .fairness import s10_fairness
from .scale import s9_ray

MB = 1_000_000
GB = 1_000_000_000


class Context:
    """Settings of the run, and the shared 2-worker pool and peers (started lazily, once)."""

    def __init__(self, *, quick: bool, repeats: int | None, peers: set[str], workers: int = 2,
                 log: Callable[[str], None] = print, with_remote: bool = True) -> None:
        self.quick = quick
        self.with_remote = with_remote
        self._repeats = repeats
        self.peers = peers
        self.workers = workers
        self.log = log
        self._kp: Any = None
        self._shared: dict[str, Any] = {}
        self._unavailable: dict[str, str] = {}
        self.settles: list[dict[str, Any]] = []

    def settle(self, before: str) -> None:
        """Wait for a quiet machine before measuring ``before`` (see benchmarks/quiet.py)."""
        # quick mode waits at most 0.3 s (it must stay under 3 minutes on a shared machine)
        seen = quiet.settle(0.3 if self.quick else quiet.MAX_WAIT)
        self.settles.append({"before": before, **seen})
        if not seen["quiet"]:
            self.log(f"  machine still busy ({seen['cpu_percent']:.0f}% CPU) after "
                     f"{seen['waited_s']:.1f} s; measuring {before} anyway")

    def repeats(self, quick: int, full: int) -> int:
        return self._repeats if self._repeats is not None else (quick if self.quick else full)

    def size(self, quick: Any, full: Any) -> Any:
        return quick if self.quick else full

    # -- Kernelpit ------------------------------------------------------------------
    def pool(self) -> Any:
        if self._kp is None:
            import kernelpit
            self._kp = kernelpit.Pool(**kp.pool_settings(self.workers))
        return self._kp

    # -- Kernelpit remote ------------------------------------------------------------------
    def remote(self) -> tuple[Any, Any, str | None]:
        """(bridge, blocking client) of the shared bridge process, or (None, None, why not)."""
        if "remote" in self._shared:
            bridge = self._shared["remote"]
            return bridge, self._shared["remote-client"], None
        if "remote" in self._unavailable:
            return None, None, self._unavailable["remote"]
        why = kp.remote_unavailable() or (None if self.with_remote else "disabled with --no-remote")
        if why:
            self._unavailable["remote"] = why
            return None, None, why
        bridge = kp.RemoteBridge(self.workers)
        try:
            self.log("  starting kernelpit serve (bridge process) ...")
            bridge.start()
            client = bridge.connect()
        except Exception as exc:  # noqa: BLE001
            bridge.stop()
            self._unavailable["remote"] = f"bridge failed to start: {type(exc).__name__}: {exc}"
            return None, None, self._unavailable["remote"]
        self._shared["remote"] = bridge
        self._shared["remote-client"] = client
        return bridge, client, None

    def local(self) -> tuple[Any, Any, str | None]:
        """(bridge, blocking client over the local transport) of the shared bridge process."""
        bridge, _client, why = self.remote()
        if bridge is None:
            return None, None, why
        if "local-client" not in self._shared:
            if bridge.local_address is None:
                return None, None, "the bridge does not serve the local transport"
            self._shared["local-client"] = bridge.connect_local()
        return bridge, self._shared["local-client"], None

    # -- references ------------------------------------------------------------------
    def ipykernel_start(self) -> dict[str, Any]:
        """The ``ref-ipykernel-start`` row: one plain ipykernel started through
        jupyter_client, measured once per run (S4 shows it, S4 and S5 targets use it)."""
        if "ipykernel" not in self._shared:
            why = RawKernel.available()
            if why:
                self._shared["ipykernel"] = skipped("ref-ipykernel-start", why, case="one plain ipykernel",
                                                    unit="s")
            else:
                self.settle("ref-ipykernel-start")
                self._shared["ipykernel"] = row(
                    "ref-ipykernel-start", case="one plain ipykernel", unit="s", better="lower",
                    samples=[references.ipykernel_start() for _ in range(self.repeats(2, 5))],
                    kind="per-repeat", api="jupyter_client.KernelManager.start_kernel until ready")
        return self._shared["ipykernel"]

    def echo(self) -> tuple[Any, str | None]:
        """The bare grpc.aio echo server (its own process) and its sync client, or (None, why not)."""
        if "echo" in self._shared:
            return self._shared["echo"], None
        if "echo" in self._unavailable:
            return None, self._unavailable["echo"]
        if not self.with_remote:
            self._unavailable["echo"] = "reference of the remote rows: disabled with --no-remote"
            return None, self._unavailable["echo"]
        server = references.EchoServer()
        try:
            server.start()
        except Exception as exc:  # noqa: BLE001
            server.stop()
            self._unavailable["echo"] = f"echo server failed to start: {type(exc).__name__}: {exc}"
            return None, self._unavailable["echo"]
        self._shared["echo"] = server
        return server, None

    # -- peers ---------------------------------------------------------------------
    def peer(self, name: str) -> tuple[Any, str | None]:
        """The shared peer of that name (started on first use), or (None, why not)."""
        if name in self._shared:
            return self._shared[name], None
        if name in self._unavailable:
            return None, self._unavailable[name]
        cls = {"ipyparallel": IppPeer, "dask": DaskPeer, "jupyter_client": RawKernel}[name]
        why = None if name in self.peers else "disabled with --peers"
        why = why or cls.available()
        if why:
            self._unavailable[name] = why
            return None, why
        obj = cls() if cls is RawKernel else cls(self.workers)
        try:
            self.log(f"  starting {name} ...")
            obj.start()
        except Exception as exc:  # noqa: BLE001 - reported as an error row
            obj.stop()
            self._unavailable[name] = f"failed to start: {type(exc).__name__}: {exc}"
            return None, self._unavailable[name]
        self._shared[name] = obj
        return obj, None

    def close(self) -> None:
        if self._kp is not None:
            self._kp.close()
            self._kp = None
        for name in ("local-client", "remote-client"):
            client = self._shared.pop(name, None)
            if client is not None:
                try:
                    client.close()
                except Exception:
                    pass
        self._shared.pop("ipykernel", None)  # a row, not a process
        for obj in self._shared.values():
            obj.stop()
        self._shared.clear()


def _detail(a: dict[str, Any] | None, b: dict[str, Any] | None, unit: str, of: str = "median",
            of_b: str = "median") -> str:
    """``0.759 ms vs 0.463 ms``: the two numbers behind a ratio target."""
    from .report import fmt
    if not a or not b:
        return ""
    return f"{fmt(a.get(of))} {unit} vs {fmt(b.get(of_b))} {unit}"



def _ms(xs: list[float]) -> list[float]:
    return [x * 1e3 for x in xs]


def _remote_rows(ctx: Context, rows: list[dict[str, Any]], system: str, case: str, unit: str,
                 better: str, measure: Callable[[Any, Any], dict[str, Any]]) -> None:
    """A row of the shared bridge: over gRPC, or for a ``kernelpit-local`` row over the
    local transport (the bridge's Unix socket)."""
    bridge, client, why = ctx.local() if system.startswith("kernelpit-local") else ctx.remote()
    if client is None:
        rows.append(skipped(system, why or "", case=case, unit=unit, better=better))
        return
    ctx.settle(f"{system} {case}".strip())
    try:
        rows.append(measure(bridge, client))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed(system, exc, case=case, unit=unit, better=better))


def _peer_rows(ctx: Context, rows: list[dict[str, Any]], name: str, system: str, case: str,
               unit: str, better: str, measure: Callable[[Any], dict[str, Any]]) -> None:
    peer, why = ctx.peer(name)
    if peer is None:
        rows.append(skipped(system, why or "", case=case, unit=unit, better=better))
        return
    ctx.settle(f"{system} {case}".strip())
    try:
        rows.append(measure(peer))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed(system, exc, case=case, unit=unit, better=better))


# ---------------------------------------------------------------------------------------------
def s1_latency(ctx: Context) -> dict[str, Any]:
    """No-op call latency, one caller."""
    reps = ctx.repeats(2, 5)
    n = ctx.size(200, 2000)
    n_peer = ctx.size(100, 1000)  # the peers are 10-30x slower per call: fewer calls, same repeats
    warm = 50
    rows: list[dict[str, Any]] = []
    unit, better = "ms", "lower"

    pool = ctx.pool()
    xs: list[float] = []
    for _ in range(reps):
        xs += timed_loop(lambda: pool.call("noop"), n, warm)
    rows.append(row("kernelpit-embedded", unit=unit, better=better, samples=_ms(xs)))

    for system, over in (("kernelpit-remote", "gRPC"), ("kernelpit-local", "the local transport")):
        def client_measure(bridge: Any, client: Any, system: str = system,
                           over: str = over) -> dict[str, Any]:
            ys: list[float] = []
            for _ in range(reps):
                ys += timed_loop(lambda: client.call("noop"), n, warm)
            return row(system, unit=unit, better=better, samples=_ms(ys),
                       api=f"kernelpit.connect(...).call over {over} to a `kernelpit serve` process")
        _remote_rows(ctx, rows, system, "", unit, better, client_measure)
    why = ctx.remote()[2]
    echo, why_echo = ctx.echo()
    if echo is None:
        rows.append(skipped("ref-grpc-echo", why_echo or "", unit=unit, better=better))
    else:
        ctx.settle("ref-grpc-echo")
        ys = []
        for _ in range(reps):
            ys += timed_loop(echo.call, n, warm)
        rows.append(row("ref-grpc-echo", unit=unit, better=better, samples=_ms(ys),
                        api="bare grpc.aio unary echo server (own process), sync grpc channel"))

    def ipp_measure(peer: IppPeer) -> dict[str, Any]:
        view = peer.view
        ys: list[float] = []
        for _ in range(reps):
            ys += timed_loop(lambda: view.apply_sync(pf.noop), n_peer, warm)
        return row("ipyparallel", unit=unit, better=better, samples=_ms(ys),
                   api="LoadBalancedView.apply_sync")
    _peer_rows(ctx, rows, "ipyparallel", "ipyparallel", "", unit, better, ipp_measure)

    def dask_measure(peer: DaskPeer) -> dict[str, Any]:
        client = peer.client
        ys: list[float] = []
        for _ in range(reps):
            ys += timed_loop(lambda: client.submit(pf.noop, pure=False).result(), n_peer, warm)
        return row("dask", unit=unit, better=better, samples=_ms(ys), api="Client.submit().result()")
    _peer_rows(ctx, rows, "dask", "dask", "", unit, better, dask_measure)

    def raw_measure(peer: RawKernel) -> dict[str, Any]:
        ys: list[float] = []
        for _ in range(reps):
            ys += timed_loop(peer.execute, n_peer, warm)
        return row("jupyter_client", unit=unit, better=better, samples=_ms(ys),
                   api="BlockingKernelClient.execute + get_shell_msg (1 kernel)")
    _peer_rows(ctx, rows, "jupyter_client", "jupyter_client", "", unit, better, raw_measure)

    add_ratios(rows)
    emb, rem, ipp = find(rows, "kernelpit-embedded"), find(rows, "kernelpit-remote"), find(rows, "ipyparallel")
    ref, loc = find(rows, "ref-grpc-echo"), find(rows, "kernelpit-local")
    targets = [
        target("S1.embedded_p50", "embedded p50 <= 0.6 ms", emb and emb["median"], 0.6, "<="),
        target("S1.local_vs_embedded", "local-transport p50 <= 2x the embedded p50",
               ratio(loc, emb), 2.0, "<=", why_unknown=why or "local not measured", ratio=True,
               detail=_detail(loc, emb, "ms")),
        target("S1.remote_vs_echo", "remote p50 <= 1.5x a bare grpc.aio echo's p50",
               ratio(rem, ref), 1.5, "<=", why_unknown=why or why_echo or "remote not measured",
               ratio=True, detail=_detail(rem, ref, "ms")),
        target("S1.remote_vs_ipp", "remote >= 4x faster than ipyparallel (p50)",
               (ipp["median"] / rem["median"]) if rem and ipp else None, 4.0, ">=",
               why_unknown=why or "remote or ipyparallel not measured"),
    ]
    return {"title": "no-op call latency, one caller", "rows": rows, "targets": targets,
            "params": {"calls_per_repeat": n, "peer_calls_per_repeat": n_peer, "repeats": reps,
                       "warmup": warm, "workers": ctx.workers}}


# ---------------------------------------------------------------------------------------------
def s2_throughput(ctx: Context) -> dict[str, Any]:
    """No-op throughput with 32 concurrent callers."""
    reps = ctx.repeats(2, 5)
    total = ctx.size(512, 4096)
    callers = 32
    per = total // callers
    total = per * callers
    unit, better = "calls/s", "higher"
    rows: list[dict[str, Any]] = []

    # Kernelpit embedded, asyncio: 32 tasks on one kernelpit.aio.Pool
    async def aio_run() -> list[float]:
        import kernelpit.aio
        rates = []
        async with kernelpit.aio.Pool(**kp.pool_settings(ctx.workers)) as pool:
            async def caller(k: int) -> None:
                for _ in range(k):
                    await pool.call("noop")
            await asyncio.gather(*(caller(5) for _ in range(callers)))  # warm-up
            for _ in range(reps):
                t0 = time.perf_counter()
                await asyncio.gather(*(caller(per) for _ in range(callers)))
                rates.append(total / (time.perf_counter() - t0))
        return rates
    try:
        rows.append(row("kernelpit-embedded-aio", unit=unit, better=better, samples=asyncio.run(aio_run()),
                        kind="per-repeat", api="32 asyncio tasks, kernelpit.aio.Pool.call"))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed("kernelpit-embedded-aio", exc, unit=unit, better=better))

    # Kernelpit embedded, blocking API from 32 threads
    pool = ctx.pool()
    rates = []
    with ThreadPoolExecutor(callers) as ex:
        def caller(k: int) -> None:
            for _ in range(k):
                pool.call("noop")
        list(ex.map(caller, [5] * callers))
        for _ in range(reps):
            t0 = time.perf_counter()
            list(ex.map(caller, [per] * callers))
            rates.append(total / (time.perf_counter() - t0))
    rows.append(row("kernelpit-embedded-threads", unit=unit, better=better, samples=rates,
                    kind="per-repeat", api="32 threads, kernelpit.Pool.call"))

    def remote_aio(bridge: Any, client: Any) -> dict[str, Any]:
        async def go() -> list[float]:
            rates = []
            async with bridge.connect_async() as rpool:
                async def caller(k: int) -> None:
                    for _ in range(k):
                        await rpool.call("noop")
                await asyncio.gather(*(caller(5) for _ in range(callers)))
                for _ in range(reps):
                    t0 = time.perf_counter()
                    await asyncio.gather(*(caller(per) for _ in range(callers)))
                    rates.append(total / (time.perf_counter() - t0))
            return rates
        return row("kernelpit-remote-aio", unit=unit, better=better, samples=asyncio.run(go()),
                   kind="per-repeat", api="32 asyncio tasks, kernelpit.aio.connect().call")
    _remote_rows(ctx, rows, "kernelpit-remote-aio", "", unit, better, remote_aio)

    def remote_threads(bridge: Any, client: Any) -> dict[str, Any]:
        rates = []
        with ThreadPoolExecutor(callers) as ex:
            def caller(k: int) -> None:
                for _ in range(k):
                    client.call("noop")
            list(ex.map(caller, [5] * callers))
            for _ in range(reps):
                t0 = time.perf_counter()
                list(ex.map(caller, [per] * callers))
                rates.append(total / (time.perf_counter() - t0))
        return row("kernelpit-remote-threads", unit=unit, better=better, samples=rates,
                   kind="per-repeat", api="32 threads, one kernelpit.connect() client")
    _remote_rows(ctx, rows, "kernelpit-remote-threads", "", unit, better, remote_threads)
    why = ctx.remote()[2]
    echo, why_echo = ctx.echo()
    if echo is None:
        rows.append(skipped("ref-grpc-echo", why_echo or "", unit=unit, better=better))
    else:
        ctx.settle("ref-grpc-echo")
        rows.append(row("ref-grpc-echo", unit=unit, better=better, samples=echo.rate(callers, total, reps),
                        kind="per-repeat", api="32 threads on one sync grpc channel, bare grpc.aio echo server"))

    def ipp_measure(peer: IppPeer) -> dict[str, Any]:
        view = peer.view
        out = []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            ars = [view.apply_async(pf.noop) for _ in range(total)]
            for ar in ars:
                ar.get()
            if r:  # first round is the warm-up
                out.append(total / (time.perf_counter() - t0))
        return row("ipyparallel", unit=unit, better=better, samples=out, kind="per-repeat",
                   api=f"{total} x LoadBalancedView.apply_async, then get() each")
    _peer_rows(ctx, rows, "ipyparallel", "ipyparallel", "", unit, better, ipp_measure)

    def dask_measure(peer: DaskPeer) -> dict[str, Any]:
        client = peer.client
        out = []
        for r in range(reps + 1):
            t0 = time.perf_counter()
            futs = client.map(pf.noop_x, range(total), pure=False)
            client.gather(futs)
            if r:
                out.append(total / (time.perf_counter() - t0))
            del futs
        return row("dask", unit=unit, better=better, samples=out, kind="per-repeat",
                   api=f"Client.map over {total} items + gather")
    _peer_rows(ctx, rows, "dask", "dask", "", unit, better, dask_measure)

    add_ratios(rows)
    best_emb = max((r for r in rows if r["system"].startswith("kernelpit-embedded") and r["status"] == "ok"),
                   key=lambda r: r["median"], default=None)
    rem = max((r for r in rows if r["system"].startswith("kernelpit-remote") and r["status"] == "ok"),
              key=lambda r: r["median"], default=None)
    ipp = find(rows, "ipyparallel")
    targets = [
        target("S2.embedded_rate", "embedded >= 2,000 calls/s (best of aio/threads)",
               best_emb and best_emb["median"], 2000, ">="),
        target("S2.embedded_vs_ipp", "embedded >= 4x ipyparallel",
               (best_emb["median"] / ipp["median"]) if best_emb and ipp else None, 4.0, ">="),
        target("S2.remote_vs_echo", "remote, 32 callers >= 0.7x a bare grpc.aio echo, 32 threads",
               ratio(rem, find(rows, "ref-grpc-echo")), 0.7, ">=",
               why_unknown=why or why_echo or "remote not measured", ratio=True,
               detail=_detail(rem, find(rows, "ref-grpc-echo"), "calls/s")),
        target("S2.remote_vs_ipp", "remote >= 4x ipyparallel",
               (rem["median"] / ipp["median"]) if rem and ipp else None, 4.0, ">=",
               why_unknown=why or "remote or ipyparallel not measured"),
    ]
    return {"title": "no-op throughput, 32 concurrent callers", "rows": rows, "targets": targets,
            "params": {"calls_per_repeat": total, "callers": callers, "repeats": reps,
                       "workers": ctx.workers}}


# ---------------------------------------------------------------------------------------------
def s3_map(ctx: Context) -> dict[str, Any]:
    """Many small items: items/s."""
    reps = ctx.repeats(3, 5)
    n = ctx.size(10_000, 20_000)
    items = list(range(n))
    expect = [x + 1 for x in items]
    unit, better = "items/s", "higher"
    rows: list[dict[str, Any]] = []
    chunk = kp.chunksize_for(n, ctx.workers)

    import kernelpit

    def kp_map(handle: Any, system: str, api: str) -> dict[str, Any]:
        opts = kp.map_options(handle.map, n, ctx.workers)
        handle.map("inc", items[:200], **opts)
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            res = handle.map("inc", items, **opts)
            out.append(n / (time.perf_counter() - t0))
            assert res == expect
        how = f"chunksize={opts['chunksize']}" if opts else "one call per item"
        return row(system, unit=unit, better=better, samples=out, kind="per-repeat",
                   api=f"{api}.map(..., {how})", batched=bool(opts))

    if kp.map_options(kernelpit.Pool.map, n, ctx.workers):
        rows.append(kp_map(ctx.pool(), "kernelpit-embedded", "Pool"))
    else:
        # the unbatched map submits every item at once: the default wait queue (10,000) is too small
        with kernelpit.Pool(**kp.pool_settings(ctx.workers, queue_size=max(10_000, 2 * n))) as pool:
            rows.append(kp_map(pool, "kernelpit-embedded", "Pool"))
    _remote_rows(ctx, rows, "kernelpit-remote", "", unit, better,
                 lambda bridge, client: kp_map(client, "kernelpit-remote", "connect()"))

    def ipp_measure(peer: IppPeer) -> dict[str, Any]:
        view = peer.view
        view.map_sync(pf.inc, items[:200], chunksize=50)
        out = []
        for _ in range(reps):
            t0 = time.perf_counter()
            res = view.map_sync(pf.inc, items, chunksize=chunk)
            out.append(n / (time.perf_counter() - t0))
            assert list(res) == expect
        return row("ipyparallel", unit=unit, better=better, samples=out, kind="per-repeat",
                   api=f"LoadBalancedView.map_sync(chunksize={chunk})")
    _peer_rows(ctx, rows, "ipyparallel", "ipyparallel", "", unit, better, ipp_measure)

    def dask_measure(peer: DaskPeer) -> dict[str, Any]:
        # one scheduler task per item runs at a few hundred items/s here: fewer items, fewer repeats
        dn = min(n, ctx.size(1_000, 20_000))
        client = peer.client
        client.gather(client.map(pf.inc, items[:200], pure=False))
        out = []
        for _ in range(min(reps, 2)):
            t0 = time.perf_counter()
            res = client.gather(client.map(pf.inc, items[:dn], pure=False))
            out.append(dn / (time.perf_counter() - t0))
            assert res == expect[:dn]
        return row("dask", unit=unit, better=better, samples=out, kind="per-repeat",
                   api=f"Client.map + gather (one task per item), {dn:,} items")
    _peer_rows(ctx, rows, "dask", "dask", "", unit, better, dask_measure)

    add_ratios(rows)
    emb, ipp = find(rows, "kernelpit-embedded"), find(rows, "ipyparallel")
    targets = [target("S3.vs_ipp_chunked", "Kernelpit map >= 2x ipyparallel chunked map_sync",
                      (emb["median"] / ipp["median"]) if emb and ipp else None, 2.0, ">=")]
    return {"title": f"many small items ({n:,} x inc)", "rows": rows, "targets": targets,
            "params": {"items": n, "repeats": reps, "ipp_chunksize": chunk, "workers": ctx.workers}}


# ---------------------------------------------------------------------------------------------
def s4_start(ctx: Context) -> dict[str, Any]:
    """Start N workers to ready."""
    reps = ctx.repeats(1, 3)
    sizes = ctx.size([4, 8], [1, 2, 4, 8])  # the target is 8 workers
    peer_sizes = ctx.size([], sizes)  # quick: the peers' starts take 8-20 s (target: ipykernel)
    unit, better = "s", "lower"
    rows: list[dict[str, Any]] = []
    import kernelpit

    for n in sizes:
        case = f"N={n}"
        ts = []
        try:
            for _ in range(reps):
                t0 = time.perf_counter()
                pool = kernelpit.Pool(**kp.pool_settings(n))
                ts.append(time.perf_counter() - t0)
                assert len(pool.workers()) == n
                pool.close()
            rows.append(row("kernelpit-embedded", case=case, unit=unit, better=better, samples=ts,
                            kind="per-repeat", api="kernelpit.Pool(workers=N) returns"))
        except Exception as exc:  # noqa: BLE001
            rows.append(failed("kernelpit-embedded", exc, case=case, unit=unit))

        for cls in (IppPeer, DaskPeer):
            why = None if cls.name in ctx.peers else "disabled with --peers"
            why = why or cls.available() or (None if n in peer_sizes else "quick mode: full mode only")
            if why:
                rows.append(skipped(cls.name, why, case=case, unit=unit))
                continue
            ts = []
            try:
                for _ in range(reps):
                    peer = cls(n)
                    try:
                        ts.append(peer.start())
                    finally:
                        peer.stop()
                api = ("Cluster(n=N).start_and_connect_sync() + wait_for_engines" if cls is IppPeer
                       else "LocalCluster(n_workers=N, processes=True) + Client + wait_for_workers")
                rows.append(row(cls.name, case=case, unit=unit, better=better, samples=ts,
                                kind="per-repeat", api=api))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed(cls.name, exc, case=case, unit=unit))
    ipk = ctx.ipykernel_start()
    rows.append(ipk)
    add_ratios(rows)
    eight = find(rows, "kernelpit-embedded", "N=8")
    targets = [target("S4.start8_vs_ipykernel", "8 workers ready <= 1.0x one plain ipykernel start",
                      ratio(eight, ipk), 1.0, "<=", ratio=True, detail=_detail(eight, ipk, "s"))]
    return {"title": "start N workers to ready", "rows": rows, "targets": targets,
            "params": {"sizes": sizes, "repeats": reps}}


# ---------------------------------------------------------------------------------------------
def _crash_once(handle: Any, n: int, tool: str = "spin") -> tuple[float, float, str]:
    """Kill -9 the worker running a call; (ms to the caller's error, ms to n ready workers, error type)."""
    got: dict[str, Any] = {}

    def victim() -> None:
        try:
            handle.call(tool, seconds=60)
        except BaseException as exc:  # noqa: BLE001
            got["t"] = time.perf_counter()
            got["exc"] = exc
    th = threading.Thread(target=victim, daemon=True)
    th.start()
    deadline = time.monotonic() + 10
    busy = None
    while busy is None and time.monotonic() < deadline:
        busy = next((w for w in handle.workers()
                     if w.state == "busy" and w.pid and not getattr(w, "spare", False)), None)
        time.sleep(0.002)
    if busy is None:
        raise RuntimeError("no worker became busy")
    time.sleep(0.05)  # let it really be inside the tool
    t_kill = time.perf_counter()
    os.kill(busy.pid, signal.SIGKILL)
    th.join(timeout=30)
    if "t" not in got:
        raise RuntimeError("the caller got no error within 30 s")
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        ready = [w for w in handle.workers() if w.state in ("idle", "busy") and w.pid != busy.pid
                 and not getattr(w, "spare", False)]
        if len(ready) >= n:
            t_full = time.perf_counter()
            break
        time.sleep(0.002)
    else:
        raise RuntimeError("pool not back to full within 60 s")
    return (got["t"] - t_kill) * 1e3, (t_full - t_kill) * 1e3, type(got["exc"]).__name__


def s5_crash(ctx: Context) -> dict[str, Any]:
    """kill -9 a busy worker: time to the caller's error, and to N ready workers again."""
    import kernelpit
    reps = ctx.repeats(2, 5)
    n = ctx.workers
    rows: list[dict[str, Any]] = []

    def spare_ready(handle: Any) -> None:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and not any(
                getattr(w, "spare", False) and w.state == "idle" for w in handle.workers()):
            time.sleep(0.01)

    def measure(handle: Any, system: str, spares: bool = False) -> None:
        err_ms, full_ms, kinds = [], [], set()
        try:
            for r in range(reps):
                if spares:
                    spare_ready(handle)
                # a fresh tool name per repeat: the pool quarantines a tool after 3 crashes a minute
                e, f, k = _crash_once(handle, n, f"spin{r % 10}")
                err_ms.append(e)
                full_ms.append(f)
                kinds.add(k)
                time.sleep(0.2)
        except Exception as exc:  # noqa: BLE001
            rows.append(failed(system, exc, case="caller gets error", unit="ms"))
        rows.append(row(system, case="caller gets error", unit="ms", better="lower",
                        samples=err_ms, kind="per-repeat", exceptions=sorted(kinds)))
        rows.append(row(system, case="pool back to N ready", unit="ms", better="lower",
                        samples=full_ms, kind="per-repeat"))

    with kernelpit.Pool(**kp.pool_settings(n)) as pool:
        measure(pool, "kernelpit-embedded")
    import dataclasses
    if "spares" in {f.name for f in dataclasses.fields(kernelpit.PoolConfig)}:
        # not the default configuration, so not what the targets are judged on: shown for contrast
        with kernelpit.Pool(**kp.pool_settings(n, spares=1)) as pool:
            measure(pool, "kernelpit-embedded-spares=1", spares=True)
    bridge, client, why = ctx.remote()
    if client is None:
        rows.append(skipped("kernelpit-remote", why or "", case="caller gets error", unit="ms"))
    else:
        measure(client, "kernelpit-remote")
    rows += [skipped("ipyparallel", "not comparable: engine death is noticed by heartbeat, "
                     "not measured here", case="caller gets error", unit="ms"),
             skipped("dask", "not comparable: Dask reschedules the task on another worker "
                     "instead of failing it", case="caller gets error", unit="ms")]
    e, f = find(rows, "kernelpit-embedded", "caller gets error"), find(rows, "kernelpit-embedded", "pool back to N ready")
    re_, rf = find(rows, "kernelpit-remote", "caller gets error"), find(rows, "kernelpit-remote", "pool back to N ready")
    targets = [
        target("S5.error", "caller error <= 100 ms (embedded)", e and e["median"], 100, "<="),
        target("S5.full", "pool back to N ready <= 1 s (embedded)", f and f["median"], 1000, "<="),
        target("S5.remote_error", "caller error <= 100 ms (remote)", re_ and re_["median"], 100, "<=",
               why_unknown=why or "remote not measured"),
        target("S5.remote_full", "pool back to N ready <= 1 s (remote)", rf and rf["median"], 1000, "<=",
               why_unknown=why or "remote not measured"),
    ]
    ipk = ctx.ipykernel_start()
    ipk_ms = {**ipk, "median": ipk["median"] * 1e3} if ipk.get("status") == "ok" else ipk
    targets.append(target("S5.replace_vs_ipykernel",
                          "back to N ready, no spares <= 0.25x one plain ipykernel start",
                          ratio(f, ipk_ms), 0.25, "<=", ratio=True, detail=_detail(f, ipk_ms, "ms")))
    return {"title": "crash recovery (kill -9 a busy worker)", "rows": rows, "targets": targets,
            "params": {"repeats": reps, "workers": n}}


# ---------------------------------------------------------------------------------------------
FLOOD = 20_000


def _flood_rows(system: str, api: str, noop_ms: list[float],
                floods: list[tuple[float, list[float]]]) -> list[dict[str, Any]]:
    """The rows of one system's floods: [(events/s, delivery latencies in ms)] per repeat."""
    delivered = [len(lat) for _, lat in floods]
    return [
        row(system, case="no-op call, same run", unit="ms", better="lower", samples=noop_ms,
            api="call('noop') just before the floods"),
        row(system, case="delivery latency", unit="ms", better="lower",
            samples=[x for _, lat in floods for x in lat],
            api=f"{api}: time.monotonic() at receive - at the tool's progress() call"),
        row(system, case="events/s", unit="events/s", better="higher", samples=[r for r, _ in floods],
            kind="per-repeat", api=f"{FLOOD:,} progress() calls / (first call -> last event)"),
        row(system, case=f"delivered of {FLOOD:,}", unit="events", better="higher", samples=delivered,
            kind="per-repeat", coalesced=[FLOOD - d for d in delivered],
            api="progress events the consumer got; the rest were coalesced (the latest wins)"),
    ]


def _flood_once(events: Any) -> tuple[float, list[float]]:
    """Consume one ``progress_ts`` stream: (events/s, delivery latencies in ms)."""
    lat = []
    t0 = time.perf_counter()
    for ev in events:
        if ev.kind == "progress":
            lat.append((time.monotonic() - float(ev.message)) * 1e3)
        elif ev.kind == "error":
            ev.raise_()
    return FLOOD / (time.perf_counter() - t0), lat


def s6_stream(ctx: Context) -> dict[str, Any]:
    """A tool floods 20,000 progress events: delivery latency as a ratio to the no-op p50 of
    the same client in the same run, events/s, and how many were coalesced."""
    reps = ctx.repeats(2, 5)
    n_noop = ctx.size(300, 1000)
    rows: list[dict[str, Any]] = []

    def floods(handle: Any) -> tuple[list[float], list[tuple[float, list[float]]]]:
        noop = _ms(timed_loop(lambda: handle.call("noop"), n_noop, 50))
        _flood_once(handle.stream("progress_ts", n=FLOOD))  # warm-up
        return noop, [_flood_once(handle.stream("progress_ts", n=FLOOD)) for _ in range(reps)]

    rows += _flood_rows("kernelpit-embedded", "Pool.stream (blocking iterator)", *floods(ctx.pool()))

    async def aio_run() -> tuple[list[float], list[tuple[float, list[float]]]]:
        import kernelpit.aio
        async with kernelpit.aio.Pool(**kp.pool_settings(ctx.workers)) as apool:
            noop = []
            for i in range(n_noop + 50):
                t0 = time.perf_counter()
                await apool.call("noop")
                if i >= 50:
                    noop.append((time.perf_counter() - t0) * 1e3)
            out = []
            for r in range(reps + 1):
                lat = []
                t0 = time.perf_counter()
                async for ev in apool.stream("progress_ts", n=FLOOD):
                    if ev.kind == "progress":
                        lat.append((time.monotonic() - float(ev.message)) * 1e3)
                if r:
                    out.append((FLOOD / (time.perf_counter() - t0), lat))
        return noop, out
    ctx.settle("kernelpit-embedded-aio")
    try:
        rows += _flood_rows("kernelpit-embedded-aio", "kernelpit.aio.Pool.stream", *asyncio.run(aio_run()))
    except Exception as exc:  # noqa: BLE001
        rows.append(failed("kernelpit-embedded-aio", exc, case="delivery latency", unit="ms"))

    def remote_flood(bridge: Any, client: Any) -> dict[str, Any]:
        more = _flood_rows("kernelpit-remote", "kernelpit.connect().stream", *floods(client))
        rows.extend(more[:-1])
        return more[-1]
    _remote_rows(ctx, rows, "kernelpit-remote", "delivery latency", "ms", "lower", remote_flood)

    def local_flood(bridge: Any, client: Any) -> dict[str, Any]:
        more = _flood_rows("kernelpit-local", "connect(transport='local').stream", *floods(client))
        rows.extend(more[:-1])
        return more[-1]
    _remote_rows(ctx, rows, "kernelpit-local", "delivery latency", "ms", "lower", local_flood)
    why = ctx.remote()[2]
    for name in ("ipyparallel", "dask"):
        rows.append(skipped(name, "no per-call progress event stream to compare", case="events/s",
                            unit="events/s", better="higher"))
    add_ratios(rows)

    def lat_target(tid: str, system: str, of: str, times: float) -> dict[str, Any]:
        lat, noop = find(rows, system, "delivery latency"), find(rows, system, "no-op call, same run")
        where = system.removeprefix("kernelpit-")
        return target(tid, f"{where} delivery {'p50' if of == 'median' else of} <= {times:g}x its no-op p50",
                      (lat[of] / noop["median"]) if lat and noop else None, times, "<=",
                      why_unknown=(why if "embedded" not in system else None)
                      or f"{system} not measured",
                      ratio=True, detail=_detail(lat, noop, "ms", of, "median"))
    targets = [lat_target("S6.embedded_p50", "kernelpit-embedded", "median", 3),
               lat_target("S6.remote_p50", "kernelpit-remote", "median", 3),
               lat_target("S6.remote_p99", "kernelpit-remote", "p99", 30),
               lat_target("S6.local_p50", "kernelpit-local", "median", 3)]
    return {"title": f"a tool floods {FLOOD:,} progress events", "rows": rows, "targets": targets,
            "params": {"events": FLOOD, "repeats": reps, "noop_calls": n_noop,
                       "clock": "time.monotonic (shared by every process on the host)"}}


# ---------------------------------------------------------------------------------------------
ARGUMENT_CASES = (", argument", ", passed back")


def _arrow_arguments(ctx: Context, pool: Any, rows: list[dict[str, Any]], size: int, reps: int,
                     measure: Callable[..., list[float]]) -> None:
    """The other direction (caller -> tool, embedded): a Table built in the caller, and a
    Table received from a tool and passed back (by reference: nothing is written again)."""
    unit, better = "GB/s", "higher"
    expected = max(1, size // 32) * 32
    for suffix in ARGUMENT_CASES:
        case = f"arrow {size // MB:,} MB{suffix}"
        ctx.log(f"  payload {case}: kernelpit")
        try:
            with pool.session() as s:
                table = payloads.make_arrow(size) if suffix == ", argument" else \
                    s.call("payload_arrow", nbytes=size)
                xs = measure(lambda: s.call("arrow_size", table), lambda n: n == expected,
                             size, reps)
                del table
                s.call("drop_payloads")
                payloads.clear()
            rows.append(row("kernelpit-embedded", case=case, unit=unit, better=better,
                            samples=xs, kind="per-repeat", api="Session.call(tool, table)"))
        except Exception as exc:  # noqa: BLE001
            rows.append(failed("kernelpit-embedded", exc, case=case, unit=unit, better=better))


def s7_payload(ctx: Context) -> dict[str, Any]:
    """Results of 1 MB / 100 MB / 1 GB, bytes and a numeric table, tool -> caller; GB/s."""
    sizes = {"bytes": ctx.size([MB, 100 * MB], [MB, 100 * MB, GB]),
             # a table of Python floats costs ~32 bytes of objects per 8-byte value on each side,
             # plus its JSON text: 1 GB of it needs 10-15 GB of RAM and minutes per transfer
             "table": ctx.size([MB, 10 * MB], [MB, 100 * MB]),
             # the same numbers as a pyarrow Table: Arrow IPC, by reference through /dev/shm
             "arrow": ctx.size([MB, 100 * MB], [MB, 100 * MB, GB])}
    rows: list[dict[str, Any]] = []
    unit, better = "GB/s", "higher"

    def reps_for(size: int) -> int:
        # Five repeats from 10 MB on: one call in ten comes out twice as slow here, its client
        # spending 0.5 s in the kernel on the fresh pages of its new floats (first touch on
        # this VM), and the median of two repeats is their mean (docs/performance.md, S7).
        base = {MB: ctx.repeats(3, 20), 10 * MB: ctx.repeats(3, 5), 100 * MB: ctx.repeats(1, 5),
                GB: ctx.repeats(1, 2)}[size]
        return max(1, base)

    def measure(fetch: Callable[[], Any], check: Callable[[Any], bool], size: int, reps: int) -> list[float]:
        v = fetch()  # warm-up: builds the payload in the worker's cache
        assert check(v)
        del v
        # Each repeat starts after a collection, and the objects the scenarios before left in
        # this process are frozen first, so that those collections do not walk them: walking the
        # peers' leftovers (160,000 objects after S2) before each call halved the 1 MB table rows
        # of every system in full runs (docs/performance.md, S7).
        gc.collect()
        gc.freeze()
        out = []
        try:
            for _ in range(reps):
                gc.collect()
                t0 = time.perf_counter()
                v = fetch()
                dt = time.perf_counter() - t0
                assert check(v)
                del v
                out.append(size / GB / dt)
        finally:
            gc.unfreeze()
        return out

    pool = ctx.pool()
    if not ctx.quick:
        rows.append(skipped("all", "1 GB numeric table not run: as lists of Python floats it needs "
                            "10-15 GB of RAM across worker, bridge and caller, and minutes per "
                            "transfer; measured up to 100 MB", case="table 1,000 MB", unit=unit,
                            better=better))
    for kind in ("bytes", "table", "arrow"):
        for size in sizes[kind]:
            case = f"{kind} {size // MB:,} MB"
            reps = reps_for(size)
            tool = f"payload_{kind}"
            if kind == "bytes":
                def check(v: Any, size: int = size) -> bool:
                    return isinstance(v, bytes) and len(v) == size
            elif kind == "arrow":
                def check(v: Any, size: int = size) -> bool:
                    return payloads.arrow_nbytes(v) == max(1, size // 32) * 32
            else:
                def check(v: Any, size: int = size) -> bool:
                    return payloads.table_nbytes(v) == max(1, size // 32) * 32
            ctx.log(f"  payload {case}: kernelpit")
            try:
                with pool.session() as s:  # pinned: the warm-up fills the same worker's cache
                    xs = measure(lambda: s.call(tool, nbytes=size), check, size, reps)
                    s.call("drop_payloads")
                rows.append(row("kernelpit-embedded", case=case, unit=unit, better=better,
                                samples=xs, kind="per-repeat", api="Session.call"))
            except Exception as exc:  # noqa: BLE001
                rows.append(failed("kernelpit-embedded", exc, case=case, unit=unit, better=better))
            if kind == "arrow":
                _arrow_arguments(ctx, pool, rows, size, reps, measure)
            def client_measure(system: str, api: str) -> Callable[[Any, Any], dict[str, Any]]:
                def measure_client(bridge: Any, client: Any) -> dict[str, Any]:
                    ctx.log(f"  payload {case}: {system}")
                    with client.session() as s:
                        xs = measure(lambda: s.call(tool, nbytes=size), check, size, reps)
                        s.call("drop_payloads")
                    return row(system, case=case, unit=unit, better=better, samples=xs,
                               kind="per-repeat", api=api)
                return measure_client
            _remote_rows(ctx, rows, "kernelpit-remote", case, unit, better,
                         client_measure("kernelpit-remote", "connect().session().call over gRPC "
                                        "(large values over the bridge's blob lane)"))
            _remote_rows(ctx, rows, "kernelpit-local", case, unit, better, client_measure(
                "kernelpit-local", "connect(transport='local').session().call"))
            fn = getattr(pf, tool)

            def ipp_measure(peer: IppPeer) -> dict[str, Any]:
                ctx.log(f"  payload {case}: ipyparallel")
                view = peer.rc[peer.rc.ids[0]]
                xs = measure(lambda: view.apply_sync(fn, size), check, size, reps)
                view.apply_sync(pf.drop_payloads)
                return row("ipyparallel", case=case, unit=unit, better=better, samples=xs,
                           kind="per-repeat", api="DirectView.apply_sync (one engine)")
            _peer_rows(ctx, rows, "ipyparallel", "ipyparallel", case, unit, better, ipp_measure)

            def dask_measure(peer: DaskPeer) -> dict[str, Any]:
                ctx.log(f"  payload {case}: dask")
                client = peer.client
                addr = peer.worker_addresses()[0]
                xs = measure(lambda: client.submit(fn, size, pure=False, workers=[addr]).result(),
                             check, size, reps)
                client.run(pf.drop_payloads)
                return row("dask", case=case, unit=unit, better=better, samples=xs,
                           kind="per-repeat", api="Client.submit(workers=[one]).result()")
            _peer_rows(ctx, rows, "dask", "dask", case, unit, better, dask_measure)
            gc.collect()
            if kind == "bytes" and size >= 100 * MB:  # the same bytes for the Arrow rows
                echo, why_echo = ctx.echo()
                if echo is None:
                    rows.append(skipped("ref-grpc-stream", why_echo or "", case=case, unit=unit,
                                        better=better))
                else:
                    ctx.settle(f"ref-grpc-stream {case}")
                    rows.append(row("ref-grpc-stream", case=case, unit=unit, better=better,
                                    samples=echo.stream_rate(size, max(2, reps)),
                                    kind="per-repeat", api="bare grpc.aio server streaming "
                                    "4 MiB BlobChunk frames -> blocking channel, one buffer"))
                gc.collect()
            if kind != "table":
                ctx.settle(f"ref-memcpy {case}")
                rows.append(row("ref-memcpy", case=case, unit=unit, better=better,
                                samples=references.memcpy_rate(size, max(2, reps)), kind="per-repeat",
                                api="memmove of the same size into a pre-faulted buffer"))
                gc.collect()
    add_ratios(rows)
    targets = []
    for r in rows:  # every Kernelpit row >= 1.5x the best peer of its case
        if r["system"] not in ("kernelpit-embedded", "kernelpit-remote") or r.get("status") != "ok" \
                or r["case"].endswith(ARGUMENT_CASES):
            continue
        vs = {p: x for p, x in (r.get("vs_peers") or {}).items() if p in ("ipyparallel", "dask")}
        kind_, size_ = r["case"].split(" ", 1)
        where = r["system"].removeprefix("kernelpit-")
        targets.append(target(
            f"S7.{kind_}_{size_.replace(',', '').replace(' ', '').lower()}.{where[:3]}",
            f"{r['case']} {where} >= 1.5x the best of ipyparallel and Dask",
            min(vs.values()) if len(vs) == 2 else None, 1.5, ">=", ratio=True,
            why_unknown="ipyparallel or Dask not measured",
            detail=", ".join(f"{p} {x:.2f}x" for p, x in vs.items())))
    gb = find(rows, "kernelpit-embedded", "arrow 1,000 MB")
    mem = find(rows, "ref-memcpy", "arrow 1,000 MB")
    targets.append(target("S7.arrow_1gb_vs_memcpy",
                          "1 GB Arrow tool -> embedded caller >= 0.5x memcpy (pre-faulted)",
                          ratio(gb, mem), 0.5, ">=", ratio=True, detail=_detail(gb, mem, "GB/s"),
                          why_unknown="1 GB rows run in full mode only" if ctx.quick else ""))
    for kind in ("arrow", "bytes"):
        loc = find(rows, "kernelpit-local", f"{kind} 1,000 MB")
        mem_ = find(rows, "ref-memcpy", f"{kind} 1,000 MB")
        targets.append(target(f"S7.{kind}_1gb_local_vs_memcpy",
                              f"1 GB {kind} tool -> local-transport client >= 0.5x memcpy",
                              ratio(loc, mem_), 0.5, ">=", ratio=True,
                              detail=_detail(loc, mem_, "GB/s"),
                              why_unknown="1 GB rows run in full mode only" if ctx.quick
                              else "local not measured"))
    for size_ in ("100 MB", "1,000 MB"):  # what gRPC itself carries on this machine
        for kind in ("bytes", "arrow"):
            rem = find(rows, "kernelpit-remote", f"{kind} {size_}")
            ref = find(rows, "ref-grpc-stream", f"bytes {size_}")
            targets.append(target(
                f"S7.{kind}_{size_.replace(',', '').replace(' ', '').lower()}_remote_vs_stream",
                f"(for reference) {kind} {size_} remote, x a bare grpc.aio stream of as many bytes",
                ratio(rem, ref), 0.0, ">=", ratio=True, detail=_detail(rem, ref, "GB/s"),
                why_unknown="1 GB rows run in full mode only" if ctx.quick and size_ != "100 MB"
                else "remote or the reference stream not measured"))
    arg = find(rows, "kernelpit-embedded", "arrow 1,000 MB, argument")
    targets.append(target("S7.arrow_1gb_argument_vs_memcpy",
                          "(for reference) 1 GB Arrow caller -> tool, x memcpy (pre-faulted)",
                          ratio(arg, mem), 0.0, ">=", ratio=True, detail=_detail(arg, mem, "GB/s"),
                          why_unknown="1 GB rows run in full mode only" if ctx.quick else ""))
    return {"title": "payload tool -> caller (bytes, JSON table, Arrow table)", "rows": rows,
            "targets": targets,
            "params": {"sizes": sizes, "table": "dict of 4 columns, lists of Python floats",
                       "arrow": "pyarrow.Table of 4 float64 columns (Arrow IPC; shared memory "
                                "above 1 MB in Kernelpit, pickle in the peers)",
                       "pinned": "each system serves the warm-up and the timed calls from one worker"}}


# ---------------------------------------------------------------------------------------------
def s8_memory(ctx: Context) -> dict[str, Any]:
    """RSS of the pool owner idle and under load (measured in a fresh process), per-worker RSS."""
    import json
    import subprocess
    import sys
    from .peers import ROOT
    rows: list[dict[str, Any]] = []
    proc = subprocess.run([sys.executable, "-m", "benchmarks.memprobe", str(ctx.workers)],
                          cwd=str(ROOT), capture_output=True, text=True, timeout=300)
    if proc.returncode != 0:
        rows.append(skipped("kernelpit-embedded", f"memprobe failed: {proc.stderr[-500:]}",
                            case="owner idle", unit="MB", status="error"))
        probe = {}
    else:
        probe = json.loads(proc.stdout.strip().splitlines()[-1])
        for case, key in (("owner before Pool", "owner_baseline"), ("owner idle", "owner_idle"),
                          ("owner peak, 32 callers", "owner_peak_load"),
                          ("owner peak, 10k-event stream", "owner_peak_stream"),
                          ("owner peak, 100 MB result", "owner_peak_payload")):
            rows.append(row("kernelpit-embedded", case=case, unit="MB", better="lower",
                            samples=[probe[key] / MB], kind="per-repeat"))
        rows.append(row("kernelpit-embedded", case="per worker idle", unit="MB", better="lower",
                        samples=[x / MB for x in probe["workers_idle"]], kind="per-repeat"))
        rows.append(row("kernelpit-embedded", case="per worker after load", unit="MB",
                        better="lower", samples=[x / MB for x in probe["workers_after"]],
                        kind="per-repeat"))
    import psutil
    if kp.remote_unavailable() or not ctx.with_remote or ctx.quick:
        rows.append(skipped("kernelpit-remote", kp.remote_unavailable() or (
            "full mode only (a bridge of its own)" if ctx.quick else "disabled with --no-remote"),
                            case="bridge idle", unit="MB"))
    else:
        try:
            rows += _bridge_memory(ctx)
        except Exception as exc:  # noqa: BLE001
            rows.append(failed("kernelpit-remote", exc, case="bridge idle", unit="MB"))

    def rss(pids: list[int]) -> list[float]:
        out = []
        for pid in pids:
            try:
                out.append(psutil.Process(pid).memory_info().rss / MB)
            except psutil.Error:
                pass
        return out
    for name in ("ipyparallel", "dask", "jupyter_client"):
        def m(peer: Any, name: str = name) -> dict[str, Any]:
            return row(name, case="per worker idle", unit="MB", better="lower",
                       samples=rss(peer.pids()), kind="per-repeat")
        _peer_rows(ctx, rows, name, name, "per worker idle", "MB", "lower", m)
    add_ratios(rows)
    return {"title": "memory (RSS)", "rows": rows, "targets": [], "params": {"probe": probe}}


def _bridge_memory(ctx: Context) -> list[dict[str, Any]]:
    """RSS of a fresh ``kernelpit serve`` process: idle, and peaks under remote load."""
    import psutil
    bridge = kp.RemoteBridge(ctx.workers)
    bridge.start()
    proc = psutil.Process(bridge.pid)
    out: dict[str, float] = {}

    class Peak:
        def __enter__(self) -> "Peak":
            self.peak = proc.memory_info().rss
            self.stop = threading.Event()
            self.t = threading.Thread(target=self.run, daemon=True)
            self.t.start()
            return self

        def run(self) -> None:
            while not self.stop.is_set():
                self.peak = max(self.peak, proc.memory_info().rss)
                time.sleep(0.005)

        def __exit__(self, *exc: Any) -> None:
            self.stop.set()
            self.t.join()
    try:
        with bridge.connect() as client:
            for _ in range(200):
                client.call("noop")
            time.sleep(0.5)
            out["bridge idle"] = proc.memory_info().rss
            workers_idle = [w.rss for w in client.workers()]

            def caller(k: int) -> None:
                for _ in range(k):
                    client.call("noop")
            with Peak() as p, ThreadPoolExecutor(32) as ex:
                list(ex.map(caller, [100] * 32))
            out["bridge peak, 32 callers"] = p.peak
            with Peak() as p:
                for _ in client.stream("progress_ts", n=10_000):
                    pass
            out["bridge peak, 10k-event stream"] = p.peak
            with client.session() as sess:
                sess.call("payload_bytes", nbytes=100 * MB)
                with Peak() as p:
                    v = sess.call("payload_bytes", nbytes=100 * MB)
                    del v
                sess.call("drop_payloads")
            out["bridge peak, 100 MB result"] = p.peak
            time.sleep(0.3)
            out["bridge after"] = proc.memory_info().rss
    finally:
        bridge.stop()
    rows = [row("kernelpit-remote", case=case, unit="MB", better="lower", samples=[v / MB],
                kind="per-repeat", api="RSS of the `kernelpit serve` process") for case, v in out.items()]
    rows.append(row("kernelpit-remote", case="per worker idle", unit="MB", better="lower",
                    samples=[x / MB for x in workers_idle], kind="per-repeat"))
    return rows


SCENARIOS: dict[str, tuple[str, Callable[[Context], dict[str, Any]]]] = {
    "s1": ("s1_latency", s1_latency),
    "s2": ("s2_throughput", s2_throughput),
    "s3": ("s3_map", s3_map),
    "s4": ("s4_start", s4_start),
    "s5": ("s5_crash", s5_crash),
    "s6": ("s6_stream", s6_stream),
    "s7": ("s7_payload", s7_payload),
    "s8": ("s8_memory", s8_memory),
    "s9": ("s9_ray", s9_ray),  # benchmarks/scale.py
    "s10": ("s10_fairness", s10_fairness),
}
