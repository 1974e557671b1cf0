"""The kernel fork-server (spawn="fork"): workers forked from a per-pool zygote.

The safety tests run in the mode ``KERNELPIT_SPAWN`` selects (the default: fork on Linux),
so that ``KERNELPIT_SPAWN=exec python -m pytest tests/test_forkserver.py`` checks the same
guarantees without the zygote; the tests of the zygote itself ask for ``spawn="fork"``.
"""

import json
import os
import signal
import subprocess
import sys

import psutil
import pytest
from jupyter_client import BlockingKernelClient

import kernelpit
from kernelpit.config import PoolConfig, fork_supported
from conftest import ADAPTERS, kernel_processes, wait_until

needs_fork = pytest.mark.skipif(not fork_supported(), reason="the fork-server needs Linux (pidfd)")


def forked() -> bool:
    return PoolConfig().forks


def zygotes(run_id: str) -> list[psutil.Process]:
    """The live zygote processes of one run."""
    found = []
    for proc in psutil.process_iter():
        try:
            if "kernelpit.kernels.zygote" in proc.cmdline() and \
                    proc.status() != psutil.STATUS_ZOMBIE and \
                    proc.environ().get("KERNELPIT_RUN_ID") == run_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


def idle_pids(pool, n: int) -> set[int]:
    """Wait until the pool has ``n`` idle workers; their pids."""
    wait_until(lambda: [w.state for w in pool.workers()] == ["idle"] * n)
    return {w.pid for w in pool.workers()}


@pytest.fixture(scope="module")
def pool():
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS]) as p:
        yield p


def test_the_mode_in_use_is_the_one_asked_for(pool):
    parents = {psutil.Process(w.pid).ppid() for w in pool.workers()}
    if forked():  # every worker is a child of the pool's one zygote, in its own session
        assert len(parents) == 1 and parents != {os.getpid()}
        assert [z.pid for z in zygotes(pool.run_id)] == list(parents)
        assert all(os.getpgid(w.pid) == os.getsid(w.pid) == w.pid for w in pool.workers())
    else:
        assert parents == {os.getpid()} and zygotes(pool.run_id) == []


def test_a_segfault_is_reported_as_one_and_the_worker_replaced(pool):
    before = idle_pids(pool, 2)
    with pytest.raises(kernelpit.WorkerCrashed, match=r"segmentation fault \(SIGSEGV\)") as info:
        pool.call("segfault")
    assert info.value.signal == "SIGSEGV"  # the zygote reported the child's exit status
    after = idle_pids(pool, 2)
    assert len(after - before) == 1 and pool.call("add", 1, 2) == 3
    pool.untaint("segfault")


def test_kill_9_of_a_busy_worker_fails_its_call_as_killed_and_replaces_it(pool):
    before = idle_pids(pool, 2)
    worker = pool.workers()[0]
    stream = pool.options(worker=worker.id).stream("spin", 60)
    assert next(stream).kind == "started"
    os.kill(worker.pid, signal.SIGKILL)
    last = list(stream)[-1]
    assert isinstance(last.error, kernelpit.WorkerCrashed) and "SIGKILL" in str(last.error)
    after = idle_pids(pool, 2)
    assert worker.pid not in after and len(after - before) == 1


def test_a_deadline_cancels_the_tool_and_the_worker_serves_on(pool):
    worker = pool.workers()[0]
    with pytest.raises(kernelpit.DeadlineExceeded):
        pool.options(worker=worker.id, deadline=0.5).call("spin", 30)
    assert pool.options(worker=worker.id).call("pid") == worker.pid  # same process, still serving


