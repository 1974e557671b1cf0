"""Kernelpit under test: the embedded pool, and the remote client when the service exists."""

from __future__ import annotations

import contextlib
import importlib.util
import inspect
import math
import os
import re
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from .peers import ROOT

ADAPTER = "benchmarks.adapters"


def pool_settings(workers: int = 2, **extra: Any) -> dict[str, Any]:
    """Arguments for ``kernelpit.Pool`` / ``kernelpit.aio.Pool`` serving the benchmark tools."""
    return {"adapters": [ADAPTER], "workers": workers, "path": [str(ROOT)], **extra}


def chunksize_for(n_items: int, workers: int) -> int:
    """multiprocessing.Pool.map's default: about 4 chunks per worker."""
    return max(1, math.ceil(n_items / (workers * 4)))


def map_options(map_fn: Any, n_items: int, workers: int) -> dict[str, Any]:
    """``{"chunksize": k}`` when ``Pool.map`` accepts it (a batched map), else ``{}``."""
    try:
        params = inspect.signature(map_fn).parameters
    except (TypeError, ValueError):
        return {}
    if "chunksize" in params:
        return {"chunksize": chunksize_for(n_items, workers)}
    return {}


def remote_unavailable() -> str | None:
    """Why the remote (gRPC) client cannot be benchmarked in this tree, or None."""
    import kernelpit
    if not hasattr(kernelpit, "connect"):
        return "kernelpit.connect does not exist yet in this tree (gRPC service not landed)"
    if importlib.util.find_spec("kernelpit.service") is None:
        return "kernelpit.service does not exist yet in this tree"
    return None


class RemoteBridge:
    """A bridge started as its own process with ``kernelpit serve``, as users run it.

    Served on a free loopback port with a fresh token and no discovery file (so
    it never collides with a bridge someone else is running).
    """

    def __init__(self, workers: int = 2, extra: tuple[str, ...] = ()) -> None:
        self.workers = workers
        self.extra = extra  # more `kernelpit serve` flags (e.g. --scheduler fifo)
        self.proc: subprocess.Popen | None = None
        self.address = ""
        self.local_address: str | None = None
        self.token = secrets.token_urlsafe(16)
        self._log = tempfile.NamedTemporaryFile(prefix="kernelpit-bench-bridge-", suffix=".log",
                                                delete=False)

    def start(self, timeout: float = 60.0) -> float:
        import kernelpit
        port = _free_port()
        self.address = f"127.0.0.1:{port}"
        t0 = time.perf_counter()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernelpit", "serve", "--adapter", ADAPTER,
             "--workers", str(self.workers), "--path", str(ROOT), "--host", "127.0.0.1",
             "--port", str(port), f"--token={self.token}", "--no-discovery",  # may start with "-"
             *self.extra],
            cwd=str(ROOT), stdout=self._log, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + timeout
        while True:
            if self.proc.poll() is not None:
                raise RuntimeError(f"kernelpit serve exited with {self.proc.returncode}: "
                                   f"{self.log_tail()}")
            if "bridge serving" in self.log_tail():
                break
            if time.monotonic() > deadline:
                raise TimeoutError(f"kernelpit serve not ready in {timeout} s: {self.log_tail()}")
            time.sleep(0.02)
        dt = time.perf_counter() - t0
        found = re.search(r"clients on this machine: (unix:\S+)", self.log_tail(20000))
        self.local_address = found.group(1) if found else None
        with kernelpit.connect(self.address, self.token) as c:  # the service answers
            c.call("noop")
        return dt

    def connect(self) -> Any:
        """A gRPC client (the remote rows: what a client on another machine gets)."""
        import kernelpit
        return kernelpit.connect(self.address, self.token, transport="grpc")

    def connect_local(self) -> Any:
        """A client over the local transport (the bridge's Unix socket)."""
        import kernelpit
        return kernelpit.connect(self.local_address, self.token, transport="local")

    def connect_async(self) -> Any:
        import kernelpit.aio
        return kernelpit.aio.connect(self.address, self.token, transport="grpc")

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def log_tail(self, n: int = 2000) -> str:
        try:
            with open(self._log.name, "rb") as f:
                return f.read()[-n:].decode(errors="replace")
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        self.proc = None
        with contextlib.suppress(OSError):
            os.unlink(self._log.name)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
