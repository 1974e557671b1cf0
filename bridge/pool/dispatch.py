"""Choosing a worker for a call, and the scheduler of calls that wait for one.

The wait queue keeps one queue per tenant (:class:`_Backlog`: by priority, then arrival) and
chooses between tenants by weighted fair queuing, in the start-time fair queuing form with a
cost of one call: a tenant's next call carries a virtual start tag, ``max(clock, the tenant's
last finish)``; taking it moves the tenant's finish ``1 / weight`` further and the clock to
that start.  A free worker takes, among the calls it can run now, the one whose tenant has
the smallest tag.  So a tenant that starts waiting waits for about one call of each tenant
already waiting, never for their backlog; over a long run each busy tenant gets calls in
proportion to its weight; and a call pinned to a worker (session, ``options(worker=)``)
competes only with the calls that worker can run, keeping its tag (its place) until it runs.
docs/architecture.md ("The scheduler") says why this and not deficit round-robin.

``fifo`` keeps one queue in arrival order for everyone (no weights, no priorities), as before
tenants existed; quotas apply under both.
"""

from __future__ import annotations

import asyncio
import bisect
from collections import deque
from operator import attrgetter
from typing import Callable, Iterable

from ..config import DEFAULT_TENANT, SchedulerConfig, TenantSettings, tenant_name
from ..exceptions import PoolClosed, QueueFull
from .call import Call
from .state import WorkerBase as Worker


def pick(workers: Iterable[Worker], call: Call) -> Worker | None:
    """The least-loaded worker that can take ``call`` now (its pinned worker, if any)."""
    best: Worker | None = None
    for w in workers:
        if call.pinned is not None and w.id != call.pinned:
            continue
        if not w.can_take(call):
            continue
        if best is None or (len(w.inflight), w.sessions, w.calls) < (
                len(best.inflight), best.sessions, best.calls):
            best = w
    return best


def tenant_of(call: Call) -> str:
    return call.options.tenant or DEFAULT_TENANT


class Tenants:
    """The scheduler settings of every pool of a manager, per tenant (cached: a call's
    dispatch reads them), and the names the metrics may use as labels."""

    CACHE = 4096  # tenants remembered; a bridge sees a new one per client

    def __init__(self, config: SchedulerConfig | None = None) -> None:
        self.config = config = config or SchedulerConfig()
        self.fair = config.scheduler == "fair"
        self.limits_running = config.limits_running
        self.limits_queued = any(s.quota_queued is not None
                                 for s in (config.default, *config.tenants.values()))
        self._cache: dict[str, TenantSettings] = {}
        #: more names that are labels of their own (a bridge sets its token names here)
        self.named: Callable[[], Iterable[str]] = tuple

    def __call__(self, tenant: str) -> TenantSettings:
        found = self._cache.get(tenant)
        if found is None:
            if len(self._cache) >= self.CACHE:
                self._cache.clear()
            found = self._cache[tenant] = self.config.settings(tenant)
        return found

    def labeller(self) -> Callable[[str], str]:
        """tenant -> its metric label: a configured or token name, else ``other`` (bounded)."""
        names = {DEFAULT_TENANT, *self.config.tenants, *self.named()}
        return lambda tenant: name if (name := tenant_name(tenant)) in names else "other"

    def refusal(self, quota: str, tenant: str, limit: int, pool: str, what: str) -> QueueFull:
        """The QueueFull of a tenant past ``quota``: which quota, its value, what raises it."""
        name = tenant_name(tenant)
        flag = quota.replace("_", "-")
        return QueueFull(
            f"tenant '{tenant}' already has {what} in pool '{pool}' ({quota}={limit}); wait "
            f"for some to finish, or raise the quota: `kernelpit serve --{flag} {name}=N` "
            f"(or {quota} in [scheduler.tenants.{name}] of its config file; "
            f"SchedulerConfig for an embedded pool)")


class _Backlog:
    """One tenant's waiting calls in one pool: by priority (higher first), then arrival."""

    __slots__ = ("key", "levels", "order", "size", "start", "step")

    def __init__(self, key: str, start: float, step: float) -> None:
        self.key = key
        self.levels: dict[int, deque[Call]] = {}
        self.order: list[int] = []   # priorities present, as negatives, ascending
        self.size = 0
        self.start = start           # the virtual start tag of its next call
        self.step = step             # 1 / weight

    def push(self, call: Call, priority: int) -> int:
        """Add ``call``; returns how many of this tenant's calls are ahead of it."""
        level = self.levels.get(priority)
        if level is None:
            level = self.levels[priority] = deque()
            bisect.insort(self.order, -priority)
        ahead = len(level)
        if len(self.order) > 1:
            ahead += sum(len(self.levels[-p]) for p in self.order if -p > priority)
        level.append(call)
        self.size += 1
        return ahead

    def take(self, worker: Worker, blocked: Callable[[Call], bool] | None) -> Call | None:
        """Remove and return its first call ``worker`` can run now (and ``blocked`` allows)."""
        wid = worker.id
        for p in self.order:
            level = self.levels[-p]
            for i, call in enumerate(level):
                if (call.pinned is None or call.pinned == wid) and worker.can_take(call) and (
                        blocked is None or not blocked(call)):
                    if i:
                        del level[i]
                    else:
                        level.popleft()
                    self._shrunk(p, level)
                    return call
        return None

    def _shrunk(self, p: int, level: deque[Call]) -> None:
        self.size -= 1
        if not level:
            del self.levels[-p]
            self.order.remove(p)

    def remove(self, call: Call, priority: int) -> bool:
        level = self.levels.get(priority)
        if level is None:
            return False
        for i, c in enumerate(level):
            if c is call:
                del level[i]
                self._shrunk(-priority, level)
                return True
        return False

    def drop(self, keep: Callable[[Call], bool]) -> list[Call]:
        """Remove and return the calls ``keep`` refuses."""
        dropped = []
        for p in list(self.order):
            level = self.levels[-p]
            gone = [c for c in level if not keep(c)]
            for call in gone:
                level.remove(call)
                self._shrunk(p, level)
            dropped.extend(gone)
        return dropped

    def calls(self) -> Iterable[Call]:
        for p in self.order:
            yield from self.levels[-p]