def test_interrupt_stops_a_running_cell_through_the_connection_file(pool):
    worker = pool.workers()[0]
    client = BlockingKernelClient(connection_file=worker.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=20)
        reply = client.execute_interactive("21 * 2", timeout=20,
                                           user_expressions={"x": "21 * 2"})
        assert reply["content"]["user_expressions"]["x"]["data"]["text/plain"] == "42"
        # interrupt once the cell's own code runs: a SIGINT between the kernel's "busy" and
        # the cell is ignored by ipykernel (a plain ipykernel too), so "busy" is too early
        msg_id = client.execute("import time; print('running', flush=True); time.sleep(60)")
        wait_until(lambda: _printed(client, msg_id, "running"), timeout=10)
        pool.interrupt(worker.id)
        reply = client.get_shell_msg(timeout=20)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        client.stop_channels()
    assert pool.options(worker=worker.id).call("add", 2, 3) == 5


def _printed(client, msg_id: str, text: str) -> bool:
    """True once the cell ``msg_id`` printed ``text`` (an iopub stream message)."""
    while client.iopub_channel.msg_ready():
        msg = client.get_iopub_msg(timeout=1)
        if msg["msg_type"] == "stream" and msg["parent_header"].get("msg_id") == msg_id \
                and text in msg["content"]["text"]:
            return True
    return False


def test_a_recycle_replaces_the_worker_and_reuses_the_zygote(pool):
    zygote_before = [z.pid for z in zygotes(pool.run_id)]
    old = pool.workers()[0]
    pool.recycle(old.id)
    wait_until(lambda: old.id not in {w.id for w in pool.workers()}
               and len(pool.workers()) == 2)
    idle_pids(pool, 2)
    assert [z.pid for z in zygotes(pool.run_id)] == zygote_before  # not rebuilt per recycle
    wait_until(lambda: ended(old.pid))


def ended(pid):
    """The process is gone or a zombie (checked in one step: it may vanish in between)."""
    try:
        return psutil.Process(pid).status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


ORPHAN_SCRIPT = '''
import json, os, sys, time, kernelpit
pool = kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[{path!r}])
print(json.dumps({{"run_id": pool.run_id, "kernels": [w.pid for w in pool.workers()]}}),
      flush=True)
time.sleep(600)
'''


def test_kill_9_of_the_controller_leaves_no_kernel_and_no_zygote():
    proc = subprocess.Popen([sys.executable, "-c", ORPHAN_SCRIPT.format(path=ADAPTERS)],
                            stdout=subprocess.PIPE, text=True)
    try:
        info = json.loads(proc.stdout.readline())
        kernels = [psutil.Process(p) for p in info["kernels"]]
        held = kernels + zygotes(info["run_id"])
        assert len(held) == (3 if forked() else 2)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        _, left = psutil.wait_procs(held, timeout=15)
        assert [p for p in left if p.is_running() and p.status() != psutil.STATUS_ZOMBIE] == []
        assert kernel_processes(info["run_id"]) == [] and zygotes(info["run_id"]) == []
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


THREADED_ADAPTER = '''
import threading, time
from kernelpit.kernels import tool

threading.Thread(target=time.sleep, args=(3600,), daemon=True).start()  # at import: fork-unsafe


@tool
def threads() -> int:
    return threading.active_count()
'''


@needs_fork
def test_an_adapter_that_starts_threads_at_import_is_refused_by_fork_and_runs_with_exec(tmp_path):
    (tmp_path / "kp_threaded.py").write_text(THREADED_ADAPTER)
    with pytest.raises(kernelpit.StartError, match=r"started 1 thread\(s\).*spawn='exec'"):
        kernelpit.Pool(adapters=["kp_threaded"], workers=1, path=[str(tmp_path)], spawn="fork")
    with kernelpit.Pool(adapters=["kp_threaded"], workers=1, path=[str(tmp_path)],
                        spawn="exec") as pool:
        assert pool.call("threads") >= 2
        assert psutil.Process(pool.workers()[0].pid).ppid() == os.getpid()


def test_fork_is_the_default_where_supported_and_the_environment_overrides_it(monkeypatch):
    from kernelpit.config import fork_supported

    monkeypatch.delenv("KERNELPIT_SPAWN", raising=False)
    assert PoolConfig().spawn == ("fork" if fork_supported() else "exec")
    monkeypatch.setenv("KERNELPIT_SPAWN", "exec")
    assert PoolConfig().spawn == "exec" and not PoolConfig().forks


