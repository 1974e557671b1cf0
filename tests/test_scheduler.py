"""The scheduler without kernels: which waiting call a free worker takes, between tenants
(weighted fair queuing), within a tenant (priority, then arrival), and the tenants' quotas.

Workers are :class:`~kernelpit.pool.state.WorkerBase` (the real load and state); calls are
real :class:`~kernelpit.pool.call.Call` objects; the group's submit/pump/ended are the real
dispatch path (a worker here "runs" a call by holding it in ``inflight``).
"""

import asyncio
import functools
from collections import Counter
from pathlib import Path

import pytest

from kernelpit.config import PoolConfig, SchedulerConfig, TenantSettings
from kernelpit.exceptions import QueueFull
from kernelpit.options import CallOptions
from kernelpit.pool.call import Call
from kernelpit.pool.dispatch import Tenants, WaitQueue
from kernelpit.pool.group import WorkerGroup
from kernelpit.pool.manager import PoolManager
from kernelpit.pool.state import WorkerBase


def in_loop(fn):
    """Run a test body inside an event loop (calls and futures need one)."""
    @functools.wraps(fn)
    def run(*args, **kwargs):
        async def body():
            return fn(*args, **kwargs)
        return asyncio.run(body())
    return run


def call(tenant=None, priority=0, tool="f", pinned=None):
    c = Call(tool, [], {}, CallOptions(tenant=tenant, priority=priority))
    c.pinned = pinned
    return c


class Rig:
    """A group of ``n`` ready workers (no kernels) and its queue, with a log of the calls
    in the order they were sent to a worker."""

    def __init__(self, n=1, scheduler=None, concurrency=1):
        cfg = PoolConfig(name="p", concurrency=concurrency)
        self.manager = PoolManager([cfg], scheduler)
        self.group = WorkerGroup(cfg, None, Path("/nonexistent"), "run", lambda: 0,
                                 lambda w: None, asyncio.Semaphore(1),
                                 tenants=self.manager.tenants)
        self.started = []
        for i in range(1, n + 1):
            w = self.group.workers[i] = Worker(i, cfg, self.started)
            w.ready()

    @property
    def queue(self) -> WaitQueue:
        return self.group.queue

    def submit(self, *calls):
        return [self.group.submit(c) for c in calls]

    def finish(self, worker_id):
        """The worker's oldest call ends; the worker takes its next one."""
        w = self.group.workers[worker_id]
        done = next(iter(w.inflight.values()))
        self.group.ended(w, done)
        self.group.pump(w)
        return done

    def drain(self, worker_id=1):
        while self.group.workers[worker_id].inflight:
            self.finish(worker_id)


class Worker(WorkerBase):
    def __init__(self, worker_id, config, log):
        super().__init__(worker_id, config)
        self.log = log

    def begin(self, call):
        self.inflight[call.id] = call
        call.worker = self
        self.log.append(call)


def names(calls):
    return [f"{c.options.tenant}{c.args[0] if c.args else ''}" for c in calls]


def labelled(tenant, i, **kw):
    c = call(tenant, **kw)
    c.args = [i]
    return c


# -- between tenants ---------------------------------------------------------------------------

@in_loop
def test_a_light_tenant_waits_one_call_of_the_heavy_one_not_its_backlog():
    rig = Rig(n=1)
    rig.submit(*(labelled("A", i) for i in range(6)))       # A0 runs, A1..A5 wait
    rig.submit(labelled("B", 0))
    rig.drain()
    assert names(rig.started) == ["A0", "B0", "A1", "A2", "A3", "A4", "A5"]


@in_loop
def test_b_goes_before_as_next_two_queued_calls_even_arriving_mid_backlog():
    rig = Rig(n=1)
    rig.submit(*(labelled("A", i) for i in range(8)))
    rig.finish(1)
    rig.finish(1)                                           # A0, A1 done; A2 runs
    rig.submit(labelled("B", 0), labelled("B", 1))
    rig.drain()
    order = names(rig.started)
    assert order.index("B0") < order.index("A3") < order.index("A4")
    assert order[:5] == ["A0", "A1", "A2", "B0", "A3"]      # then they alternate
    assert order[5:7] == ["B1", "A4"]


@in_loop
def test_three_tenants_take_turns():
    rig = Rig(n=1)
    rig.submit(*(labelled("A", i) for i in range(4)))
    rig.submit(*(labelled("B", i) for i in range(3)))
    rig.submit(*(labelled("C", i) for i in range(2)))
    rig.drain()
    # A already ran a call when B and C came: they go first, then everyone in turns
    assert names(rig.started) == ["A0", "B0", "C0", "A1", "B1", "C1", "A2", "B2", "A3"]


@in_loop
@pytest.mark.parametrize("weights", [{"A": 1, "B": 1}, {"A": 3, "B": 1}, {"A": 1, "B": 4},
                                     {"A": 0.5, "B": 2, "C": 1}])
