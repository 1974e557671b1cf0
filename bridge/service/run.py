"""``kernelpit serve`` in the foreground: start, serve until SIGTERM/SIGINT or idle, drain, exit."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from typing import Any, TextIO

from ..config import PoolConfig
from ..kernels import heap
from .server import Bridge


async def serve(configs: list[PoolConfig], *, out: TextIO = sys.stderr, **settings: Any) -> None:
    """Run a bridge until SIGTERM, SIGINT, the Shutdown RPC or its idle timeout; then drain and
    stop every kernel."""
    heap.keep_freed_memory()  # `kernelpit serve` is this process: its messages reuse pages
    bridge = Bridge(configs, **settings)
    loop = asyncio.get_running_loop()
    stop_signals = (signal.SIGTERM, signal.SIGINT)
    for sig in stop_signals:
        loop.add_signal_handler(sig, bridge.request_stop)

    def say(text: str) -> None:
        print(f"kernelpit: {text}", file=out, flush=True)

    try:
        say(f"starting {sum(c.workers for c in configs)} worker kernel(s) in pool(s) "
            f"{', '.join(c.name for c in configs)}...")
        await bridge.start()
        tls = bridge.tls
        transport = ("mutual TLS" if tls and tls.client_ca else "TLS" if tls else "plaintext")
        say(f"bridge serving {len(bridge.manager.tools())} tool(s) at {bridge.address} "
            f"({transport}, pid {os.getpid()})")
        if bridge.local_address is not None:
            say(f"clients on this machine: {bridge.local_address} (the local transport)")
        if bridge.discovery_path is not None:
            say(f"discovery file {bridge.discovery_path}")
        if bridge.runner is not None:
            say(f"job store {bridge.runner.store.url} (namespace {bridge.runner.store.namespace})")
        if bridge.metrics.url is not None:
            say(f"Prometheus metrics at {bridge.metrics.url}")
        idle = bridge.idle.timeout
        say("stop with Ctrl-C, SIGTERM or `kernelpit stop`" + (
            f"; it stops by itself after {idle:g} s with no calls and no connected client"
            if idle else ""))
        grace = await bridge.stop_requested()
        if bridge.idle.idle_for is not None:
            say(f"stopping: idle for {round(bridge.idle.idle_for, 1):g} s with no client")
        for sig in stop_signals:  # a second signal stops now
            loop.add_signal_handler(sig, bridge.abort_drain)
        inflight = bridge.calls_in_flight
        say(f"stopping: no new calls; {inflight} call(s) in flight (jobs included) get up to "
            f"{grace:g} s to finish{' (Ctrl-C again to cancel them now)' if inflight else ''}")
        await bridge.stop(grace)
        say("stopped; every worker kernel is shut down")
    finally:
        for sig in stop_signals:
            loop.remove_signal_handler(sig)
        await bridge.stop(0)
