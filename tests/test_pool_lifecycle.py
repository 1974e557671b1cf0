"""Queueing, deadlines, cancel, crashes and clean shutdown, with real kernel processes."""

import signal
import subprocess
import sys
import textwrap
import threading
import time

import pytest

import kernelpit
from conftest import ADAPTERS, ctrl_c_at, kernel_processes, wait_until


@pytest.fixture(scope="module")
def pool():
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS]) as p:
        yield p


def busy(pool, worker_id=None):
    return [w for w in pool.workers() if w.state == "busy" and worker_id in (None, w.id)]


def full(pool, n=2):
    return sum(w.state == "idle" for w in pool.workers()) == n


def test_deadline_interrupts_a_busy_tool_and_the_worker_serves_the_next_call(pool):
    worker = pool.workers()[0].id
    with pytest.raises(kernelpit.DeadlineExceeded, match=r"spin\(\) did not finish within") as info:
        pool.options(deadline=0.3, worker=worker).call("spin", 60)
    assert isinstance(info.value, TimeoutError)
    # the same worker (one slot) answers: the spinning tool was stopped
    assert pool.options(worker=worker, deadline=10).call("add", 1, 2) == 3
    assert len(pool.workers()) == 2


def test_closing_a_stream_early_cancels_the_tool(pool):
    worker = pool.workers()[1].id
    stream = pool.options(worker=worker).stream("spin", 60)
    assert next(stream).kind == "started"
    stream.close()
    assert pool.options(worker=worker, deadline=10).call("add", 2, 2) == 4


def test_keyboard_interrupt_in_a_blocking_call_interrupts_the_tool(pool, keyboard_interrupts):
    worker = pool.workers()[0].id
    main = threading.get_ident()

    def interrupt_when_busy():
        wait_until(lambda: busy(pool, worker))
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        pool.options(worker=worker).call("spin", 60)
    assert pool.options(worker=worker, deadline=10).call("add", 3, 3) == 6


def test_ctrl_c_between_handing_a_call_to_the_loop_and_waiting_still_cancels_it(pool):
    # the interrupt lands after the call was handed to the pool's loop and before the wait
    # for it began (kernelpit.local._Handoff.run)
    worker = pool.workers()[0].id
    with pytest.raises(KeyboardInterrupt), ctrl_c_at("run", "self.done.acquire()"):
        pool.options(worker=worker).call("spin", 60)
    wait_until(lambda: not busy(pool, worker))
    assert pool.options(worker=worker, deadline=10).call("add", 3, 4) == 7


def test_a_closed_pool_says_so_and_what_to_do_for_anything_asked_of_it():
    p = kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS])
    assert p.call("add", 1, 2) == 3
    p.close()
    for ask in (lambda: p.call("add", 1, 2), lambda: p.stream("add", 1, 2), p.workers,
                lambda: p.map("add", [1], [2])):
        with pytest.raises(kernelpit.PoolClosed, match="open a new one"):
            ask()


def test_interrupt_worker_cancels_its_running_call(pool):
    worker = pool.workers()[1].id
    stream = pool.options(worker=worker).stream("spin", 60)
    assert next(stream).kind == "started"
    pool.interrupt(worker)
    last = list(stream)[-1]
    assert last.kind == "error" and isinstance(last.error, kernelpit.Cancelled)
    assert pool.options(worker=worker, deadline=10).call("add", 1, 1) == 2


def test_a_tool_stuck_in_c_is_restarted_after_the_cancel_grace():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS], cancel_grace=0.5) as p:
        old = p.workers()[0]
        with pytest.raises(kernelpit.DeadlineExceeded):
            p.options(deadline=0.2).call("c_sleep_uninterruptible", 60)
        # the next call waits for the replacement worker, then runs
        assert p.options(deadline=30).call("add", 1, 2) == 3
        new = p.workers()[0]
        assert new.id != old.id and new.pid != old.pid


def test_queue_full_fails_at_once_naming_the_bound():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, queue_size=1, path=[ADAPTERS]) as p:
        running = p.stream("sleep", 30)
        assert next(running).kind == "started"
        waiting = p.stream("add", 1)
        first = next(waiting)
        assert first.kind == "queued" and first.position == 0
        with pytest.raises(kernelpit.QueueFull, match=r"1 calls are already waiting \(queue_size=1\)"):
            p.call("add", 2)
        running.close()  # cancel the sleeper: the queued call then runs
        assert [e.kind for e in waiting][-2:] == ["started", "result"]


def test_calls_wait_in_fifo_order_for_a_free_worker():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as p:
        blocker = p.stream("sleep", 30)
        next(blocker)
        streams = [p.stream("add", i) for i in range(5)]
        positions = [next(s).position for s in streams]
        assert positions == [0, 1, 2, 3, 4]
        blocker.close()
        results = []
        for s in streams:
            events = list(s)
            results.append((events[-1].value, events[-1].time))
        assert [r[0] for r in results] == [0, 1, 2, 3, 4]
        assert [r[1] for r in results] == sorted(r[1] for r in results)