def test_pools_with_their_own_python_always_exec():
    assert not PoolConfig(python=sys.executable, spawn="fork").forks
    assert not PoolConfig(spawn="exec").forks
    with pytest.raises(ValueError, match="spawn must be 'fork' or 'exec'"):
        PoolConfig(spawn="vfork")


VERSIONED = '''
from kernelpit.kernels import tool


@tool
def version() -> int:
    return {n}
'''


def test_reload_and_a_recycle_after_an_edit_run_the_new_code(tmp_path):
    adapter = tmp_path / "kp_versioned.py"
    adapter.write_text(VERSIONED.format(n=1))
    with kernelpit.Pool(adapters=["kp_versioned"], workers=2, path=[str(tmp_path)]) as pool:
        assert pool.call("version") == 1
        zygote_before = {z.pid for z in zygotes(pool.run_id)}
        adapter.write_text(VERSIONED.format(n=2) + "\n")
        os.utime(adapter, ns=(os.stat(adapter).st_atime_ns, os.stat(adapter).st_mtime_ns + 10**9))
        assert pool.reload() == 2
        wait_until(lambda: len(pool.workers()) == 2
                   and all(w.recycle_reason == "reload" for w in pool.workers()), timeout=60)
        assert {pool.options(worker=w.id).call("version") for w in pool.workers()} == {2}
        if forked():  # a new zygote; the old one exits once its last worker has
            wait_until(lambda: {z.pid for z in zygotes(pool.run_id)}.isdisjoint(zygote_before))
            assert len(zygotes(pool.run_id)) == 1
        # an edit without reload: the next recycle notices the changed file (fork) or simply
        # starts a fresh process (exec)
        adapter.write_text(VERSIONED.format(n=3) + "\n\n")
        os.utime(adapter, ns=(os.stat(adapter).st_atime_ns, os.stat(adapter).st_mtime_ns + 10**9))
        old = pool.workers()[0]
        pool.recycle(old.id)
        wait_until(lambda: old.id not in {w.id for w in pool.workers()}
                   and len(pool.workers()) == 2, timeout=60)
        new = [w for w in pool.workers() if w.recycle_reason == "manual"][0]
        assert pool.options(worker=new.id).call("version") == 3


@needs_fork
def test_a_forked_worker_is_a_kernel_of_its_own(tmp_path):
    """What a worker inherits from the zygote is code, not state: its own pid, session,
    environment, random state, working directory and command line."""
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS], spawn="fork",
                        env={"KP_MARK": "x"}, cwd=str(tmp_path)) as pool:
        probe = ("(os.getpid(), os.environ.get('KERNELPIT_WORKER'), os.environ.get('KP_MARK'), "
                 "random.random(), os.getcwd())")
        seen = []
        for w in pool.workers():
            client = BlockingKernelClient(connection_file=w.connection_file)
            client.load_connection_file()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=20)
                reply = client.execute_interactive("import os, random", user_expressions={"p": probe},
                                                   timeout=20)
                seen.append(reply["content"]["user_expressions"]["p"]["data"]["text/plain"])
            finally:
                client.stop_channels()
            assert "kernelpit.kernels" in psutil.Process(w.pid).cmdline()
        values = [eval(s) for s in seen]  # noqa: S307 - our own kernels' reprs of plain values
        assert [v[0] for v in values] == [w.pid for w in pool.workers()]
        assert [v[1] for v in values] == [str(w.id) for w in pool.workers()]
        assert {v[2] for v in values} == {"x"} and {v[4] for v in values} == {str(tmp_path)}
        assert values[0][3] != values[1][3]  # each child reseeded its random state


