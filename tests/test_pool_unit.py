"""The pool's logic without kernels, in milliseconds: dispatch, the wait queue, the worker
state machine, taint tracking, the crash barrier's decisions, session expiry, argument checks.

Workers here are :class:`~kernelpit.pool.state.WorkerBase`, the real state machine and load
that :class:`~kernelpit.pool.worker.Worker` adds a kernel process to; calls are real
:class:`~kernelpit.pool.call.Call` objects (they need an event loop, hence ``in_loop``).
"""

import asyncio
import signal
from pathlib import Path

import pytest

from kernelpit.config import PoolConfig
from kernelpit.exceptions import (DeadlineExceeded, PoolNotFound, QueueFull, SessionLost,
                                  SessionNotFound, ToolNotFound)
from kernelpit.info import WorkerInfo, WorkerState
from kernelpit.kernels.schema import check_arguments, check_columns, describe_parameters
from kernelpit.pool.call import Call, CallOptions
from kernelpit.pool.crash import (Death, TaintTracker, classify, counts_toward_taint,
                                  should_retry, start_failure_backs_off)
from kernelpit.pool.dispatch import WaitQueue, pick
from kernelpit.pool.group import WorkerGroup
from kernelpit.pool.manager import PoolManager
from kernelpit.pool.sessions import SessionTable
from kernelpit.pool.state import TRANSITIONS, IllegalTransition, WorkerBase

S = WorkerState


def in_loop(fn):
    """Run a test body inside an event loop (calls and futures need one)."""
    def run(*args, **kwargs):
        async def body():
            return fn(*args, **kwargs)
        return asyncio.run(body())
    run.__name__ = fn.__name__
    return run


def worker(worker_id, concurrency=1, spare=False, ready=True):
    w = WorkerBase(worker_id, PoolConfig(concurrency=concurrency), spare=spare)
    if ready:
        w.ready()
    return w


def call(tool="f", thread_safe=False, pinned=None, columns=None):
    c = Call(tool, [], {}, CallOptions(), thread_safe=thread_safe, columns=columns)
    c.pinned = pinned
    return c


# -- the worker state machine -------------------------------------------------------------------

def test_a_worker_moves_only_along_its_transitions():
    w = worker(1, ready=False)
    assert w.state is S.STARTING and not w.serving
    w.ready()
    assert w.state is S.IDLE and w.serving
    assert w.drain() and w.state is S.RECYCLING and not w.serving
    assert w.mark_unhealthy() and w.state is S.UNHEALTHY
    assert not w.mark_unhealthy()          # once is enough
    assert w.begin_stop() and not w.begin_stop()
    assert w.died() is S.STOPPING and w.state is S.DEAD
    assert w.state_at_death is S.STOPPING
    for to in (S.IDLE, S.RECYCLING, S.UNHEALTHY, S.STOPPING):
        assert not w._move(to)             # a dead worker refuses every move
    assert TRANSITIONS[S.DEAD] == frozenset()


def test_an_illegal_move_from_a_live_state_is_a_bug_and_raises():
    with pytest.raises(IllegalTransition, match="cannot go from starting to recycling"):
        worker(1, ready=False).drain()
    with pytest.raises(IllegalTransition, match="from idle to idle"):
        worker(2).ready()


def test_busy_is_idle_with_calls_in_flight_and_states_are_strings():
    w = worker(1)
    w.inflight[1] = object()
    assert w.state is S.BUSY and w.state == "busy" and f"{w.state}" == "busy"
    assert {"busy": 1}[w.state] == 1       # one key with its string, in a dict or set
    info = WorkerInfo(id=1, pool="p", state="recycling")   # as read back from gRPC
    assert info.state is S.RECYCLING


def test_a_spare_is_an_idle_worker_held_back_until_promoted():
    s = worker(1, spare=True)
    s.inflight[1] = object()
    assert s.state is S.IDLE and not s.serving and not s.request_recycle("ttl")
    assert s.promote() and s.serving and not s.spare
    assert not s.promote()


