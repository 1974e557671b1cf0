"""Periodic health checks: heartbeat, call-path ping, memory and age of every worker.

Each tick (``health_interval``) samples every worker's RSS and age against
``max_memory`` / ``max_age`` (recycling it when over), and checks that it
answers both on the kernel's heartbeat channel and through the agent's io
thread on the call channel.  A worker silent for ``health_timeout`` seconds
(stopped, deadlocked, stuck in C holding the GIL) is reported unhealthy.

A worker keeps memory for its next values: the heap its last call freed and the large frames
it received (kernels/heap.py, kernels/wire.py).  So a worker over ``max_memory``, at a tick or
right after a call (:meth:`HealthMonitor.check_memory`), is first asked to give that back, and
is recycled only when what it really holds is still over.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Callable, Iterable

if TYPE_CHECKING:
    from .worker import Worker


class HealthMonitor:
    def __init__(self, workers: Callable[[], Iterable["Worker"]],
                 recycle: Callable[["Worker", str], None],
                 unhealthy: Callable[["Worker", str], None], interval: float) -> None:
        self._workers = workers
        self._recycle = recycle
        self._unhealthy = unhealthy
        self._interval = interval
        self._checking: set[int] = set()
        self._task: asyncio.Task[None] | None = None
        self._memory_checks: set[asyncio.Task[None]] = set()

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
        for task in list(self._memory_checks):
            task.cancel()

    def check_memory(self, worker: "Worker") -> None:
        """A call just left ``worker`` over ``max_memory``: recycle it if it stays over once
        it has given back what it keeps (unless a check of it is under way)."""
        if worker.id in self._checking:
            return
        self._checking.add(worker.id)
        task = asyncio.ensure_future(self._check_memory(worker))
        self._memory_checks.add(task)
        task.add_done_callback(self._memory_checks.discard)

    async def _check_memory(self, worker: "Worker") -> None:
        try:
            if await self._over_memory(worker, worker.rss):
                self._recycle(worker, "memory")
        finally:
            self._checking.discard(worker.id)

    @staticmethod
    async def _over_memory(worker: "Worker", rss: int) -> bool:
        """Whether ``worker`` (last seen at ``rss``) is over ``max_memory`` with what it keeps
        for reuse given back; one round trip, only when ``rss`` is over."""
        limit = worker.config.max_memory
        if not limit or rss <= limit:
            return False
        try:
            await worker.ping(worker.config.health_timeout, give_back=True)
        except asyncio.TimeoutError:
            return True  # silent: the heartbeat check reports it; its RSS stands
        return await worker.measure() > limit

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            for worker in list(self._workers()):
                if worker.state in ("idle", "busy", "recycling") and worker.id not in self._checking:
                    self._checking.add(worker.id)
                    asyncio.ensure_future(self._check(worker))

    async def _check(self, worker: "Worker") -> None:
        try:
            cfg = worker.config
            rss = await worker.measure()
            if worker.serving and not worker.spare:
                if await self._over_memory(worker, rss):
                    self._recycle(worker, "memory")
                elif cfg.max_age and time.time() - worker.started_at > cfg.max_age:
                    self._recycle(worker, "ttl")
            beat, ping = await asyncio.gather(worker.heartbeat(cfg.health_timeout),
                                              self._ping(worker, cfg.health_timeout))
            if worker.state in ("idle", "busy", "recycling") and not (beat and ping):
                silent = "heartbeat channel" if not beat else "call channel"
                self._unhealthy(worker, f"stopped answering on its {silent} for "
                                        f"{cfg.health_timeout:g} s")
        finally:
            self._checking.discard(worker.id)

    @staticmethod
    async def _ping(worker: "Worker", timeout: float) -> bool:
        try:
            await worker.ping(timeout)
        except asyncio.TimeoutError:
            return False
        return True