@needs_fork
def test_a_forked_workers_shell_is_its_own(tmp_path):
    """The zygote builds the IPython shell before forking: each worker's shell must still be
    wired to its own kernel, hold its own namespace and counters, and see the environment
    settings a kernel's shell makes (the child's environment replaced the zygote's).  The
    zygote leaves ``kernelpit``'s package body unrun until used: a tool still sees it whole."""
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS], spawn="fork",
                        cwd=str(tmp_path)) as pool:
        probe = ("(get_ipython().kernel.shell is get_ipython(), "
                 "get_ipython().parent is get_ipython().kernel, "
                 "os.environ.get('PAGER'), str(_dh[-1]), 'mark' in globals(), "
                 "get_ipython().execution_count, kernelpit.__version__, "
                 "kernelpit.WorkerCrashed.__name__)")
        seen = []
        for i, w in enumerate(pool.workers()):
            client = BlockingKernelClient(connection_file=w.connection_file)
            client.load_connection_file()
            client.start_channels()
            try:
                client.wait_for_ready(timeout=20)
                client.execute_interactive("import os, kernelpit" if i else
                                           "import os, kernelpit; mark = 1", timeout=20)
                reply = client.execute_interactive("pass", user_expressions={"p": probe},
                                                   timeout=20)
                seen.append(reply["content"]["user_expressions"]["p"]["data"]["text/plain"])
                error = client.execute_interactive("1/0", timeout=20)["content"]
                assert error["status"] == "error" and error["ename"] == "ZeroDivisionError"
            finally:
                client.stop_channels()
        values = [eval(s) for s in seen]  # noqa: S307 - our own kernels' reprs of plain values
        assert [v[:4] for v in values] == [(True, True, "cat", str(tmp_path))] * 2
        assert [v[4] for v in values] == [True, False]  # one worker's name is not the other's
        assert [v[5] for v in values] == [3, 3]  # its own execution counter
        assert [v[6:] for v in values] == [(kernelpit.__version__, "WorkerCrashed")] * 2


def test_a_workers_memory_counts_the_processes_it_started():
    """A worker's RSS (what max_memory recycles on) includes the processes its code started,
    from any of its threads, and their children: read from the kernel's process tree."""
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as pool:
        w = pool.workers()[0]
        alone = w.rss
        client = BlockingKernelClient(connection_file=w.connection_file)
        client.load_connection_file()
        client.start_channels()
        hog = ("import subprocess, sys, threading\n"
               "code = 'x = bytearray(300 * 2**20); import time; time.sleep(120)'\n"
               "inner = f'import subprocess, sys; subprocess.run([sys.executable, \"-c\", {code!r}])'\n"
               "started = []\n"
               "t = threading.Thread(target=lambda: started.append(\n"
               "    subprocess.Popen([sys.executable, '-c', inner])))\n"
               "t.start(); t.join()\n")
        try:
            client.wait_for_ready(timeout=20)
            reply = client.execute_interactive(hog, timeout=20)
            assert reply["content"]["status"] == "ok"
            # a grandchild, started from a thread other than the kernel's main one
            wait_until(lambda: pool.workers()[0].rss > alone + 250 * 2**20, timeout=30)
        finally:
            client.execute_interactive("started[0].kill()", timeout=20)
            client.stop_channels()


@needs_fork
def test_a_start_that_fails_before_a_forking_pool_is_built_leaves_no_zygote():
    """A forking pool's zygote starts first, before its pool is built: a start that fails in
    between (here the pool built before it names a missing kernelspec) ends it too."""
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(kernelpit.StartError, match="no kernelspec named"):
        kernelpit.Pool(pools={
            "missing": {"adapters": ["kp_tools"], "path": [ADAPTERS], "kernelspec": "kp-none"},
            "forked": {"adapters": ["kp_tools"], "path": [ADAPTERS], "workers": 1,
                       "spawn": "fork"}})
    left = [p for p in psutil.Process().children(recursive=True) if p.pid not in before]
    assert [p.cmdline()[:4] for p in left] == []