_by_start = attrgetter("start")


class WaitQueue:
    """What waits for a worker in one pool, at most ``bound`` entries: calls, in one backlog
    per tenant chosen between fairly (see the module docstring), and sessions being opened
    while no worker serves (woken together when one does).  It also counts each tenant's
    running calls (:meth:`started`, :meth:`ended`) for its running quota and the status."""

    def __init__(self, bound: int, pool: str, tenants: Tenants | None = None) -> None:
        self.bound = bound
        self.pool = pool
        self.tenants = tenants if tenants is not None else Tenants()
        self._fair = self.tenants.fair
        self._backlogs: dict[str, _Backlog] = {}   # tenant ("" under fifo) -> its calls
        self._finish: dict[str, float] = {}        # idle tenants' last finish tags
        self.clock = 0.0
        self._calls = 0
        self.waiting: dict[str, int] = {}          # tenant -> calls waiting
        self._steps: dict[str, float] = {}         # tenant -> 1 / its weight
        self.running: dict[str, int] = {}          # tenant -> calls on workers
        self.openers: list[asyncio.Future[None]] = []  # sessions waiting for a serving worker

    def __len__(self) -> int:
        return self._calls + len(self.openers)

    def _full(self, what: str, tool: str | None) -> QueueFull:
        return QueueFull(
            f"pool '{self.pool}': {what} and {self.bound} calls are already waiting "
            f"(queue_size={self.bound}); raise queue_size or add workers", tool=tool)

    # -- tenants' counts and quotas -----------------------------------------------------------
    def may_start(self, call: Call) -> bool:
        """False when the call's tenant is at its running quota (then it waits)."""
        if not self.tenants.limits_running:
            return True
        tenant = tenant_of(call)
        limit = self.tenants(tenant).quota_running
        return limit is None or self.running.get(tenant, 0) < limit

    def _at_quota(self, call: Call) -> bool:
        return not self.may_start(call)

    def started(self, call: Call) -> None:
        """``call`` was sent to a worker, from the queue or straight away; under ``fair`` this
        is also what charges its tenant's share.  (On every call's path: kept inline.)"""
        tenant = call.options.tenant or DEFAULT_TENANT
        running = self.running
        running[tenant] = running.get(tenant, 0) + 1
        if self._fair:
            backlog = self._backlogs.get(tenant)
            clock = self.clock
            if backlog is not None:
                start = backlog.start
                backlog.start = start + backlog.step
            else:
                finish = self._finish.get(tenant, 0.0)
                start = finish if finish > clock else clock
                self._finish[tenant] = start + self._step(tenant)
                if len(self._finish) > Tenants.CACHE:
                    self._idle(tenant, self._finish[tenant])
            if start > clock:
                self.clock = start

    def _step(self, tenant: str) -> float:
        step = self._steps.get(tenant)
        if step is None:
            if len(self._steps) >= Tenants.CACHE:
                self._steps.clear()
            step = self._steps[tenant] = 1.0 / self.tenants(tenant).weight  # type: ignore[operator]
        return step

    def ended(self, call: Call) -> None:
        """``call`` left its worker (finished, or its worker was lost)."""
        tenant = call.options.tenant or DEFAULT_TENANT
        n = self.running.get(tenant, 0) - 1
        if n > 0:
            self.running[tenant] = n
        else:
            self.running.pop(tenant, None)

    def loads(self) -> dict[str, tuple[int, int]]:
        """tenant -> (calls waiting, calls running), tenants with neither left out."""
        return {t: (self.waiting.get(t, 0), self.running.get(t, 0))
                for t in {*self.waiting, *self.running}}

    # -- waiting calls ------------------------------------------------------------------------
    def push(self, call: Call) -> int:
        """Queue ``call``; returns its position among its tenant's waiting calls.  Raises
        QueueFull at the pool's bound or the tenant's queued quota."""
        if self._calls + len(self.openers) >= self.bound:
            raise self._full("all workers are busy", call.tool)
        tenant = tenant_of(call)
        waiting = self.waiting.get(tenant, 0)
        if self.tenants.limits_queued:
            limit = self.tenants(tenant).quota_queued
            if limit is not None and waiting >= limit:
                exc = self.tenants.refusal("quota_queued", tenant, limit, self.pool,
                                           f"{waiting} calls waiting")
                exc.tool = call.tool
                raise exc
        if self._fair:
            backlog = self._backlogs.get(tenant)
            if backlog is None:
                finish = self._finish.pop(tenant, 0.0)
                backlog = self._backlogs[tenant] = _Backlog(
                    tenant, finish if finish > self.clock else self.clock, self._step(tenant))
            position = backlog.push(call, call.options.priority)
        else:
            backlog = self._backlogs.get("")
            if backlog is None:
                backlog = self._backlogs[""] = _Backlog("", 0.0, 0.0)
            backlog.push(call, 0)
            position = waiting
        self.waiting[tenant] = waiting + 1
        self._calls += 1
        return position

    def take_for(self, worker: Worker) -> Call | None:
        """Remove and return the waiting call ``worker`` should run now: among the calls it
        can run (pins, thread safety, running quotas), the one of the tenant with the smallest
        tag; None when there is none."""
        if not self._calls or worker.saturated():
            return None
        backlogs = self._backlogs
        blocked = self._at_quota if self.tenants.limits_running else None
        # The next in tag order is almost always runnable: try it before sorting the rest.
        first = min(backlogs.values(), key=_by_start) if len(backlogs) > 1 else \
            next(iter(backlogs.values()))
        call = first.take(worker, blocked)
        if call is None and len(backlogs) > 1:
            for backlog in sorted(backlogs.values(), key=_by_start):
                if backlog is not first:
                    call = backlog.take(worker, blocked)
                    if call is not None:
                        first = backlog
                        break
        if call is not None:
            self._taken(first.key, first, call)
        return call

    def _taken(self, key: str, backlog: _Backlog, call: Call) -> None:
        self._count_out(call)
        self._release(key, backlog)

    def _count_out(self, call: Call) -> None:
        """``call`` no longer waits (it runs, or left the queue)."""
        self._calls -= 1
        tenant = tenant_of(call)
        n = self.waiting[tenant] - 1
        if n:
            self.waiting[tenant] = n
        else:
            del self.waiting[tenant]

    def _release(self, key: str, backlog: _Backlog) -> None:
        """Drop an emptied backlog; under fair queuing its tenant keeps its tag as an idle one
        (started() charges the call's share)."""
        if not backlog.size:
            del self._backlogs[key]
            if self._fair:
                self._idle(key, backlog.start)

    def _idle(self, tenant: str, finish: float) -> None:
        """Remember an idle tenant's finish tag (those behind the clock are forgotten: they
        would start at the clock anyway)."""
        self._finish[tenant] = finish
        if len(self._finish) > Tenants.CACHE:
            clock = self.clock
            self._finish = {t: f for t, f in self._finish.items() if f > clock}

    def remove(self, call: Call) -> bool:
        tenant = tenant_of(call)
        key = tenant if self._fair else ""
        backlog = self._backlogs.get(key)
        if backlog is None or not backlog.remove(call, call.options.priority if self._fair
                                                  else 0):
            return False
        self._forget(key, backlog, [call])
        return True

    def _forget(self, key: str, backlog: _Backlog, calls: list[Call]) -> None:
        """``calls`` left the queue without running (cancelled, dropped)."""
        for call in calls:
            self._count_out(call)
        self._release(key, backlog)

    def drop_pinned(self, worker_id: int) -> list[Call]:
        """Remove the calls that can only run on ``worker_id``."""
        dropped: list[Call] = []
        for key, backlog in list(self._backlogs.items()):
            gone = backlog.drop(lambda c: c.pinned != worker_id)
            if gone:
                self._forget(key, backlog, gone)
                dropped.extend(gone)
        return dropped

    # -- session openers ----------------------------------------------------------------------
    def wait_for_worker(self) -> asyncio.Future[None]:
        """A future that resolves when a worker starts serving (:meth:`wake`); a session
        opener's place in the queue.  Raises QueueFull at the bound.  Pair with
        :meth:`stop_waiting`."""
        if len(self) >= self.bound:
            raise self._full("no worker is ready to hold a session", None)
        fut = asyncio.get_running_loop().create_future()
        self.openers.append(fut)
        return fut

    def stop_waiting(self, fut: asyncio.Future[None]) -> None:
        if fut in self.openers:
            self.openers.remove(fut)

    def wake(self) -> None:
        """A worker serves now: every session opener looks again."""
        for fut in self.openers:
            if not fut.done():
                fut.set_result(None)
        self.openers.clear()

    def close(self) -> None:
        """The pool closes: everything still waiting fails with PoolClosed."""
        message = "the pool was closed while this was waiting for a worker"
        for backlog in list(self._backlogs.values()):
            for call in list(backlog.calls()):
                call.fail(PoolClosed(message))
        self._backlogs.clear()
        self.waiting.clear()
        self._calls = 0
        for fut in self.openers:
            if not fut.done():
                fut.set_exception(PoolClosed(message))
        self.openers.clear()
