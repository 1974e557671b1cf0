"""Many users, one bridge: fair queuing between real clients, quotas and their refusals,
where queue depth per tenant shows, and no call lost or run twice while workers are killed.

One bridge (real kernels, real gRPC), two workers.  Calls of the ``mark`` tool append their
tag to a log file as they start, in the kernel: the log is the order calls started in.
"""

import os
import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

import kernelpit
from conftest import ADAPTERS, wait_until
from kernelpit import cli
from kernelpit.config import PoolConfig, SchedulerConfig, TenantSettings
from kernelpit.exceptions import InvalidArguments, QueueFull, WorkerCrashed
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal

pytestmark = pytest.mark.timeout(120)

LIMITED = TenantSettings(quota_running=1, quota_queued=1, quota_sessions=1)


@pytest.fixture(scope="module")
def bridge():
    portal = Portal("test-fairness")

    async def start(b):
        return await b.start()

    b = Bridge([PoolConfig(adapters=["kp_fair"], workers=2, path=[ADAPTERS], retries=3)],
               discovery=False, grace=2, scheduler=SchedulerConfig(tenants={"limited": LIMITED}))
    portal.call(start, b)
    yield b
    portal.call(b.stop, 0)
    portal.stop()


@pytest.fixture
def clients(bridge):
    made = []

    def connect(token=None):
        made.append(kernelpit.connect(bridge.address, token or bridge.token))
        return made[-1]

    yield connect
    for c in made:
        c.close()


def tenant(client, token="owner"):
    return f"{token}/{client._async._backend.client_id[:8]}"


def loads(client):
    """tenant -> (waiting, running), from the watch stream's first snapshot (kernelpit status)."""
    return {t.tenant: (t.waiting, t.running) for t in cli.first_snapshot(client).tenants}


def started(log):
    return Path(log).read_text().split() if Path(log).exists() else []


def test_a_light_client_goes_before_the_backlog_of_a_heavy_one(bridge, clients, tmp_path, capsys):
    a, b, c = clients(), clients(), clients()
    log, gate, hold = str(tmp_path / "log"), str(tmp_path / "gate"), str(tmp_path / "hold")
    with ThreadPoolExecutor(8) as pool:
        held = pool.submit(c.call, "mark", "c0", log, hold)       # C keeps one worker busy
        first = pool.submit(a.call, "mark", "a0", log, gate)      # A the other
        wait_until(lambda: len(started(log)) == 2)
        rest = [pool.submit(a.call, "mark", f"a{i}", log) for i in (1, 2, 3)]
        wait_until(lambda: loads(a).get(tenant(a)) == (3, 1))
        events = pool.submit(lambda: list(b.stream("mark", "b0", log)))
        wait_until(lambda: loads(b).get(tenant(b)) == (1, 0))

        assert cli.main(["status", "--address", bridge.address, "--token", bridge.token]) == 0
        out = capsys.readouterr().out
        assert f"queue: 4 waiting ({tenant(a)} 3, {tenant(b)} 1)" in out
        assert tenant(a) in out and "WAITING" in out and "RUNNING" in out

        Path(gate).touch()
        assert [f.result(timeout=30) for f in [first, *rest]] == ["a0", "a1", "a2", "a3"]
        queued = [e for e in events.result(timeout=30) if e.kind == "queued"]
        Path(hold).touch()
        held.result(timeout=30)
    order = started(log)
    assert order[:2] in (["c0", "a0"], ["a0", "c0"])
    assert order[2:] == ["b0", "a1", "a2", "a3"]           # B did not wait for A's backlog
    assert [e.position for e in queued] == [0]            # first in its own queue


def test_each_quota_refuses_with_its_name_value_and_setting(bridge, clients, tmp_path):
    admin = clients()
    limited = clients(admin.add_token("limited", "call").secret)
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")
    with ThreadPoolExecutor(4) as pool:
        first = pool.submit(limited.call, "mark", "l0", log, gate)
        wait_until(lambda: started(log) == ["l0"])
        second = pool.submit(limited.call, "mark", "l1", log)
        # quota_running=1: l1 waits although the other worker is free
        wait_until(lambda: loads(admin).get("limited") == (1, 1))
        assert sum(w.state == "idle" for w in admin.workers()) == 1
        with pytest.raises(QueueFull) as refused:                 # quota_queued=1
            limited.call("mark", "l2", log)
        assert str(refused.value).startswith(
            "tenant 'limited' already has 1 calls waiting in pool 'default' (quota_queued=1); "
            "wait for some to finish, or raise the quota: `kernelpit serve --quota-queued "
            "limited=N`")
        assert admin.call("mark", "x", log) == "x"              # others are not held back
        Path(gate).touch()
        assert (first.result(timeout=30), second.result(timeout=30)) == ("l0", "l1")
    assert started(log) == ["l0", "x", "l1"]

    with limited.session():                                       # quota_sessions=1
        with pytest.raises(QueueFull, match=r"tenant 'limited' already has 1 session\(s\) open "
                                            r"in pool 'default' \(quota_sessions=1\).*"
                                            r"--quota-sessions limited=N"):
            limited.session().open()
        with admin.session():
            pass                                                  # another tenant may
    with limited.session():
        pass                                                      # closed: room again