def test_busy_tenants_get_calls_in_proportion_to_their_weights(weights):
    config = SchedulerConfig(tenants={t: TenantSettings(weight=w) for t, w in weights.items()})
    rig = Rig(n=2, scheduler=config)
    for t in weights:                                         # everyone keeps a long backlog
        rig.submit(*(labelled(t, i) for i in range(2000)))
    for _ in range(1000):
        rig.finish(1)
        rig.finish(2)
    counts = Counter(c.options.tenant for c in rig.started[2:])  # the first two took free workers
    total, scale = sum(counts.values()), sum(weights.values())
    for t, w in weights.items():
        assert abs(counts[t] - total * w / scale) <= 2, (counts, weights)


@in_loop
def test_a_tenant_that_comes_back_gets_no_credit_for_its_idle_time():
    rig = Rig(n=1)
    rig.submit(labelled("B", 0))
    rig.submit(*(labelled("A", i) for i in range(10)))
    for _ in range(6):
        rig.finish(1)                                          # B idle while A runs 6 calls
    rig.submit(*(labelled("B", i) for i in range(1, 6)))
    rig.drain()
    tail = names(rig.started)[7:]                              # after B0 and A0..A5
    assert tail[:6] == ["B1", "A6", "B2", "A7", "B3", "A8"]    # turns, not a burst of B


@in_loop
def test_a_pinned_call_competes_only_for_its_worker_and_keeps_its_turn():
    rig = Rig(n=2)
    rig.submit(labelled("A", 0), labelled("A", 1))             # both workers busy
    rig.submit(*(labelled("A", i) for i in range(2, 6)))
    rig.submit(labelled("S", 0, pinned=2))                     # a session's call: worker 2 only
    rig.finish(1)                                              # worker 1 cannot run S0
    assert names(rig.started)[-1] == "A2"
    rig.finish(2)                                              # worker 2: S0 has the turn
    assert names(rig.started)[-1] == "S0"


# -- within a tenant ---------------------------------------------------------------------------

@in_loop
def test_priority_orders_a_tenants_own_calls_and_arrival_breaks_ties():
    rig = Rig(n=1)
    rig.submit(labelled("A", 0))
    positions = rig.submit(labelled("A", 1), labelled("A", 2, priority=5),
                           labelled("A", 3, priority=-1), labelled("A", 4, priority=5))
    assert positions == [0, 0, 2, 1]                          # within A's own queue
    rig.drain()
    assert names(rig.started) == ["A0", "A2", "A4", "A1", "A3"]


@in_loop
def test_priority_never_lets_a_tenant_starve_another():
    rig = Rig(n=1)
    rig.submit(labelled("A", 0))
    rig.submit(*(labelled("A", i, priority=100) for i in range(1, 5)))
    rig.submit(labelled("B", 0))
    rig.drain()
    assert names(rig.started)[:3] == ["A0", "B0", "A1"]


@in_loop
def test_queued_position_is_within_the_tenants_own_queue():
    rig = Rig(n=1)
    rig.submit(labelled("A", 0))
    assert rig.submit(*(labelled("A", i) for i in range(1, 4))) == [0, 1, 2]
    assert rig.submit(labelled("B", 0), labelled("B", 1)) == [0, 1]
    assert len(rig.queue) == 5 and rig.queue.waiting == {"A": 3, "B": 2}


# -- fifo --------------------------------------------------------------------------------------

@in_loop
def test_fifo_serves_in_arrival_order_whoever_asks():
    rig = Rig(n=1, scheduler=SchedulerConfig(scheduler="fifo"))
    rig.submit(*(labelled("A", i) for i in range(4)))
    rig.submit(labelled("B", 0, priority=9))
    rig.drain()
    assert names(rig.started) == ["A0", "A1", "A2", "A3", "B0"]


# -- quotas ------------------------------------------------------------------------------------

@in_loop
def test_past_its_running_quota_a_tenants_calls_wait_while_others_run():
    config = SchedulerConfig(default=TenantSettings(quota_running=1),
                             tenants={"big": TenantSettings(quota_running=2)})
    rig = Rig(n=4, scheduler=config)
    assert rig.submit(labelled("A", 0), labelled("A", 1)) == [None, 0]   # A1 waits: quota 1
    assert rig.submit(labelled("big", 0), labelled("big", 1), labelled("big", 2)) == [None, None, 0]
    assert rig.queue.loads() == {"A": (1, 1), "big": (1, 2)}
    assert len(rig.group.workers[4].inflight) == 0                     # a worker stays free
    worker_of_a0 = rig.started[0].worker.id
    rig.finish(worker_of_a0)                                            # A0 ends: A1 may run
    assert names(rig.started)[-1] == "A1"
    rig.finish(rig.started[2].worker.id)                                # big0 ends: big2 runs
    assert names(rig.started)[-1] == "big2" and rig.queue.loads() == {"A": (0, 1), "big": (0, 2)}


