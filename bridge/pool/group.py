"""A named pool: its workers, its wait queue, and keeping it at full size."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any, Callable

from ..config import PoolConfig
from ..exceptions import StartError
from .call import Call
from .channel import Channel
from .dispatch import WaitQueue, pick
from .kernel import worker_spec
from .worker import Worker

log = logging.getLogger("kernelpit")


class WorkerGroup:
    """The workers of one :class:`PoolConfig`; replaces any that die while the pool is open."""

    def __init__(self, config: PoolConfig, channel: Channel, run_dir: Path, run_id: str,
                 new_id: Callable[[], int], on_worker_exit: Callable[[Worker], None],
                 start_slots: asyncio.Semaphore) -> None:
        self.config = config
        self.name = config.name
        self.spec = worker_spec(config)
        self._channel = channel
        self._run_dir = run_dir
        self._run_id = run_id
        self._new_id = new_id
        self._on_worker_exit = on_worker_exit
        self._start_slots = start_slots
        self.workers: dict[int, Worker] = {}
        self.queue = WaitQueue(config.queue_size, config.name)
        self.tools: dict[str, dict[str, Any]] = {}
        self.closing = False
        self._replacing: set[asyncio.Task[None]] = set()

    def _make_worker(self) -> Worker:
        return Worker(self._new_id(), self.config, self.spec, self._channel, self._run_dir,
                      self._run_id, self._on_worker_exit)

    async def _start_one(self, worker: Worker) -> None:
        async with self._start_slots:
            await worker.start()

    async def start(self) -> None:
        """Start every worker concurrently; on any failure stop them all and raise StartError."""
        workers = [self._make_worker() for _ in range(self.config.workers)]
        for w in workers:
            self.workers[w.id] = w
        results = await asyncio.gather(*(self._start_one(w) for w in workers),
                                       return_exceptions=True)
        errors = [r for r in results if isinstance(r, BaseException)]
        if errors:
            await self.stop()
            first = errors[0]
            if isinstance(first, StartError):
                more = f"\n({len(errors) - 1} other worker(s) failed too)" if len(errors) > 1 else ""
                raise StartError(f"{first}{more}") from None
            raise StartError(f"pool '{self.name}' failed to start: {type(first).__name__}: {first}") from first
        self.tools = {t["name"]: t for t in workers[0].tools}

    def submit(self, call: Call) -> int | None:
        """Start ``call`` on a free worker, or queue it; returns the queue position or None."""
        worker = pick(self.workers.values(), call)
        if worker is not None:
            worker.begin(call)
            return None
        return self.queue.push(call)

    def pump(self, worker: Worker) -> None:
        """Give ``worker`` as many waiting calls as it can take."""
        while worker.serving:
            call = self.queue.take_for(worker)
            if call is None:
                return
            worker.begin(call)

    def remove(self, worker: Worker) -> None:
        self.workers.pop(worker.id, None)
        if not self.closing:
            task = asyncio.ensure_future(self._replace())
            self._replacing.add(task)
            task.add_done_callback(self._replacing.discard)

    async def _replace(self, attempts: int = 5) -> None:
        delay = 0.5
        for attempt in range(1, attempts + 1):
            worker = self._make_worker()
            self.workers[worker.id] = worker
            try:
                await self._start_one(worker)
            except Exception as exc:  # noqa: BLE001
                self.workers.pop(worker.id, None)
                with contextlib.suppress(Exception):
                    await worker.stop()
                if self.closing:
                    return
                log.warning("pool '%s': replacement worker failed to start (attempt %d/%d): %s",
                            self.name, attempt, attempts, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10)
                continue
            if self.closing:
                await worker.stop()
                self.workers.pop(worker.id, None)
                return
            self.pump(worker)
            return

    async def stop(self) -> None:
        self.closing = True
        for task in list(self._replacing):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())),
                             return_exceptions=True)
        self.workers.clear()