def test_only_an_admin_token_may_name_the_tenant(bridge, clients, tmp_path):
    admin = clients()
    caller = clients(admin.add_token("plain", "call").secret)
    with pytest.raises(InvalidArguments, match=r"options\(tenant='ci'\) may only be sent with "
                                               r"an admin token; token 'plain' has role call"):
        caller.options(tenant="ci").call("work", 1)
    assert admin.options(tenant="ci", priority=3).call("work", 2) == 2


def test_queue_depth_by_tenant_metric_has_bounded_labels(bridge, clients, tmp_path):
    from prometheus_client import CollectorRegistry

    from kernelpit.telemetry.metrics import attach
    registry = CollectorRegistry()
    attach(bridge.manager, registry)
    admin = clients()
    log, gate = str(tmp_path / "log"), str(tmp_path / "gate")

    def depth(label):
        return registry.get_sample_value("kernelpit_queue_depth_by_tenant",
                                         {"pool": "default", "tenant": label})

    with ThreadPoolExecutor(6) as pool:
        busy = [pool.submit(admin.call, "mark", f"h{i}", log, gate) for i in range(2)]
        wait_until(lambda: len(started(log)) == 2)
        waiting = [pool.submit(admin.call, "mark", "w", log),
                   pool.submit(admin.options(tenant="someone").call, "mark", "s", log),
                   pool.submit(admin.options(tenant="limited").call, "mark", "l", log)]
        wait_until(lambda: depth("limited") == 1)
        assert depth("owner") == 1 and depth("other") == 1    # a client; a name not configured
        assert registry.get_sample_value("kernelpit_queue_depth", {"pool": "default"}) == 3
        Path(gate).touch()
        for f in busy + waiting:
            f.result(timeout=30)


def test_no_call_is_lost_or_run_twice_while_workers_are_killed(bridge, clients):
    tenants = [clients() for _ in range(3)]
    watcher = clients()
    finished = watcher.subscribe("call.finished")
    seen = []
    threading.Thread(target=lambda: seen.extend(finished), daemon=True).start()
    n = 40
    outcomes = {}
    stop = threading.Event()

    def kill_loop():
        kills = 0
        while not stop.is_set() and kills < 4:
            pids = [w.pid for w in watcher.workers() if w.pid and w.state == "busy"]
            if pids:
                os.kill(pids[0], signal.SIGKILL)
                kills += 1
            stop.wait(0.3)
        return kills

    def one(client, i):
        try:
            outcomes.setdefault(i, []).append(client.call("work", i, 0.02))
        except WorkerCrashed as exc:                         # retries used up: told, not lost
            outcomes.setdefault(i, []).append(exc)

    with ThreadPoolExecutor(13) as pool:
        killer = pool.submit(kill_loop)
        calls = [pool.submit(one, tenants[i % 3], i) for i in range(3 * n)]
        for f in calls:
            f.result(timeout=90)
        stop.set()
        assert killer.result() >= 1
    assert sorted(outcomes) == list(range(3 * n))
    assert all(len(v) == 1 for v in outcomes.values())       # one outcome each
    assert all(v[0] == i for i, v in outcomes.items() if not isinstance(v[0], Exception))
    ok = sum(not isinstance(v[0], Exception) for v in outcomes.values())
    assert ok >= 3 * n - 12
    wait_until(lambda: sum(e.tool == "work" for e in seen) >= 3 * n)
    ids = [e.call_id for e in seen if e.tool == "work"]
    assert len(ids) == len(set(ids)) == 3 * n              # each call finished exactly once
    assert sum(e.data["outcome"] == "ok" for e in seen if e.tool == "work") == ok
    assert {e.data["tenant"] for e in seen if e.tool == "work"} == {tenant(c) for c in tenants}
    wait_until(lambda: not loads(watcher))                   # nothing left waiting or running
    finished.close()
