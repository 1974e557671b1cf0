"""The pool manager: run id, call channel, named pools, sessions and the calls in flight."""

from __future__ import annotations

import asyncio
import contextlib
import difflib
import itertools
import logging
import os
import shutil
import time
import uuid
from pathlib import Path
from typing import Any, AsyncIterator, Callable

from jupyter_client.kernelspec import KernelSpec

from .. import events as ev
from ..config import DEFAULT_TENANT, PoolConfig, SchedulerConfig
from ..exceptions import (Cancelled, DeadlineExceeded, InvalidArguments, PoolClosed, PoolNotFound,
                          SessionLost, ToolNotFound, ToolTainted, WorkerCrashed, WorkerNotFound)
from ..info import SessionInfo, TenantLoad, ToolInfo, WorkerInfo
from ..kernels.schema import check_arguments, check_columns
from .call import Call, CallOptions
from .channel import Channel
from .dispatch import Tenants, tenant_of
from .group import WorkerGroup
from .kernel import prestart, release, reload_code
from . import leftovers, reaper, registry as run_registry
from .health import HealthMonitor
from .placement import Placement
from .sessions import SessionTable
from ..kernels import arena
from ..kernels.arrow import SHM_BASE, Transport, reclaim, shared_dir
from .crash import classify, counts_toward_taint, crash_message, should_retry
from .state import RECYCLING
from .worker import Worker
from ..telemetry import tracing
from ..telemetry.bus import TelemetryBus
from ..telemetry.events import outcome_of

log = logging.getLogger("kernelpit")

# Recycle reasons that do not wait for the worker's sessions to close (their state is lost).
HARD_RECYCLE = frozenset({"memory", "manual", "unhealthy", "reload"})


def shared_memory_dir(run_id: str) -> str | None:
    """A private directory on tmpfs for by-reference values of this run (None: none usable)."""
    if not (os.path.isdir(SHM_BASE) and os.access(SHM_BASE, os.W_OK)):
        return None
    path = shared_dir(run_id)
    os.makedirs(path, mode=0o700, exist_ok=True)
    leftovers.mark_shared_dir(path)
    return path


