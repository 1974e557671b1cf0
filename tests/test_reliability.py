"""Recycling, health, crash barrier: fault injection on real kernel processes."""

import contextlib
import os
import random
import signal
import threading
import time

import numpy as np
import psutil
import pytest

import kernelpit
from conftest import ADAPTERS, wait_until
from kernelpit.pool.crash import classify, crash_message


def serving(pool):
    return [w for w in pool.workers() if w.state in ("idle", "busy") and not w.spare]


def load(pool, stop: threading.Event, tool: str, *args, callers: int = 4, limit: int = 5000):
    """Call ``tool`` from several threads until ``stop``; returns (results, failures)."""
    results, failures = [], []

    def caller():
        for _ in range(limit):
            if stop.is_set():
                return
            try:
                results.append(pool.options(deadline=60).call(tool, *args))
            except Exception as exc:  # noqa: BLE001 - every failure is counted
                failures.append(exc)

    threads = [threading.Thread(target=caller) for _ in range(callers)]
    for t in threads:
        t.start()
    return threads, results, failures


def test_leaking_tool_is_recycled_at_the_memory_threshold_with_no_failed_call():
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS], max_memory="130MB",
                        health_interval=0.2) as pool:
        first = {w.id for w in pool.workers()}
        stop = threading.Event()
        threads, results, failures = load(pool, stop, "leak", 4, callers=3, limit=400)
        recycled = wait_until(lambda: [w for w in pool.workers() if w.recycle_reason == "memory"],
                              timeout=60)
        wait_until(lambda: len(results) > 60, timeout=60)
        stop.set()
        for t in threads:
            t.join()
        assert failures == []
        assert recycled[0].recycles >= 1 and recycled[0].id not in first
        for w in pool.workers():
            assert w.recycle_in["bytes"] >= 0


@pytest.mark.parametrize("setting", [{"max_calls": 40}, {"max_age": 1.0}])
def test_recycling_by_calls_and_age_under_load_fails_no_call(setting):
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS], health_interval=0.2,
                        **setting) as pool:
        reason = "max_calls" if "max_calls" in setting else "ttl"
        first = {w.id for w in pool.workers()}
        stop = threading.Event()
        threads, results, failures = load(pool, stop, "sleep", 0.005)
        wait_until(lambda: sum(w.recycles for w in serving(pool)) >= 3, timeout=60)
        stop.set()
        for t in threads:
            t.join()
        assert failures == [] and len(results) > 40
        assert all(w.recycle_reason == reason for w in serving(pool))
        assert not first & {w.id for w in serving(pool)}


def test_manual_recycle_lets_the_running_call_finish_and_replaces_the_worker(tmp_path):
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as pool:
        old = pool.workers()[0]
        release = tmp_path / "release"
        running = pool.stream("wait_file", str(release))
        assert next(running).kind == "started"
        pool.recycle(old.id)
        wait_until(lambda: any(w.state == "recycling" for w in pool.workers()))
        assert pool.call("add", 1, 2) == 3  # served by the successor while the old one drains
        release.touch()
        assert list(running)[-1].value == "released"
        wait_until(lambda: [w.id for w in pool.workers()] != [old.id] and len(pool.workers()) == 1)
        new = pool.workers()[0]
        assert new.recycles == 1 and new.recycle_reason == "manual"


def manager(pool):
    """The PoolManager behind an embedded pool (its crash barrier's counters)."""
    return pool._async._backend.manager


def on_loop(pool, fn, *args):
    """Run ``fn(*args)`` on the pool's event loop (the manager is not thread-safe)."""
    async def run():
        return fn(*args)
    return pool._portal.call(run)