@in_loop
def test_a_freed_running_slot_is_taken_by_any_free_worker():
    rig = Rig(n=3, scheduler=SchedulerConfig(default=TenantSettings(quota_running=1)))
    rig.submit(labelled("A", 0), labelled("A", 1, pinned=3))
    rig.finish(rig.started[0].worker.id)            # A0's worker is not 3: worker 3 is pumped
    assert names(rig.started) == ["A0", "A1"] and rig.started[1].worker.id == 3


@in_loop
def test_past_its_queued_quota_a_call_fails_at_once_naming_the_quota():
    config = SchedulerConfig(default=TenantSettings(quota_queued=2),
                             tenants={"ci": TenantSettings(quota_queued=0)})
    rig = Rig(n=1, scheduler=config)
    rig.submit(labelled("owner/ab12cd34", 0), labelled("owner/ab12cd34", 1),
               labelled("owner/ab12cd34", 2))
    with pytest.raises(QueueFull) as err:
        rig.submit(labelled("owner/ab12cd34", 3))
    assert str(err.value) == (
        "tenant 'owner/ab12cd34' already has 2 calls waiting in pool 'p' (quota_queued=2); wait "
        "for some to finish, or raise the quota: `kernelpit serve --quota-queued owner=N` (or "
        "quota_queued in [scheduler.tenants.owner] of its config file; SchedulerConfig for an "
        "embedded pool)")
    with pytest.raises(QueueFull, match=r"tenant 'ci' already has 0 calls waiting .*"
                                        r"\(quota_queued=0\).*--quota-queued ci=N"):
        rig.submit(labelled("ci", 0))
    assert rig.submit(labelled("B", 0)) == [0]        # others still queue
    assert rig.queue.waiting == {"owner/ab12cd34": 2, "B": 1}


def test_past_its_session_quota_opening_a_session_fails_naming_the_quota():
    async def body():
        rig = Rig(n=2, scheduler=SchedulerConfig(default=TenantSettings(quota_sessions=1)))
        m = rig.manager
        m.groups["p"] = rig.group
        m.started = True
        await m.open_session("p", None, {}, tenant="A")
        await m.open_session("p", None, {}, tenant="B")
        with pytest.raises(QueueFull, match=r"tenant 'A' already has 1 session\(s\) open in "
                                            r"pool 'p' \(quota_sessions=1\).*--quota-sessions A=N"):
            await m.open_session("p", None, {}, tenant="A")
        [mine] = [s for s in m.sessions if s.tenant == "A"]
        m.sessions.close(mine.id)                                  # (what close_session does)
        await m.open_session("p", None, {}, tenant="A")           # room again
    asyncio.run(body())


@in_loop
def test_removing_and_dropping_calls_keeps_the_counts_right():
    rig = Rig(n=2)
    rig.submit(labelled("A", 0), labelled("A", 1))
    waiting = [labelled("A", 2), labelled("B", 0, pinned=2), labelled("B", 1)]
    rig.submit(*waiting)
    assert rig.queue.remove(waiting[0]) and not rig.queue.remove(waiting[0])
    assert names(rig.queue.drop_pinned(2)) == ["B0"]
    assert len(rig.queue) == 1 and rig.queue.waiting == {"B": 1}
    rig.drain(1)
    rig.drain(2)
    assert names(rig.started) == ["A0", "A1", "B1"] and rig.queue.loads() == {}


# -- settings ----------------------------------------------------------------------------------

def test_settings_by_token_name_over_the_defaults():
    config = SchedulerConfig(default=TenantSettings(quota_queued=10),
                             tenants={"owner": TenantSettings(weight=2)})
    tenants = Tenants(config)
    assert tenants("owner/ab12cd34") == TenantSettings(2, None, 10, None)
    assert tenants("ci") == TenantSettings(1.0, None, 10, None)
    tenants.named = lambda: ["ci"]
    label = tenants.labeller()
    assert [label(t) for t in ("owner/1234", "ci", "default", "stranger", "x/y")] == \
        ["owner", "ci", "default", "other", "other"]


def test_the_config_file_table_and_the_flags_make_the_same_settings():
    table = SchedulerConfig.from_dict({"scheduler": "fifo", "quota_running": 4,
                                       "tenants": {"ci": {"weight": 0.5, "quota_queued": 3}}})
    flags = SchedulerConfig().with_flags("fifo", ["ci=0.5"], quota_running=["4"],
                                         quota_queued=["ci=3"])
    assert table == flags
    with pytest.raises(ValueError, match=r"unknown \[scheduler\] setting\(s\) quota"):
        SchedulerConfig.from_dict({"quota": 1})
    with pytest.raises(ValueError, match=r"--tenant-weight 'ci': write NAME=W"):
        SchedulerConfig().with_flags(None, ["ci"])
    with pytest.raises(ValueError, match="quota_running must be an integer >= 1"):
        SchedulerConfig().with_flags(None, quota_running=["0"])
    with pytest.raises(ValueError, match="scheduler must be one of fair, fifo"):
        SchedulerConfig(scheduler="lifo")