class PoolManager:
    """Owns every worker of every named pool, and every call from submit to last event."""

    def __init__(self, configs: list[PoolConfig], scheduler: SchedulerConfig | None = None,
                 ray_address: str | None = None, passes_on: bool = False) -> None:
        """``passes_on``: the bridge's pool, which passes results on as they came: their
        lists of numbers stay ``PackedList`` (their Python objects are never built) and
        their large byte strings stay in shared memory (read-only views of a
        :class:`~kernelpit.kernels.shared_bytes.SharedBytes` mapping)."""
        names = [c.name for c in configs]
        if len(set(names)) != len(names):
            raise ValueError(f"pool names must be unique, got {names}")
        self.configs = configs
        self._passes_on = passes_on
        #: how tenants share every pool (weights, quotas; docs/architecture.md "The scheduler")
        self.tenants = Tenants(scheduler)
        self.run_id = uuid.uuid4().hex[:12]
        self.groups: dict[str, WorkerGroup] = {}
        self.sessions = SessionTable()
        self.calls: dict[int, Call] = {}
        self._ids = itertools.count(1)
        self._channel: Channel | None = None
        self._run_dir: Path | None = None
        self.shm_dir: str | None = None
        #: how large values travel between this process and the workers (its shm_dir, caps)
        self.transport: Transport | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._zygotes: list[asyncio.Future[KernelSpec | None]] = []  # prestart(), per pool
        self._health: HealthMonitor | None = None
        self.closed = False
        self.started = False
        #: lifecycle events (docs/observability.md): metrics, subscribe(), the job runner
        self.telemetry = TelemetryBus()
        self._quarantined: set[tuple[str, str]] = set()  # (pool, tool) awaiting tool.untainted
        #: the Ray cluster to join when a pool is Ray-placed (one per process; "auto" if None)
        self.ray_address = ray_address
        self.placement: Placement | None = None

    @property
    def run_dir(self) -> Path | None:
        """The run's private (0700) directory: the call channel's socket, the bridge's."""
        return self._run_dir

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        # -- orphan-proof process management: record this run, end what dead runs left --
        registry = run_registry.open_run(self.run_id)
        self._run_dir = leftovers.make_run_dir(self.run_id)  # ours: live, the reaper keeps it
        # forking pools' zygotes start first: their preload is the longest part of a start
        self._zygotes = [asyncio.ensure_future(prestart(cfg, self._run_dir, self.run_id))
                         for cfg in self.configs if cfg.forks]
        reaped = await asyncio.to_thread(reaper.reap_on_start, registry)
        if reaped is not None and reaped.orphans:
            self.telemetry.publish("orphans.reaped", kernels=len(reaped.orphans),
                                   runs=len({o.run_id for o in reaped.orphans}),
                                   files=len(reaped.removed_files))
        self.shm_dir = shared_memory_dir(self.run_id)
        self.transport = Transport(self.shm_dir, allow_pickle=any(c.pickle for c in self.configs),
                                   arena_cap=max(int(c.shm_arena) for c in self.configs),
                                   passes_on=self._passes_on)
        self._channel = await Channel.open(self._run_dir, self._on_message, self.transport)
        slots = asyncio.Semaphore(8)
        try:
            # joins Ray (RayUnavailable names the address) and opens the signed TCP listener
            self.placement = await Placement.prepare(self.configs, self.ray_address,
                                                     self._channel, self.shm_dir)
            for cfg in self.configs:
                self.groups[cfg.name] = WorkerGroup(cfg, self._channel, self._run_dir,
                                                    self.run_id, lambda: next(self._ids),
                                                    self._on_worker_exit, slots, self.shm_dir,
                                                    self.telemetry, self.tenants,
                                                    self.placement, self._passes_on)
            await asyncio.gather(*(g.start() for g in self.groups.values()))
        except BaseException:
            await self.close()
            raise
        self._reaper = asyncio.ensure_future(self._reap_sessions())
        self._health = HealthMonitor(self._all_workers, self._recycle, self._mark_unhealthy,
                                     min(c.health_interval for c in self.configs))
        self._health.start()
        self.started = True

    async def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        if self._health is not None:
            self._health.stop()
        for call in list(self.calls.values()):
            call.fail(PoolClosed("the pool was closed while this call was running"))
        for group in self.groups.values():
            group.queue.close()
        await asyncio.gather(*(g.stop() for g in self.groups.values()), return_exceptions=True)
        # a zygote started before its group existed (the start failed in between)
        specs = await asyncio.gather(*self._zygotes, return_exceptions=True)
        await asyncio.gather(*(release(s) for s in specs if isinstance(s, KernelSpec)),
                             return_exceptions=True)
        run_registry.close_run(self.run_id)  # orphan registry: this run's kernels are gone
        if self._channel is not None:
            self._channel.close()
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
        if self.shm_dir is not None:
            arena.forget(self.shm_dir)  # our mappings of its slabs would keep their pages
            leftovers.remove_shared_dir(self.shm_dir)
        self.telemetry.close()  # (a closed pool's gauges leave the metrics by themselves)

    # -- messages from workers -------------------------------------------------------------
    def _on_message(self, worker_id: int, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "ev":
            call = self.calls.get(msg.get("id"))  # type: ignore[arg-type]
            if call is not None and call.on_worker_event(msg):
                self._finished(call)
            return
        if op == "ahead":
            call = self.calls.get(msg["id"])
            if call is not None:
                call.on_ahead(msg)
            return
        worker = self._worker(worker_id)
        if worker is not None:
            worker.on_message(msg)

    def _finished(self, call: Call) -> None:
        self.calls.pop(call.id, None)
        if call.shared:
            call.reclaim()
        worker = call.worker
        if worker is None:
            return
        group = self.groups[worker.config.name]
        group.ended(worker, call)
        if worker.state is RECYCLING:
            if not worker.inflight:
                group.retire_soon(worker)
            return
        cfg = worker.config
        if cfg.max_calls and worker.calls >= cfg.max_calls:
            self._recycle(worker, "max_calls")
        elif (cfg.max_memory and worker.sample(max_age=0.05) > cfg.max_memory
              and self._health is not None):
            self._health.check_memory(worker)  # recycled if still over once it gives back
        group.pump(worker)

    def _all_workers(self) -> list[Worker]:
        return [w for g in self.groups.values() for w in g.workers.values()]

    def _recycle(self, worker: Worker, reason: str) -> None:
        """Replace ``worker`` without downtime (see WorkerGroup.recycle)."""
        if self.closed or worker.recycle_pending or not worker.serving:
            return
        if reason not in HARD_RECYCLE and worker.sessions:
            return  # ttl / max_calls wait until the sessions it holds are closed
        worker.request_recycle(reason)
        group = self.groups[worker.config.name]

        def switch() -> None:
            for session in self.sessions.on_worker(worker.id):
                session.lost = f"worker {worker.id} holding it was recycled ({reason})"
            for call in group.queue.drop_pinned(worker.id):
                call.fail(SessionLost(f"session '{call.options.session}' is lost: worker "
                                      f"{worker.id} holding it was recycled ({reason})",
                                      tool=call.tool) if call.options.session else
                          WorkerNotFound(f"worker {worker.id} was recycled ({reason}) before "
                                         f"running {call.describe()}", tool=call.tool))

        group.recycle(worker, reason, switch)

    def _mark_unhealthy(self, worker: Worker, why: str) -> None:
        """A worker that stopped answering: fail its calls now, kill it (its sessions are lost
        when it exits)."""
        if not worker.mark_unhealthy():
            return
        log.warning("worker %d of pool '%s' %s; replacing it", worker.id, worker.config.name, why)
        self.telemetry.publish("worker.unhealthy", worker.config.name, worker.id, why=why)
        worker.note_kill("unhealthy")
        activity = worker.activity()
        self._lose_calls(worker, False, lambda call: WorkerCrashed(
            f"worker {worker.id} {why} {activity}; it was killed and replaced", tool=call.tool,
            call_id=call.id, worker=worker.id))
        asyncio.ensure_future(worker.kill("unhealthy"))

    def _on_worker_exit(self, worker: Worker) -> None:
        """A worker process ended by itself (or by our kill): the crash barrier."""
        death = worker.death or classify(worker.returncode, worker.rss, None)
        how = death.describe()
        group = self.groups[worker.config.name]
        reclaim(self.shm_dir, f"w{worker.id}")  # values it wrote that nobody received
        if self.telemetry.active:
            self.telemetry.publish(
                "worker.crashed", group.name, worker.id,
                reason=(worker.killed_by or death.reason).replace(" ", "_"),
                exit_code=death.returncode, signal=death.signal, rss=death.rss,
                calls_lost=len(worker.inflight))

        def crashed(call: Call) -> WorkerCrashed:
            message = crash_message(worker.id, death, f"while running {call.describe()}")
            if call.cancel_sent:
                message += "; it was restarted because the cancelled tool did not stop"
            return WorkerCrashed(message, exit_code=death.returncode, signal=death.signal,
                                 reason=death.reason, tool=call.tool, call_id=call.id,
                                 worker=worker.id)

        self._lose_calls(worker, counts_toward_taint(death, worker.killed_by_pool), crashed)
        for session in self.sessions.on_worker(worker.id):
            session.lost = f"worker {worker.id} holding it {how}"
        for call in group.queue.drop_pinned(worker.id):
            exc = (SessionLost(f"session '{call.options.session}' is lost: worker {worker.id} "
                               f"holding it {how}; its state is gone", tool=call.tool)
                   if call.options.session else
                   WorkerCrashed(f"worker {worker.id} {how} before running {call.describe()}",
                                 exit_code=worker.returncode, reason=death.reason, tool=call.tool,
                                 worker=worker.id))
            call.fail(exc)
        if worker.state_at_death is not RECYCLING:
            log.warning("worker %d of pool '%s' %s; starting a replacement", worker.id,
                        group.name, how)
        group.remove(worker)

    def _lose_calls(self, worker: Worker, taints: bool,
                    error: Callable[[Call], BaseException]) -> None:
        """The one way a lost worker's (unhealthy or dead) in-flight calls end: each is
        forgotten and its shared-memory arguments reclaimed, counted against its tool when the
        loss ``taints``, then resubmitted elsewhere if it may be retried, else failed with
        ``error(call)``."""
        group = self.groups[worker.config.name]
        calls = worker.take_inflight()
        group.lost(worker, calls)
        for call in calls:
            self.calls.pop(call.id, None)
            if call.shared:
                call.reclaim()
            if taints and group.taints.record(call.tool):
                log.warning("pool '%s': tool %s() crashed %d workers within %g s; it is "
                            "quarantined for %g s", group.name, call.tool,
                            group.taints.count(call.tool), group.taints.window, group.taints.period)
                self._tainted(group, call.tool)
            if not self._retry(group, call):
                call.fail(error(call))

    def _retry(self, group: WorkerGroup, call: Call) -> bool:
        """Resubmit an idempotent call whose worker was lost; False when it may not be retried."""
        cfg = group.config
        if call.done or self.closed or not should_retry(call.idempotent, call.pinned is not None,
                                                        call.attempts, cfg.retries):
            return False
        call.attempts += 1
        call.worker = None
        call.cancel_sent = False
        if call.shared:  # the lost worker consumed (or never read) its files: write them anew
            call.frames = call._encode()
        self.calls[call.id] = call
        delay = cfg.retry_backoff * 2 ** (call.attempts - 1)
        log.info("retrying idempotent %s (attempt %d of %d) in %.2f s", call.describe(),
                 call.attempts, cfg.retries, delay)
        asyncio.get_running_loop().call_later(delay, self._resubmit, group, call)
        return True

    def _resubmit(self, group: WorkerGroup, call: Call) -> None:
        if call.done:
            self.calls.pop(call.id, None)
            return
        try:
            self._check_taint(group, call.tool)
            position = group.submit(call)
        except Exception as exc:  # noqa: BLE001 - QueueFull, ToolTainted
            self.calls.pop(call.id, None)
            call.fail(exc)
            return
        if position is not None:
            call.emit(ev.Queued(position=position))

    @staticmethod
    def _check_taint(group: WorkerGroup, tool: str) -> None:
        left = group.taints.tainted(tool)
        if left is not None:
            until = time.time() + left
            raise ToolTainted(
                f"tool {tool}() crashed {group.taints.count(tool)} workers of pool "
                f"'{group.name}' within {group.taints.window:g} s (segfault, abort, OOM kill or "
                f"exit while running it), so it is quarantined instead of taking more workers "
                f"down; the quarantine lifts in {left:.0f} s, at "
                f"{time.strftime('%H:%M:%S', time.localtime(until))}. Fix the tool, then lift it "
                f"now with pool.untaint({tool!r}) or `kernelpit untaint {tool}`",
                tool=tool, until=until)

    def untaint(self, tool: str, pool: str | None = None) -> bool:
        """Lift ``tool``'s quarantine now (in ``pool``, or every pool serving it) and forget
        its crashes; True when a quarantine was lifted.  Raises ToolNotFound for a tool that
        no pool (or not ``pool``) serves, PoolNotFound for an unknown pool."""
        groups = [self._pool(pool)] if pool is not None else list(self.groups.values())
        serving = [g for g in groups if tool in g.tools]
        if not serving:
            if pool is not None:
                raise ToolNotFound(f"pool '{pool}' has no tool named '{tool}'", tool=tool)
            self._group_for(tool, CallOptions())  # raises ToolNotFound with suggestions
        lifted = [g.taints.untaint(tool) for g in serving]
        if any(lifted):
            log.warning("tool %s() was taken out of quarantine by hand", tool)
        for group, was in zip(serving, lifted):
            if was:
                self._quarantined.discard((group.name, tool))
                self.telemetry.publish("tool.untainted", group.name, tool=tool, by="hand")
        return any(lifted)

    def _tainted(self, group: WorkerGroup, tool: str) -> None:
        """``tool`` was just quarantined: say so, and say so again when it lifts by itself."""
        self._quarantined.add((group.name, tool))
        period = group.taints.period
        self.telemetry.publish("tool.tainted", group.name, tool=tool,
                               crashes=group.taints.count(tool), period=period,
                               until=time.time() + period)
        asyncio.get_running_loop().call_later(period, self._taint_expiry, group, tool)

    def _taint_expiry(self, group: WorkerGroup, tool: str) -> None:
        if (group.name, tool) not in self._quarantined or self.closed:
            return  # lifted by hand meanwhile
        left = group.taints.tainted(tool)
        if left is not None:  # the timer ran a little early
            asyncio.get_running_loop().call_later(left, self._taint_expiry, group, tool)
            return
        self._quarantined.discard((group.name, tool))
        self.telemetry.publish("tool.untainted", group.name, tool=tool, by="expiry")

    # -- calls ---------------------------------------------------------------------
    def _worker(self, worker_id: int) -> Worker | None:
        for group in self.groups.values():
            w = group.workers.get(worker_id)
            if w is not None:
                return w
        return None

    def _pool(self, name: str) -> WorkerGroup:
        """The named pool; PoolNotFound (listing the pools) when there is none of that name."""
        try:
            return self.groups[name]
        except KeyError:
            close = difflib.get_close_matches(name, list(self.groups), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise PoolNotFound(f"no pool named '{name}'{hint} (pools: "
                               f"{', '.join(self.groups) or 'none'})") from None

    def group_for(self, tool: str, options: CallOptions) -> WorkerGroup:
        """The named pool a call of ``tool`` with ``options`` goes to (ToolNotFound, naming
        close matches, when none serves it); the job layer checks submissions with it."""
        return self._group_for(tool, options)

    def _group_for(self, tool: str, options: CallOptions) -> WorkerGroup:
        if options.pool is not None:
            return self._pool(options.pool)
        for group in self.groups.values():
            if tool in group.tools:
                return group
        known = sorted({t for g in self.groups.values() for t in g.tools})
        close = difflib.get_close_matches(tool, known, n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        listing = ", ".join(known) if len(known) <= 20 else f"{len(known)} tools, see pool.tools()"
        raise ToolNotFound(f"no tool named '{tool}'{hint} (available: {listing or 'none'})",
                           tool=tool)

    def _prepare(self, tool: str, args: tuple[Any, ...] | list[Any], kwargs: dict[str, Any],
                 options: CallOptions, streaming: bool) -> tuple[WorkerGroup, Call]:
        if self.closed or not self.started:
            raise PoolClosed("the pool is closed" if self.closed else "the pool is not started")
        if not isinstance(tool, str):
            raise InvalidArguments(f"the tool name must be a str, got {type(tool).__name__}")
        session = None
        if options.session is not None:
            session = self.sessions.use(options.session)
            options = options.merged(pool=session.pool)
        group = self._group_for(tool, options)
        desc = group.tools.get(tool)
        if desc is None:
            close = difflib.get_close_matches(tool, list(group.tools), n=3)
            hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
            raise ToolNotFound(f"pool '{group.name}' has no tool named '{tool}'{hint}", tool=tool)
        problem = check_arguments(tool, desc["params"], args, kwargs)
        if problem:
            raise InvalidArguments(problem, tool=tool)
        self._check_taint(group, tool)
        idempotent = desc.get("idempotent") if options.idempotent is None else options.idempotent
        call = Call(tool, list(args), dict(kwargs), options, streaming=streaming,
                    transport=group.transport,
                    thread_safe=bool(desc.get("thread_safe")), idempotent=bool(idempotent),
                    trace=tracing.carrier())
        if session is not None:
            call.pinned = session.worker
        elif options.worker is not None:
            if options.worker not in group.workers:
                raise WorkerNotFound(f"pool '{group.name}' has no worker {options.worker} "
                                     f"(workers: {', '.join(map(str, group.workers))})", tool=tool)
            call.pinned = options.worker
        return group, call

    def _submit(self, group: WorkerGroup, call: Call) -> None:
        if self.telemetry.active:
            call.observer = self._call_ended
            tenant = tenant_of(call)
            self.telemetry.publish("call.queued", group.name, None, call.tool, call.id,
                                   waiting=len(group.queue), tenant=tenant,
                                   tenant_waiting=group.queue.waiting.get(tenant, 0),
                                   **({"items": len(call.columns[0])} if call.columns else {}))
            try:
                position = group.submit(call)
            except Exception as exc:  # QueueFull: this accepted call ends here, rejected
                call.fail(exc)
                raise
        else:
            position = group.submit(call)
        self.calls[call.id] = call
        call.set_deadline(self._expired)
        if position is not None:
            call.emit(ev.Queued(position=position))

    def _expired(self, call: Call) -> None:
        self.cancel(call, DeadlineExceeded(
            f"{call.describe()} did not finish within its deadline of {call.options.deadline:g} s; "
            "it was interrupted", tool=call.tool, call_id=call.id,
            worker=call.worker.id if call.worker else None))

    def cancel(self, call: Call, exc: BaseException | None = None) -> None:
        """Fail ``call`` now and stop it: dequeue it, or interrupt the tool in its worker."""
        if exc is None:
            exc = Cancelled(f"{call.describe()} was cancelled", tool=call.tool, call_id=call.id)
        worker = call.worker
        if worker is None:
            for group in self.groups.values():
                if group.queue.remove(call):
                    break
            self.calls.pop(call.id, None)
            call.fail(exc)
            return
        call.fail(exc)
        if call.id in worker.inflight and not call.cancel_sent:
            worker.cancel(call)
            grace = worker.config.cancel_grace
            asyncio.get_running_loop().call_later(grace, self._check_stopped, call, worker)

    def _check_stopped(self, call: Call, worker: Worker) -> None:
        if call.id in worker.inflight and worker.serving:
            log.warning("worker %d: %s did not stop within %g s of being cancelled; restarting it",
                        worker.id, call.describe(), worker.config.cancel_grace)
            asyncio.ensure_future(worker.kill("cancel grace"))

    def _call_ended(self, call: Call, exc: BaseException | None) -> None:
        """A call accepted while telemetry was on has ended (Call.finish / Call.fail)."""
        now = time.monotonic()
        started = call.started
        worker = call.worker
        self.telemetry.publish(
            "call.finished", worker.config.name if worker is not None else
            self._pool_of(call.tool, call.options), worker.id if worker is not None else None,
            call.tool, call.id, outcome=outcome_of(exc), tenant=tenant_of(call),
            queue_wait=(started if started is not None else now) - call.submitted,
            run_time=None if started is None else now - started,
            **({} if exc is None else {"error": type(exc).__name__}))

    def _pool_of(self, tool: str, options: CallOptions) -> str:
        """The pool a call of ``tool`` goes to, or "" when none serves it."""
        if options.pool is not None:
            return options.pool if options.pool in self.groups else ""
        for group in self.groups.values():
            if tool in group.tools:
                return group.name
        return ""

    def _rejected(self, tool: Any, options: CallOptions, exc: BaseException) -> None:
        """A call refused before it was accepted (arguments, queue full, not found, tainted):
        ``call.finished`` with outcome ``rejected`` (``tool`` only when it is a registered
        tool's name, so that no label takes arbitrary values)."""
        pool = self._pool_of(tool, options) if isinstance(tool, str) else ""
        known = pool and tool in self.groups[pool].tools
        self.telemetry.publish("call.finished", pool, None, tool if known else "", None,
                               outcome="rejected", queue_wait=0.0, run_time=None,
                               tenant=options.tenant or DEFAULT_TENANT,
                               error=type(exc).__name__)

    def begin(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions,
              streaming: bool = False) -> Call:
        """Accept a call of ``tool`` and queue or start it; its outcome is ``call.future``
        (:meth:`cancel` stops it), and with ``streaming`` its events are ``call.events``.
        Raises at once when the call is refused."""
        try:
            group, call = self._prepare(tool, args, kwargs, options, streaming=streaming)
        except Exception as exc:
            if self.telemetry.active:
                self._rejected(tool, options, exc)
            raise
        self._submit(group, call)
        return call

    async def call(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions) -> Any:
        call = self.begin(tool, args, kwargs, options)
        try:
            # Not shielded: a cancelled caller cancels call.future too, and then self.cancel
            # stops the call (a shield would cost one more event-loop pass per call).
            return await call.future
        except asyncio.CancelledError:
            self.cancel(call)
            raise

    async def stream(self, tool: str, args: Any, kwargs: dict[str, Any],
                     options: CallOptions) -> AsyncIterator[ev.Event]:
        call = self.begin(tool, args, kwargs, options, streaming=True)
        assert call.events is not None
        try:
            while True:
                event = await call.events.get()
                last = isinstance(event, (ev.Result, ev.Error))
                yield event
                # Not kept while the next is awaited: a cancellation's traceback would hold
                # this frame, and so the value (a mapped 1 GB table), until a full collection.
                del event
                if last:
                    return
        finally:
            if not call.done:
                self.cancel(call)
            call.events = None  # nobody reads what is still queued: let it go now

    async def map(self, tool: str, columns: list[list[Any]], options: CallOptions,
                  chunksize: int | None = None) -> list[Any]:
        """Run ``tool(*row)`` for every row of the argument ``columns`` (column i holds the
        i-th argument of every call; all of one length), in chunks of ``chunksize`` rows per
        worker message.

        Results come back in row order; the first failing row's exception is raised (with
        ``.map_index`` set) once every chunk has finished.
        """
        n = len(columns[0]) if columns else 0
        if n == 0:
            return []
        try:
            group, first = self._prepare(tool, [c[0] for c in columns], {}, options,
                                         streaming=False)
        except Exception as exc:
            if self.telemetry.active:
                self._rejected(tool, options, exc)
            if isinstance(exc, InvalidArguments):
                raise InvalidArguments(f"item 0: {exc.message}", tool=tool) from None
            raise
        first.reclaim()  # only its options and flags are used; its request is never sent
        desc = group.tools[tool]
        if desc.get("streaming"):
            raise InvalidArguments(f"map() needs a tool that returns a value; {tool}() is a "
                                   "generator, use stream() for it", tool=tool)
        bad = check_columns(tool, desc["params"], columns)
        if bad is not None:
            exc = InvalidArguments(f"item {bad[0]}: {bad[1]}", tool=tool)
            if self.telemetry.active:
                self._rejected(tool, options, exc)
            raise exc
        if chunksize is None:
            slots = max(1, sum(w.config.concurrency for w in group.workers.values()))
            chunksize = max(1, min(2000, -(-n // (slots * 4))))
        elif chunksize < 1:
            raise ValueError(f"chunksize must be >= 1, got {chunksize}")
        chunks = []
        for start in range(0, n, chunksize):
            call = Call(tool, [], {}, first.options, thread_safe=first.thread_safe,
                        transport=group.transport, idempotent=first.idempotent,
                        columns=[c[start:start + chunksize] for c in columns], trace=first.trace)
            call.pinned = first.pinned
            chunks.append((start, call))
        try:
            for _, call in chunks:
                self._submit(group, call)
        except BaseException:
            for _, call in chunks:
                self.cancel(call)
            raise
        try:
            outcomes = await asyncio.gather(*(asyncio.shield(c.future) for _, c in chunks),
                                            return_exceptions=True)
        except asyncio.CancelledError:
            for _, call in chunks:
                self.cancel(call)
            raise
        results: list[Any] = []
        for (start, _), outcome in zip(chunks, outcomes):
            if isinstance(outcome, BaseException):
                outcome.map_index = start + (getattr(outcome, "map_index", None) or 0)  # type: ignore[attr-defined]
                raise outcome
            results.extend(outcome)
        return results

    # -- sessions --------------------------------------------------------------------
    async def open_session(self, pool: str | None, ttl: float | None, metadata: dict[str, str],
                           session_id: str | None = None, deadline: float | None = None,
                           tenant: str | None = None) -> SessionInfo:
        """Open a session for ``tenant`` on the least-loaded serving worker.  When none serves
        (all starting or being replaced), wait for one the way a call waits: in the pool's wait
        queue (its bound applies: QueueFull), until ``deadline`` seconds (DeadlineExceeded).
        Past the tenant's quota_sessions in that pool it fails with QueueFull."""
        if self.closed or not self.started:
            raise PoolClosed("the pool is closed" if self.closed else "the pool is not started")
        group = self._pool(pool) if pool is not None else next(iter(self.groups.values()))
        tenant = tenant or DEFAULT_TENANT
        self._check_sessions(group, tenant)
        loop = asyncio.get_running_loop()
        end = None if deadline is None else loop.time() + deadline
        while True:
            ready = [w for w in group.workers.values() if w.serving]
            if ready:
                break
            wake = group.queue.wait_for_worker()
            try:
                await asyncio.wait_for(wake, None if end is None else max(0.0, end - loop.time()))
            except asyncio.TimeoutError:
                raise DeadlineExceeded(
                    f"no worker of pool '{group.name}' became ready to hold a session within the "
                    f"deadline of {deadline:g} s; its workers are starting or being replaced "
                    "(see pool.workers())") from None
            finally:
                group.queue.stop_waiting(wake)
        self._check_sessions(group, tenant)  # again: others may have opened some meanwhile
        worker = min(ready, key=lambda w: (w.sessions, len(w.inflight), w.calls))
        session = self.sessions.open(group.name, worker.id, ttl, metadata, session_id, tenant)
        worker.sessions += 1
        self.telemetry.publish("session.opened", group.name, worker.id, session=session.id)
        return session.info()

    def _check_sessions(self, group: WorkerGroup, tenant: str) -> None:
        limit = self.tenants(tenant).quota_sessions
        if limit is not None:
            held = self.sessions.held(group.name, tenant)
            if held >= limit:
                raise self.tenants.refusal("quota_sessions", tenant, limit, group.name,
                                           f"{held} session(s) open")

    def tenant_loads(self) -> list[TenantLoad]:
        """Each tenant's calls waiting and running, per pool (tenants with none left out)."""
        return [TenantLoad(name, tenant, waiting, running)
                for name, group in self.groups.items()
                for tenant, (waiting, running) in sorted(group.queue.loads().items())]

    async def close_session(self, session_id: str, reason: str = "closed") -> SessionInfo:
        """Close a session (``reason``: "closed", or "expired" by its ttl)."""
        session = self.sessions.close(session_id)
        self.telemetry.publish("session.closed", session.pool, session.worker,
                               session=session.id, reason=reason,
                               **({"lost": session.lost} if session.lost else {}))
        worker = self._worker(session.worker)
        if worker is not None:
            worker.sessions = max(0, worker.sessions - 1)
            self._channel.send(worker.id, {"op": "forget", "session": session_id})  # type: ignore[union-attr]
        return session.info()

    def get_session(self, session_id: str) -> SessionInfo:
        return self.sessions.get(session_id).info()

    def list_sessions(self) -> list[SessionInfo]:
        return [s.info() for s in self.sessions]

    async def _reap_sessions(self) -> None:
        while True:
            await asyncio.sleep(0.5)
            for session in self.sessions.expired(time.time()):
                with contextlib.suppress(Exception):
                    await self.close_session(session.id, "expired")

    # -- introspection and control ------------------------------------------------------
    def tools(self, pool: str | None = None) -> list[ToolInfo]:
        out = []
        for group in [self._pool(pool)] if pool is not None else self.groups.values():
            for t in group.tools.values():
                out.append(ToolInfo(name=t["name"], doc=t.get("doc", ""),
                                    signature=t.get("signature", ""), parameters=t["schema"],
                                    pool=group.name, module=t.get("module", ""),
                                    thread_safe=t.get("thread_safe", False),
                                    idempotent=t.get("idempotent", False),
                                    streaming=t.get("streaming", False)))
        return out

    def workers(self) -> list[WorkerInfo]:
        return [w.info(self._countdown(w)) for w in self._all_workers()]

    @staticmethod
    def _countdown(w: Worker) -> dict[str, float]:
        """How far each configured recycle limit is: calls left, seconds left, bytes left."""
        cfg, left = w.config, {}
        if cfg.max_calls:
            left["calls"] = float(max(0, cfg.max_calls - w.calls))
        if cfg.max_age:
            left["seconds"] = max(0.0, cfg.max_age - (time.time() - w.started_at))
        if cfg.max_memory:
            left["bytes"] = float(max(0, cfg.max_memory - w.rss))
        return left

    def _require_worker(self, worker_id: int) -> Worker:
        worker = self._worker(worker_id)
        if worker is None:
            ids = ", ".join(str(w.id) for g in self.groups.values() for w in g.workers.values())
            raise WorkerNotFound(f"no worker {worker_id} (workers: {ids or 'none'})")
        return worker

    async def interrupt(self, worker_id: int) -> None:
        await self._require_worker(worker_id).interrupt()

    async def restart(self, worker_id: int) -> None:
        """Kill a worker now; the pool starts a fresh one in its place."""
        await self._require_worker(worker_id).kill("restart")

    async def reload(self, pool: str | None = None) -> int:
        """New code: the next workers start from it (a new zygote where they fork), and
        every serving worker is recycled onto it; returns how many."""
        groups = [self._pool(pool)] if pool is not None else list(self.groups.values())
        serving = [w for g in groups for w in g.workers.values()
                   if w.serving and not w.recycle_pending and not w.spare]
        for group in groups:
            await reload_code(group.spec)
            group.renew_spares()
        for worker in serving:
            self._recycle(worker, "reload")
        return len(serving)

    async def recycle(self, worker_id: int) -> None:
        """Replace a worker without downtime: a successor first, then it drains and stops."""
        worker = self._require_worker(worker_id)
        if not worker.serving:
            raise WorkerNotFound(f"worker {worker_id} is {worker.state}; only a serving worker "
                                 "can be recycled")
        self._recycle(worker, "manual")
