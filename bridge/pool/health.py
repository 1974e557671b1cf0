"""Periodic health checks: heartbeat, call-path ping, memory and age of every worker.

Each tick (``health_interval``) samples every worker's RSS and age against
``max_memory`` / ``max_age`` (recycling it when over), and checks that it
answers both on the kernel's heartbeat channel and through the agent's io
thread on the call channel.  A worker silent for ``health_timeout`` seconds
(stopped, deadlocked, stuck in C holding the GIL) is reported unhealthy.
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

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

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
                if cfg.max_memory and rss > cfg.max_memory:
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
