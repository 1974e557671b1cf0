"""A named pool: its workers, its wait queue, warm spares, recycling and replacement."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from pathlib import Path
from typing import Any, Callable

from ..config import PoolConfig
from ..exceptions import StartError
from .call import Call
from .channel import Channel
from ..kernels.arrow import Transport
from .crash import TaintTracker, start_failure_backs_off
from .dispatch import Tenants, WaitQueue, pick
from .kernel import release, worker_spec
from .placement import Placement, is_remote
from .worker import Worker
from ..telemetry.bus import TelemetryBus

log = logging.getLogger("kernelpit")


class WorkerGroup:
    """The workers of one :class:`PoolConfig`, kept at full size while the pool is open.

    Dead workers are replaced (a warm spare is promoted at once when there is
    one); recycled workers are replaced *before* they stop taking work, then
    drain their in-flight calls and stop.
    """

    def __init__(self, config: PoolConfig, channel: Channel, run_dir: Path, run_id: str,
                 new_id: Callable[[], int], on_worker_exit: Callable[[Worker], None],
                 start_slots: asyncio.Semaphore, shm_dir: str | None = None,
                 telemetry: TelemetryBus | None = None, tenants: Tenants | None = None,
                 placement: Placement | None = None, passes_on: bool = False) -> None:
        """``passes_on``: the pool's results are passed on (a bridge's pool): they stay as
        they came (``Transport.passes_on``)."""
        self.config = config
        self.telemetry = telemetry or TelemetryBus()
        # arguments of a pool whose workers may be on other nodes never go by shared memory:
        # they are encoded before a worker is picked (large ones travel in signed parts)
        remote = placement is not None and is_remote(config)
        self.transport = Transport(None if remote else shm_dir, int(config.shm_threshold),
                                   "host", config.pickle, arena_cap=int(config.shm_arena),
                                   passes_on=passes_on)
        self.name = config.name
        self.spec = worker_spec(config, run_dir, placement)
        self._channel = channel
        self._run_dir = run_dir
        self._run_id = run_id
        self._new_id = new_id
        self._on_worker_exit = on_worker_exit
        self._start_slots = start_slots
        self.workers: dict[int, Worker] = {}
        self.queue = WaitQueue(config.queue_size, config.name, tenants)
        self.tools: dict[str, dict[str, Any]] = {}
        self.taints = TaintTracker(config.taint_threshold, config.taint_window,
                                   config.taint_period)
        self.closing = False
        self._tasks: set[asyncio.Task[Any]] = set()
        # Refills, counted: starts that failed and delayed the next attempt (a real problem:
        # import error, exit, timeout), and starts killed from outside, retried at once.
        self.start_backoffs = 0
        self.starts_killed = 0

    # -- starting workers --------------------------------------------------------------------
    def _make_worker(self, spare: bool = False) -> Worker:
        worker = Worker(self._new_id(), self.config, self.spec, self._channel, self._run_dir,
                        self._run_id, self._on_worker_exit, self.transport, spare,
                        self.telemetry)
        self.telemetry.publish("worker.starting", self.name, worker.id, spare=spare)
        return worker

    async def _start_one(self, worker: Worker) -> None:
        async with self._start_slots:
            await worker.start()
        self.telemetry.publish("worker.ready", self.name, worker.id, spare=worker.spare,
                               seconds=time.time() - worker.started_at)

    def _spawn(self, coro: Any) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

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
        for _ in range(self.config.spares):
            self._spawn(self._add_spare())

    async def _start_worker(self, spare: bool = False) -> Worker | None:
        """Start a worker, retrying until one is ready; None when the pool closes first.

        A start that fails by itself (import error, exit, timeout) delays the next attempt,
        0.5 s doubling to 30 s; a kernel killed from outside while it starts is replaced at
        once (``start_failure_backs_off``), so kills cannot push the refill into backoff.
        """
        delay, failures = 0.5, 0
        while not self.closing:
            worker = self._make_worker(spare)
            self.workers[worker.id] = worker
            try:
                await self._start_one(worker)
            except Exception as exc:  # noqa: BLE001
                self.workers.pop(worker.id, None)
                death, by_pool = worker.death, worker.killed_by_pool
                with contextlib.suppress(Exception):
                    await worker.stop()
                if not start_failure_backs_off(death, by_pool):
                    self.starts_killed += 1
                    log.info("pool '%s': worker %d %s while starting; starting another at once",
                             self.name, worker.id, death.describe() if death else "ended")
                    continue
                failures += 1
                self.start_backoffs += 1
                log.warning("pool '%s': a new worker failed to start (%d in a row; retrying in "
                            "%.1f s): %s", self.name, failures, delay, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 30.0)
                continue
            if self.closing:
                await worker.stop()
                self.workers.pop(worker.id, None)
                return None
            return worker
        return None

    async def _add_spare(self) -> None:
        await self._start_worker(spare=True)

    def _take_spare(self) -> Worker | None:
        for w in self.workers.values():
            if w.promote():
                self._spawn(self._add_spare())
                return w
        return None

    async def _successor(self, old: Worker, reason: str | None) -> Worker | None:
        """A ready worker to take ``old``'s place: a promoted spare, or a freshly started one."""
        new = self._take_spare()
        if new is None:
            new = await self._start_worker()
        if new is not None:  # a recycle counts in the slot's lineage; a crash replacement starts clean
            new.recycles = old.recycles + 1 if reason else old.recycles
            new.recycle_reason = reason
        return new

    # -- dispatch ----------------------------------------------------------------------------
    # Every call reaches a worker through submit (new calls, map chunks, retries) or pump
    # (the queue, in the scheduler's order): nothing bypasses the tenants' shares and quotas.
    def submit(self, call: Call) -> int | None:
        """Start ``call`` on a free worker, or queue it; returns its position among its
        tenant's waiting calls, or None when it started."""
        queue = self.queue
        if not queue.tenants.limits_running or queue.may_start(call):
            worker = pick(self.workers.values(), call)
            if worker is not None:
                queue.started(call)
                worker.begin(call)
                return None
        return queue.push(call)

    def pump(self, worker: Worker) -> None:
        """Give ``worker`` as many waiting calls as it can take."""
        queue = self.queue
        if queue.openers and worker.serving:
            queue.wake()
        while worker.serving:
            call = queue.take_for(worker)
            if call is None:
                return
            queue.started(call)
            worker.begin(call)

    def ended(self, worker: Worker, call: Call) -> None:
        """``call`` left ``worker``: its last event came (the caller then pumps ``worker``)."""
        if worker.inflight.get(call.id) is not call:
            return
        worker.end(call)
        queue = self.queue
        queue.ended(call)
        if queue.tenants.limits_running and len(queue):
            self._pump_others(worker)

    def lost(self, worker: Worker, calls: list[Call]) -> None:
        """``calls`` left ``worker`` (ended, or the worker was lost): count them out of their
        tenants' running calls.  A tenant below its running quota again may have waiting
        calls that other free workers can take: those are pumped."""
        queue = self.queue
        for call in calls:
            queue.ended(call)
        if queue.tenants.limits_running and len(queue):
            self._pump_others(worker)

    def _pump_others(self, worker: Worker) -> None:
        for other in list(self.workers.values()):
            if other is not worker:
                self.pump(other)

    # -- replacement and recycling -------------------------------------------------------------
    def remove(self, worker: Worker) -> None:
        """``worker`` died: take it out and put a successor in its place."""
        self.workers.pop(worker.id, None)
        if not self.closing:
            self._spawn(self._replace(worker))

    async def _replace(self, dead: Worker) -> None:
        new = await self._successor(dead, dead.replace_reason)
        if new is not None:
            self.pump(new)

    def recycle(self, old: Worker, reason: str, on_switch: Callable[[], None]) -> None:
        """Replace ``old`` without downtime: successor ready first, then ``old`` drains and stops."""
        self._spawn(self._recycle(old, reason, on_switch))

    async def _recycle(self, old: Worker, reason: str, on_switch: Callable[[], None]) -> None:
        new = await self._successor(old, reason)
        if new is None or not old.drain():  # closing, or ``old`` died or went unhealthy meanwhile
            if new is not None:
                self.pump(new)
            return
        log.info("pool '%s': recycling worker %d (%s); worker %d takes its place",
                 self.name, old.id, reason, new.id)
        self.telemetry.publish("worker.recycled", self.name, old.id, reason=reason,
                               successor=new.id, calls=old.calls)
        on_switch()
        self.pump(new)
        if not old.inflight:
            await self.retire(old)

    async def retire(self, worker: Worker) -> None:
        """Stop a drained (recycled) worker; its successor is already serving."""
        self.workers.pop(worker.id, None)
        await worker.stop()

    def renew_spares(self) -> None:
        """Replace the warm spares (started on code that changed since) with new ones."""
        for spare in [w for w in self.workers.values() if w.spare]:
            self.retire_soon(spare)
            self._spawn(self._add_spare())

    def retire_soon(self, worker: Worker) -> None:
        self._spawn(self.retire(worker))

    async def stop(self) -> None:
        self.closing = True
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*(w.stop() for w in list(self.workers.values())),
                             return_exceptions=True)
        self.workers.clear()
        await release(self.spec)
