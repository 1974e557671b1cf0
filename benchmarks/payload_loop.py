"""One S7 payload row in a loop, with each process's CPU time and page faults per call.

    python -m benchmarks.payload_loop bytes 1000 --reps 5 --via grpc
    python -m benchmarks.payload_loop table 1 --reps 30 --via embedded
    python -m benchmarks.payload_loop arrow 100 --reps 8 --via grpc --stream

Sizes are in the suite's MB (10^6 bytes, as ``python -m benchmarks`` counts them). Each
call is timed after ``gc.collect()``, as S7 does; for a client of a bridge (``grpc`` or
``local``) the line also shows user and system CPU and minor faults of the caller, the
bridge and its workers during that call (from ``/proc``), which is where a transfer's time
goes when a row is slow (fresh pages, copies, one side waiting for the other).
"""

from __future__ import annotations

import argparse
import gc
import statistics
import time
from typing import Any, Callable

import psutil

from . import kp
from .peers import worker_environment

MB = 1_000_000


def _snapshot(procs: dict[str, psutil.Process]) -> dict[str, tuple[float, float, int]]:
    out = {}
    for name, p in procs.items():
        try:
            t = p.cpu_times()
            with open(f"/proc/{p.pid}/stat") as f:
                minflt = int(f.read().rsplit(")", 1)[1].split()[7])
            out[name] = (t.user, t.system, minflt)
        except (psutil.Error, OSError):
            pass
    return out


def _loop(call: Callable[[], Any], size: int, reps: int,
          procs: dict[str, psutil.Process]) -> list[float]:
    call()  # warm-up: builds the payload in the worker's cache
    rates = []
    for _ in range(reps):
        gc.collect()
        before = _snapshot(procs)
        t0 = time.perf_counter()
        value = call()
        dt = time.perf_counter() - t0
        after = _snapshot(procs)
        del value
        rates.append(size / 1e9 / dt)
        parts = [f"{name}: u{(after[name][0] - b[0]) * 1e3:.0f} s{(after[name][1] - b[1]) * 1e3:.0f}"
                 f" flt{after[name][2] - b[2]}" for name, b in before.items() if name in after]
        print(f"{dt * 1e3:8.1f} ms {rates[-1]:6.3f} GB/s | " + "  ".join(parts), flush=True)
    return rates


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("kind", choices=("bytes", "table", "arrow"))
    ap.add_argument("size_mb", type=float, help="payload size in MB (10^6 bytes)")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--via", choices=("embedded", "grpc", "local"), default="grpc")
    ap.add_argument("--stream", action="store_true",
                    help="alternate each call with a bare gRPC stream of as many bytes (S7's "
                         "ref-grpc-stream) and print the ratio (--via grpc or local)")
    args = ap.parse_args(argv)
    if args.stream and args.via == "embedded":
        ap.error("--stream compares a client of a bridge with a bare gRPC stream: use it with "
                 "--via grpc (or local)")
    worker_environment()
    size = int(args.size_mb * MB)
    tool = f"payload_{args.kind}"
    me = psutil.Process()
    if args.via == "embedded":
        import kernelpit
        with kernelpit.Pool(**kp.pool_settings(2)) as pool, pool.session() as s:
            workers = {f"w{i}": p for i, p in enumerate(me.children(recursive=True))}
            rates = _loop(lambda: s.call(tool, nbytes=size), size, args.reps,
                          {"caller": me, **workers})
            s.call("drop_payloads")
    else:
        bridge = kp.RemoteBridge(2)
        bridge.start()
        try:
            served = psutil.Process(bridge.pid)
            procs = {"client": me, "bridge": served, **{
                f"w{i}": p for i, p in enumerate(served.children(recursive=True))}}
            client = bridge.connect() if args.via == "grpc" else bridge.connect_local()
            with client, client.session() as s:
                if args.stream:
                    _against_stream(lambda: s.call(tool, nbytes=size), size, args.reps)
                    return
                rates = _loop(lambda: s.call(tool, nbytes=size), size, args.reps, procs)
                s.call("drop_payloads")
        finally:
            bridge.stop()
    print(f"{args.kind} {args.size_mb:g} MB via {args.via}: median "
          f"{statistics.median(rates):.3f} GB/s over {len(rates)} calls")


def _against_stream(call: Callable[[], Any], size: int, reps: int) -> None:
    """The row alternated with S7's ``ref-grpc-stream`` of as many bytes, call by call."""
    from .references import EchoServer

    echo = EchoServer()
    echo.start()
    try:
        call()  # warm-up (each stream_rate makes its own)
        rows, streams = [], []
        for _ in range(reps):
            streams.append(echo.stream_rate(size, 1)[0])
            gc.collect()
            t0 = time.perf_counter()
            value = call()
            rows.append(size / 1e9 / (time.perf_counter() - t0))
            del value
        ratios = sorted(r / st for r, st in zip(rows, streams))
        print(f"row {statistics.median(rows):.3f} GB/s, bare gRPC stream "
              f"{statistics.median(streams):.3f} GB/s: the row at {statistics.median(ratios):.2f}x "
              f"of the stream (median of {reps} pairs, {ratios[0]:.2f}x to {ratios[-1]:.2f}x)")
    finally:
        echo.stop()


if __name__ == "__main__":
    main()