def test_kills_from_outside_never_taint_the_tool_nor_slow_the_refill():
    # issue 12: kill -9 of workers from outside once quarantined the innocent tool they ran
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS],
                        taint_threshold=3) as pool:
        group = manager(pool).groups["default"]
        stop = threading.Event()
        threads, results, failures = load(pool, stop, "sleep", 0.05)
        rng = random.Random(7)
        kills = 0
        while kills < 20:
            victim = rng.choice(wait_until(lambda: serving(pool), timeout=60))
            with contextlib.suppress(ProcessLookupError):
                os.kill(victim.pid, signal.SIGKILL)
                kills += 1
            wait_until(lambda: victim.id not in {w.id for w in pool.workers()})
            # and its replacement while it starts (once it has a process), when seen in time
            starting = wait_until(lambda: [w for w in pool.workers() if w.state == "starting"
                                           and w.pid] or len(serving(pool)) == 2, timeout=60)
            if starting is not True:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(starting[0].pid, signal.SIGKILL)
                    kills += 1
        wait_until(lambda: len(serving(pool)) == 2, timeout=60)
        stop.set()
        for t in threads:
            t.join(timeout=90)
            assert not t.is_alive(), "a caller hung"
        assert results, "no call succeeded"
        assert not [f for f in failures if isinstance(f, kernelpit.ToolTainted)]
        assert all(isinstance(f, kernelpit.WorkerCrashed) and f.reason == "killed"
                   for f in failures), failures[:3]
        assert on_loop(pool, group.taints.count, "sleep") == 0
        assert group.start_backoffs == 0  # no kill pushed the refill into backoff
        assert group.starts_killed >= 1   # (some kills did hit a starting worker)
        assert pool.call("add", 1, 1) == 2


def test_idempotent_call_is_retried_on_a_fresh_worker_after_a_crash(tmp_path):
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS]) as pool:
        assert pool.options(idempotent=True).call("crash_once", str(tmp_path / "a")) == "ok"
        assert pool.call("crash_once_idempotent", str(tmp_path / "b")) == "ok"  # flag on the tool
        with pytest.raises(kernelpit.WorkerCrashed, match=r"was killed \(SIGKILL\) while running crash_once\(\)"):
            pool.call("crash_once", str(tmp_path / "c"))


def test_crashes_are_classified_in_words():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as pool:
        with pytest.raises(kernelpit.WorkerCrashed, match=r"segmentation fault \(SIGSEGV\) while running segfault\(\); RSS was") as info:
            pool.call("segfault")
        assert info.value.reason == "segfault" and info.value.signal == "SIGSEGV"
        with pytest.raises(kernelpit.WorkerCrashed, match=r"aborted \(SIGABRT\) while running abort\(\)") as info:
            pool.options(deadline=60).call("abort")
        assert info.value.reason == "abort"


def test_oom_kill_is_named_from_the_memory_it_held():
    death = classify(-9, rss=10**15, oom_before=None)
    assert death.reason == "oom"
    assert crash_message(3, death, "while running train()") == (
        "worker 3 was killed by the OOM killer while running train(); RSS was 1000.0 TB")
    assert classify(-9, rss=50_000_000, oom_before=None).reason == "killed"
    assert classify(3, rss=0, oom_before=None).describe() == "exited with code 3"


def test_a_tool_that_keeps_crashing_workers_is_tainted_until_untainted():
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS],
                        taint_threshold=3, taint_period=60) as pool:
        for _ in range(3):
            with pytest.raises(kernelpit.WorkerCrashed):
                pool.options(deadline=60).call("segfault")
        before = time.time()
        with pytest.raises(kernelpit.ToolTainted, match=r"segfault\(\) crashed 3 workers .* "
                           r"quarantined .* lifts in \d+ s, at \d\d:\d\d:\d\d.* "
                           r"pool.untaint\('segfault'\) or `kernelpit untaint segfault`") as info:
            pool.call("segfault")
        assert not isinstance(info.value, kernelpit.WorkerCrashed)  # a refusal, not a crash
        assert before + 50 < info.value.until <= time.time() + 60
        assert pool.options(deadline=60).call("add", 2, 2) == 4  # the pool itself keeps serving
        assert on_loop(pool, manager(pool).untaint, "segfault") is True
        assert on_loop(pool, manager(pool).untaint, "segfault") is False  # nothing left to lift
        with pytest.raises(kernelpit.WorkerCrashed, match="segmentation fault"):  # it runs again
            pool.options(deadline=60).call("segfault")
        with pytest.raises(kernelpit.ToolNotFound):
            on_loop(pool, manager(pool).untaint, "no_such_tool")
        with pytest.raises(kernelpit.PoolNotFound, match=r"no pool named 'nope' .*pools: default"):
            on_loop(pool, manager(pool).untaint, "segfault", "nope")
        wait_until(lambda: len(serving(pool)) == 2)