def test_a_recycle_is_requested_once_and_an_unhealthy_death_is_replaced_as_a_recycle():
    w = worker(1)
    assert w.request_recycle("ttl") and not w.request_recycle("memory")
    assert w.recycle_pending == "ttl"
    w.mark_unhealthy()
    w.note_kill("unhealthy")
    w.note_kill("restart")                 # the first reason stays
    w.died()
    assert w.killed_by == "unhealthy" and w.killed_by_pool
    assert w.replace_reason == "unhealthy"
    crashed = worker(2)
    crashed.died()
    assert crashed.replace_reason is None and not crashed.killed_by_pool


# -- dispatch -----------------------------------------------------------------------------------

@in_loop
def test_pick_takes_the_least_loaded_worker_that_can_take_the_call():
    a, b, c = worker(1, concurrency=2), worker(2, concurrency=2), worker(3, ready=False)
    a.inflight[9] = call(thread_safe=True)
    assert pick([a, b, c], call()) is b
    b.inflight[8] = call(thread_safe=True)
    b.calls = 5
    assert pick([a, b, c], call(thread_safe=True)) is a   # same load: fewer calls served
    assert pick([a, b, c], call()) is None                # not thread-safe: needs a free worker
    assert pick([a, b, c], call(pinned=3)) is None        # its worker is still starting
    assert pick([a, b, c], call(thread_safe=True, pinned=2)) is b


@in_loop
def test_map_chunks_queue_one_deep_in_a_busy_worker():
    w = worker(1, concurrency=1)
    chunk = call(columns=[[1, 2]])
    w.inflight[chunk.id] = chunk
    assert w.can_take(call(columns=[[3]])) and not w.saturated()
    w.inflight[0] = call(columns=[[4]])
    assert w.saturated() and not w.can_take(call(columns=[[5]]))


@in_loop
def test_the_wait_queue_is_fifo_bounded_and_honours_pins():
    q = WaitQueue(3, "p")
    first, pinned, last = call("a"), call("b", pinned=2), call("c")
    assert [q.push(first), q.push(pinned), q.push(last)] == [0, 1, 2]
    with pytest.raises(QueueFull, match=r"pool 'p': all workers are busy and 3 calls are "
                                        r"already waiting \(queue_size=3\)"):
        q.push(call("d"))
    one, two = worker(1), worker(2)
    assert q.take_for(one) is first
    one.inflight[first.id] = first
    assert q.take_for(one) is None          # saturated
    assert q.take_for(two) is pinned        # the first call it may run
    assert [c.tool for c in q.drop_pinned(2)] == [] and len(q) == 1
    assert q.remove(last) and not q.remove(last) and len(q) == 0


@in_loop
def test_a_session_opener_waits_in_the_queue_and_counts_toward_its_bound():
    q = WaitQueue(2, "p")
    q.push(call())
    opener = q.wait_for_worker()
    with pytest.raises(QueueFull, match="no worker is ready to hold a session"):
        q.wait_for_worker()
    assert len(q) == 2
    q.wake()
    assert opener.done() and len(q) == 1


# -- taint tracking and the crash barrier ---------------------------------------------------------

class Clock:
    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


def test_a_tool_is_tainted_at_the_threshold_within_the_window_for_the_period():
    clock = Clock()
    t = TaintTracker(threshold=3, window=60, period=30, clock=clock)
    assert not t.record("f")
    clock.now += 61                         # out of the window: forgotten
    assert not t.record("f") and not t.record("f") and t.count("f") == 2
    assert t.tainted("f") is None
    clock.now += 1
    assert t.record("f") and t.tainted("f") == 30
    assert not t.record("f")                # already quarantined
    assert t.tainted("g") is None
    clock.now += 29.5
    assert t.tainted("f") == 0.5
    clock.now += 1
    assert t.tainted("f") is None and t.count("f") == 0   # lifted, history forgotten


def test_untaint_lifts_the_quarantine_and_forgets_the_crashes():
    t = TaintTracker(threshold=2, window=60, period=60, clock=Clock())
    t.record("f")
    assert not t.untaint("f") and t.count("f") == 0       # not quarantined, history cleared
    t.record("f")
    assert t.record("f") and t.untaint("f")
    assert t.tainted("f") is None and not t.record("f")   # counting starts over


