"""The remote hot path (S1 and S2 through a bridge), profiled from both ends.

    python -m benchmarks.profile_remote spy 1 8 s1        # py-spy on the bridge and on this client
    python -m benchmarks.profile_remote spy 32 8 s2       # the same with 32 calling threads
    python -m benchmarks.profile_remote split 3000        # where one no-op call's time goes

``spy CALLERS SECONDS TAG``: a ``kernelpit serve`` bridge (as the suite starts it), CALLERS
threads making no-op calls on one blocking client, and ``py-spy record --nonblocking`` attached
to the bridge and to this process (raw profiles ``TAG_bridge.txt`` and ``TAG_client.txt`` in the
temporary directory; summarize them with ``benchmarks/profiles/summarize.py``).  Prints the
rate and each process's CPU per call.  ``--nonblocking`` does not stop the processes to
sample them (py-spy's default, and ``--native``, cut the rate 5 to 20 times here).

``split N``: a bridge in a child process whose ``Call`` handler stamps its entry and exit on
the host's monotonic clock, N sequential calls, and the p50 of each leg: client -> handler,
the handler (the pool's round trip), handler -> client; then the same for a bare grpc.aio echo
server whose handler does nothing.  The legs the two share are gRPC's.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from . import kp

OUT = Path(tempfile.gettempdir())


def spy(callers: int, seconds: int, tag: str) -> None:
    import psutil

    if shutil.which("py-spy") is None:
        raise SystemExit("py-spy is not installed here: pip install py-spy (it attaches to the "
                         "bridge and to this process, so run as root or with ptrace allowed)")
    bridge = kp.RemoteBridge(2)
    bridge.start()
    try:
        with bridge.connect() as client:
            for _ in range(200):
                client.call("noop")
            spies = [subprocess.Popen(
                ["py-spy", "record", "-r", "200", "--nonblocking", "--format", "raw", "-d",
                 str(seconds), "-p", str(pid), "-o", str(OUT / f"{tag}_{who}.txt")],
                stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                for pid, who in ((bridge.pid, "bridge"), (os.getpid(), "client"))]
            time.sleep(0.3)
            me, br = psutil.Process(), psutil.Process(bridge.pid)
            cpu = lambda: (sum(me.cpu_times()[:2]), sum(br.cpu_times()[:2]))  # noqa: E731
            end = time.monotonic() + seconds - 0.6
            counts = [0] * callers

            def caller(i: int) -> None:
                while time.monotonic() < end:
                    client.call("noop")
                    counts[i] += 1
            c0, t0 = cpu(), time.perf_counter()
            with ThreadPoolExecutor(callers) as ex:
                list(ex.map(caller, range(callers)))
            wall, c1, n = time.perf_counter() - t0, cpu(), sum(counts)
            print(f"{tag}: {callers} caller(s), {n / wall:,.0f} calls/s; CPU per call: client "
                  f"{1e6 * (c1[0] - c0[0]) / n:.0f} us, bridge {1e6 * (c1[1] - c0[1]) / n:.0f} us; "
                  f"load {os.getloadavg()[0]:.1f}")
            for s in spies:
                s.wait()
            print(f"profiles: {OUT / (tag + '_bridge.txt')}, {OUT / (tag + '_client.txt')}")
    finally:
        bridge.stop()


_STAMPED_BRIDGE = """
import asyncio, json, signal, sys, time
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.service import servicer
stamps, call = [], servicer.BridgeServicer.Call
async def stamped(self, request, context):
    t0 = time.monotonic()
    reply = await call(self, request, context)
    stamps.append((t0, time.monotonic()))
    return reply
servicer.BridgeServicer.Call = stamped
async def main():
    bridge = Bridge([PoolConfig(name="default", adapters=[sys.argv[1]], workers=2,
                                path=[sys.argv[2]])], token="t", discovery=False)
    await bridge.start()
    print("serving", bridge.address, flush=True)
    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGTERM, stop.set)
    await stop.wait()
    json.dump(stamps, open(sys.argv[3], "w"))
    await bridge.stop(0)
asyncio.run(main())
"""

def _legs(argv: list[str], out: str, n: int, make_call) -> str:
    proc = subprocess.Popen([sys.executable, *argv], cwd=str(kp.ROOT),
                            stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        served = proc.stdout.readline().split()[1]  # type: ignore[union-attr]
        address = served if ":" in served else f"127.0.0.1:{served}"  # host:port, or a port
        call, close = make_call(address)
        for _ in range(300):
            call()
        sent = []
        for _ in range(n):
            t0 = time.monotonic()
            call()
            sent.append((t0, time.monotonic()))
        close()
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    handled = json.load(open(out))[-n:]
    ms = lambda xs: 1e3 * statistics.median(xs)  # noqa: E731
    return (f"total {ms([b - a for a, b in sent]):.3f} ms = client -> handler "
            f"{ms([h[0] - s[0] for s, h in zip(sent, handled)]):.3f} + handler "
            f"{ms([h[1] - h[0] for h in handled]):.3f} + handler -> client "
            f"{ms([s[1] - h[1] for s, h in zip(sent, handled)]):.3f} (p50s)")


def split(n: int = 3000) -> None:
    import grpc

    import kernelpit
    from kernelpit.remote.target import CHANNEL_OPTIONS

    out = tempfile.NamedTemporaryFile(suffix=".json", delete=False).name
    try:
        def bridge_call(address: str):
            client = kernelpit.connect(address, "t")
            return (lambda: client.call("noop")), client.close

        def echo_call(address: str):
            channel = grpc.insecure_channel(address, options=CHANNEL_OPTIONS)
            echo = channel.unary_unary("/echo.Echo/Echo")
            return (lambda: echo(b"x" * 32)), channel.close
        print("bridge Call:", _legs(["-c", _STAMPED_BRIDGE, kp.ADAPTER, str(kp.ROOT), out], out,
                                    n, bridge_call))
        print("bare echo:  ", _legs(["-m", "benchmarks.references", out], out, n, echo_call))
        print(f"load {os.getloadavg()[0]:.1f}")
    finally:
        os.unlink(out)


if __name__ == "__main__":
    what, args = sys.argv[1], sys.argv[2:]
    if what == "spy":
        spy(int(args[0]), int(args[1]), args[2])
    else:
        split(*(int(a) for a in args))