def test_an_unhealthy_workers_calls_fail_and_their_shared_memory_is_reclaimed():
    # the call that froze the worker, and one that was sent to it after: the frozen agent never
    # read that one's array, whose shared-memory file the pool must remove
    with kernelpit.Pool(adapters=["kp_faults"], workers=1, concurrency=2, path=[ADAPTERS],
                        shm_threshold=1000, health_interval=0.2, health_timeout=1.0) as pool:
        shm = f"/dev/shm/kernelpit-{pool.run_id}"
        worker = pool.workers()[0]
        freezing = pool.stream("ts_freeze")
        assert next(freezing).kind == "started"
        wait_until(lambda: psutil.Process(worker.pid).status() == psutil.STATUS_STOPPED)
        unread = pool.stream("ts_size", np.arange(10_000, dtype=np.float64))
        assert next(unread).kind == "started"
        assert [n for n in os.listdir(shm) if n.startswith("c")]  # its argument, not yet read
        for stream in (freezing, unread):
            last = list(stream)[-1]
            assert last.kind == "error" and isinstance(last.error, kernelpit.WorkerCrashed)
            assert "stopped answering" in str(last.error) and "killed and replaced" in str(last.error)
        assert [n for n in os.listdir(shm) if n.startswith("c")] == []
        wait_until(lambda: len(serving(pool)) == 1)


def test_opening_a_session_waits_for_a_ready_worker():
    # issue 12: with no ready worker (its one worker being replaced), it raised PoolClosed
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as pool:
        old = pool.workers()[0]
        pool.restart(old.id)
        wait_until(lambda: not serving(pool))
        info = pool._portal.call(manager(pool).open_session, None, None, {})
        assert info.worker != old.id and info.worker in {w.id for w in serving(pool)}


def test_a_frozen_worker_is_detected_as_unhealthy_and_replaced():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS], health_interval=0.2,
                        health_timeout=1.0) as pool:
        old = pool.workers()[0]
        with pytest.raises(kernelpit.WorkerCrashed, match=r"stopped answering .* while running freeze\(\); it was killed and replaced"):
            pool.options(deadline=60).call("freeze")
        assert pool.options(deadline=60).call("add", 1, 1) == 2
        new = pool.workers()[0]
        assert new.id != old.id and new.recycle_reason == "unhealthy"
        # the replacement is watched too: its heartbeats arrive
        wait_until(lambda: pool.workers()[0].last_heartbeat is not None)


def test_a_warm_spare_takes_a_dead_workers_place():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, spares=1, path=[ADAPTERS]) as pool:
        spare = wait_until(lambda: [w for w in pool.workers() if w.spare and w.state == "idle"])[0]
        victim = serving(pool)[0]
        os.kill(victim.pid, signal.SIGKILL)
        wait_until(lambda: [w.id for w in serving(pool)] == [spare.id])
        assert pool.call("pid") == spare.pid
        wait_until(lambda: [w for w in pool.workers() if w.spare and w.state == "idle"])


def test_health_fields_are_reported():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS], health_interval=0.1,
                        max_calls=10, max_age=3600) as pool:
        pool.call("add", 1)
        wait_until(lambda: pool.workers()[0].last_heartbeat is not None)
        w = pool.workers()[0]
        assert w.recycle_in["calls"] == 9 and 3500 < w.recycle_in["seconds"] <= 3600
        assert w.recycles == 0 and w.recycle_reason is None and w.cpu >= 0
