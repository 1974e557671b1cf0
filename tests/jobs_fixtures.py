"""Shared pieces of the job tests: an event loop thread, the two stores, bridge processes."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from typing import Any, Callable

import pytest

import pg

HERE = os.path.dirname(os.path.abspath(__file__))
STORES = ["sqlite", "postgres"]


class LoopThread:
    """An event loop in a daemon thread; :meth:`run` waits for a coroutine on it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()

    def run(self, coro: Any, timeout: float = 60) -> Any:
        return asyncio.run_coroutine_threadsafe(coro, self.loop).result(timeout)

    def close(self) -> None:
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


class Sync:
    """Blocking calls of an async job API (JobRunner or RemoteJobs) on a LoopThread."""

    def __init__(self, api: Any, loop: LoopThread) -> None:
        self.api = api
        self._loop = loop

    def __getattr__(self, name: str) -> Callable[..., Any]:
        method = getattr(self.api, name)
        return lambda *a, **kw: self._loop.run(method(*a, **kw), 300)

    def events(self, job_id: str, after: int = 0) -> list[Any]:
        async def collect() -> list[Any]:
            return [e async for e in self.api.events(job_id, after)]
        return self._loop.run(collect(), 300)


def store_target(kind: str, name: str, tmp: str) -> str:
    """A fresh store of ``kind``: a SQLite path in ``tmp`` or a new PostgreSQL database."""
    if kind == "sqlite":
        return os.path.join(tmp, f"{name}.sqlite")
    try:
        return pg.server().database(name)
    except LookupError as exc:
        pytest.skip(str(exc))


class BridgeProcess:
    """tests/jobs_bridge.py in a subprocess: a pool, a JobRunner and the Jobs service."""

    def __init__(self, store: str, lease: float = 10.0, grace: float = 0.0) -> None:
        self.log = tempfile.TemporaryFile("w+")  # a pipe nobody reads could fill and block it
        self.proc = subprocess.Popen(
            [sys.executable, os.path.join(HERE, "jobs_bridge.py"), "--store", store,
             "--lease", str(lease), "--grace", str(grace)],
            stdout=subprocess.PIPE, stderr=self.log, text=True)
        line = self.proc.stdout.readline()  # type: ignore[union-attr]
        if not line:
            self.proc.wait(30)
            raise RuntimeError(f"the bridge did not start:\n{self.errors()[-3000:]}")
        info = json.loads(line)
        self.address, self.owner, self.pid = info["address"], info["owner"], info["pid"]

    def errors(self) -> str:
        self.log.seek(0)
        return self.log.read()

    def kill(self) -> None:
        """kill -9: no cleanup, no lease release."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)
        if self.proc.stdout is not None:
            self.proc.stdout.close()
        self.log.close()


def remote(address: str, loop: LoopThread) -> Sync:
    """A blocking RemoteJobs client of the bridge at ``address``."""
    import grpc

    from kernelpit.jobs.remote import RemoteJobs

    async def make() -> Any:
        return RemoteJobs(grpc.aio.insecure_channel(address), address=address)

    return Sync(loop.run(make()), loop)