@pytest.mark.parametrize("signum, reason", [
    (signal.SIGSEGV, "segfault"), (signal.SIGABRT, "abort"), (signal.SIGBUS, "bus_error"),
    (signal.SIGFPE, "fpe"), (signal.SIGILL, "illegal_instruction"), (signal.SIGKILL, "killed"),
    (signal.SIGTERM, "terminated"), (signal.SIGHUP, "signal"), (signal.SIGINT, "signal")])
def test_each_signal_is_classified(signum, reason):
    death = classify(-signum, rss=1000, oom_before=5, oom_now=lambda: 5, limit=lambda: 10**9)
    assert death.reason == reason and death.signal == signal.Signals(signum).name
    assert death.describe() and "None" not in death.describe()


def test_a_sigkill_is_the_oom_killers_by_its_counter_or_by_the_memory_held():
    def kill(**kw):
        return classify(-9, **{"rss": 10, "oom_before": 2, "oom_now": lambda: 2,
                               "limit": lambda: 100, **kw}).reason
    assert kill() == "killed"
    assert kill(oom_now=lambda: 3) == "oom"                   # the cgroup counter rose
    assert kill(rss=90) == "oom"                              # 90 % of the limit
    assert kill(oom_before=None, oom_now=lambda: 7) == "killed"  # no counter at the start
    assert classify(0, 0, None).reason == classify(3, 0, None).reason == "exit"
    assert classify(None, 0, None).describe() == "exited"


@pytest.mark.parametrize("reason, returncode, counts", [
    ("segfault", -11, True), ("abort", -6, True), ("bus_error", -7, True), ("fpe", -8, True),
    ("illegal_instruction", -4, True), ("oom", -9, True), ("exit", 1, True), ("exit", 0, True),
    ("exit", None, False), ("killed", -9, False), ("terminated", -15, False),
    ("signal", -1, False)])
def test_only_deaths_the_tool_may_have_caused_count_toward_taint(reason, returncode, counts):
    death = Death(reason, returncode, None, 0)
    assert counts_toward_taint(death, killed_by_pool=False) is counts
    assert counts_toward_taint(death, killed_by_pool=True) is False  # cancel grace, unhealthy...


def test_only_starts_that_failed_by_themselves_back_off():
    assert start_failure_backs_off(None, False)               # timeout, import error in hello
    assert start_failure_backs_off(Death("exit", 1, None, 0), False)
    assert start_failure_backs_off(Death("oom", -9, "SIGKILL", 0), False)
    assert not start_failure_backs_off(Death("killed", -9, "SIGKILL", 0), False)
    assert not start_failure_backs_off(Death("terminated", -15, "SIGTERM", 0), False)
    assert not start_failure_backs_off(Death("exit", 1, None, 0), True)   # the pool's own kill


def test_only_idempotent_unpinned_calls_with_retries_left_are_retried():
    assert should_retry(idempotent=True, pinned=False, attempts=1, retries=2)
    assert not should_retry(idempotent=True, pinned=False, attempts=2, retries=2)
    assert not should_retry(idempotent=True, pinned=True, attempts=0, retries=2)
    assert not should_retry(idempotent=False, pinned=False, attempts=0, retries=2)


# -- sessions ---------------------------------------------------------------------------------------

def test_sessions_expire_after_their_ttl_of_idleness():
    table = SessionTable()
    short = table.open("p", 1, ttl=10, metadata={"k": 1})
    table.open("p", 2, ttl=None, metadata={})
    assert short.metadata == {"k": "1"}
    assert table.expired(short.last_used + 5) == []
    assert table.expired(short.last_used + 11) == [short]
    with pytest.raises(ValueError, match="already exists"):
        table.open("p", 1, None, {}, session_id=short.id)


def test_a_session_whose_worker_died_is_lost_and_a_closed_one_is_gone():
    table = SessionTable()
    s = table.open("p", 1, None, {})
    assert table.use(s.id).calls == 1
    [held] = table.on_worker(1)
    held.lost = "worker 1 holding it was killed (SIGKILL)"
    with pytest.raises(SessionLost, match="was killed .* open a new session"):
        table.use(s.id)
    assert table.on_worker(1) == []
    table.close(s.id)
    with pytest.raises(SessionNotFound, match="closed or expired"):
        table.get(s.id)