def test_thread_safe_tools_run_side_by_side_on_one_worker():
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, concurrency=2, path=[ADAPTERS]) as p:
        a = p.stream("ts_sleep", 0.5)
        b = p.stream("ts_sleep", 0.5)
        assert next(a).kind == "started" and next(b).kind == "started"  # both running at once
        assert list(a)[-1].value == 0.5 and list(b)[-1].value == 0.5
        # a tool that is not thread-safe waits for the worker to be free
        c = p.stream("ts_sleep", 0.5)
        next(c)
        d = p.stream("add", 1)
        assert next(d).kind == "queued"
        assert list(d)[-1].value == 1


def test_each_executor_of_a_worker_gets_calls_of_its_own():
    # calls go straight to an executor thread's connection: two thread-safe calls on a worker
    # of two executors must run at once on different threads, then the next on either
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, concurrency=2, path=[ADAPTERS]) as p:
        for round_ in range(3):
            a, b = (p.stream("ts_meet", f"m{round_}", 2, 10) for _ in range(2))
            threads = {list(a)[-1].value, list(b)[-1].value}
            assert threads == {"kernelpit-exec-0", "kernelpit-exec-1"}
        assert p.call("add", 2, 2) == 4


def test_kill_9_mid_call_raises_worker_crashed_and_the_pool_refills(pool):
    target = pool.workers()[0]
    killer = threading.Thread(target=lambda: (wait_until(lambda: busy(pool, target.id)),
                                              __import__("os").kill(target.pid, signal.SIGKILL)))
    killer.start()
    with pytest.raises(kernelpit.WorkerCrashed) as info:
        pool.options(worker=target.id).call("sleep", 30)
    killer.join()
    err = info.value
    assert err.worker == target.id and err.signal == "SIGKILL" and err.exit_code == -9
    assert f"worker {target.id} was killed (SIGKILL) while running sleep()" in str(err)
    assert err.reason == "killed"
    wait_until(lambda: full(pool))
    assert target.id not in {w.id for w in pool.workers()}
    assert pool.call("add", 1, 1) == 2


def test_session_on_a_dead_worker_raises_session_lost(pool):
    wait_until(lambda: full(pool))
    with pool.session() as s:
        s.call("remember", "k", 1)
        pid = next(w.pid for w in pool.workers() if w.id == s.worker)
        __import__("os").kill(pid, signal.SIGKILL)
        wait_until(lambda: s.worker not in {w.id for w in pool.workers()})
        with pytest.raises(kernelpit.SessionLost, match="its state is gone"):
            s.call("remember", "k")
    wait_until(lambda: full(pool))


# -- start failures and shutdown -----------------------------------------------------------------

@pytest.mark.parametrize("adapters, message", [
    (["kp_bad_import"], r"adapter module 'kp_bad_import' failed to import: RuntimeError: this adapter is broken"),
    (["kp_tools", "kp_dup"], r"duplicate tool name 'add': defined in 'kp_tools' and again in 'kp_dup'"),
    (["no_such_module_xyz"], r"No module named 'no_such_module_xyz'"),
])
def test_bad_adapter_fails_start_naming_worker_and_cause_and_leaves_no_process(adapters, message):
    before = {p.pid for p in kernel_processes()}
    with pytest.raises(kernelpit.StartError, match=message) as info:
        kernelpit.Pool(adapters=adapters, workers=2, path=[ADAPTERS])
    assert "worker " in str(info.value)
    assert {p.pid for p in kernel_processes()} <= before


def test_a_kernel_that_dies_at_start_fails_start_with_its_exit_and_log(tmp_path):
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho 'fatal: no GPU found' >&2\nexit 3\n")
    fake.chmod(0o755)
    with pytest.raises(kernelpit.StartError, match=r"exited with code 3 during start") as info:
        kernelpit.Pool(adapters=["kp_tools"], workers=1, python=str(fake))
    assert "fatal: no GPU found" in str(info.value)


def test_a_missing_python_fails_start_saying_so(tmp_path):
    with pytest.raises(kernelpit.StartError, match=r"could not be launched: FileNotFoundError"):
        kernelpit.Pool(adapters=["kp_tools"], workers=1, python=str(tmp_path / "no-python"))


def test_readiness_timeout_fails_start():
    # an exec'd kernel starts Python and imports ipykernel first: never within 10 ms, where a
    # kernel forked from the zygote can be ready within 10 ms on a fast host
    with pytest.raises(kernelpit.StartError, match=r"did not become ready within 0.01 s"):
        kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS], start_timeout=0.01,
                       spawn="exec")


@pytest.mark.parametrize("how", ["normal", "exception", "keyboardinterrupt"])
def test_leaving_the_with_block_stops_every_kernel(how):
    error = {"normal": None, "exception": RuntimeError, "keyboardinterrupt": KeyboardInterrupt}[how]
    run_id = None
    try:
        with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS]) as p:
            run_id = p.run_id
            assert len(kernel_processes(run_id)) == 2
            if error:
                raise error()
    except (RuntimeError, KeyboardInterrupt):
        pass
    assert run_id and kernel_processes(run_id) == []


def test_a_script_that_never_closes_its_pool_leaves_no_kernel():
    script = textwrap.dedent(f"""
        import kernelpit
        pool = kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[{ADAPTERS!r}])
        print(pool.run_id, flush=True)
        assert pool.call("add", 1, 2) == 3
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    run_id = out.stdout.strip()
    wait_until(lambda: kernel_processes(run_id) == [], timeout=10)