def _manager(queue_size=10):
    """A started manager of one pool 'p' whose workers the test makes (no kernels)."""
    cfg = PoolConfig(name="p", queue_size=queue_size)
    m = PoolManager([cfg])
    ids = iter(range(1, 100))
    m.groups["p"] = WorkerGroup(cfg, None, Path("/nonexistent"), m.run_id, lambda: next(ids),
                                lambda w: None, asyncio.Semaphore(1))
    m.started = True
    return m, m.groups["p"]


def test_opening_a_session_waits_for_a_serving_worker_and_fails_as_a_call_would():
    async def body():
        m, group = _manager(queue_size=1)
        starting = group.workers[1] = WorkerBase(1, group.config)
        with pytest.raises(DeadlineExceeded, match="no worker of pool 'p' became ready"):
            await m.open_session("p", None, {}, deadline=0.01)
        assert len(group.queue) == 0                           # it left the queue
        waiting = asyncio.ensure_future(m.open_session(None, None, {}))
        await asyncio.sleep(0)
        with pytest.raises(QueueFull, match=r"queue_size=1"):
            await m.open_session("p", None, {})
        starting.ready()
        group.pump(starting)                                   # what a new worker's start does
        info = await waiting
        assert info.worker == 1 and starting.sessions == 1
        with pytest.raises(PoolNotFound,
                           match=r"no pool named 'pq'; did you mean 'p'\? \(pools: p\)"):
            await m.open_session("pq", None, {})
    asyncio.run(body())


def test_an_unknown_pool_is_one_error_everywhere():
    async def body():
        m, group = _manager()
        group.tools = {"f": {"name": "f", "params": [], "schema": {}}}
        with pytest.raises(PoolNotFound, match="no pool named 'nope'"):
            m.tools("nope")
        with pytest.raises(PoolNotFound, match="no pool named 'nope'"):
            await m.call("f", [], {}, CallOptions(pool="nope"))
        with pytest.raises(PoolNotFound):
            m.untaint("f", "nope")
        with pytest.raises(ToolNotFound, match="no tool named 'g'"):
            m.untaint("g")
        assert m.untaint("f") is False and [t.name for t in m.tools("p")] == ["f"]
    asyncio.run(body())


# -- argument checks ------------------------------------------------------------------------------

def _params(fn):
    return describe_parameters(fn)["params"]


def test_arguments_are_checked_against_the_signature():
    def add(a: int, b: int = 0, *, scale: float = 1.0) -> int:
        return a + b

    params = _params(add)
    assert check_arguments("add", params, [1], {"scale": 2}) is None
    assert "missing the required parameter 'a'" in check_arguments("add", params, [], {})
    assert "takes 2 positional argument(s) but 3" in check_arguments("add", params, [1, 2, 3], {})
    assert "unexpected parameter 'c'" in check_arguments("add", params, [1], {"c": 1})
    assert "multiple values for parameter 'a'" in check_arguments("add", params, [1], {"a": 2})
    assert check_arguments("add", params, [1, "x"], {}) == (
        "parameter 'b' of add() must be int, got str 'x'")


def test_map_columns_are_checked_and_the_first_bad_item_is_named():
    def add(a: int, b: int = 0) -> int:
        return a + b

    params = _params(add)
    assert check_columns("add", params, [[1, 2, 3], [4, 5, 6]]) is None
    index, message = check_columns("add", params, [[1, 2, "x"], [4, 5, 6]])
    assert index == 2 and "parameter 'a'" in message


def test_a_malformed_registry_row_is_passed_over_not_fatal(tmp_path):
    from kernelpit.pool.registry import RunRegistry
    reg = RunRegistry(tmp_path / "registry.sqlite")
    reg.open_run("good")
    reg._db.execute("INSERT INTO runs VALUES (?, ?, ?, ?, NULL)", ("bad", 2, "active", 1.0))
    assert [r.run_id for r in reg.runs()] == ["good"]  # the reaper still sees the good run
