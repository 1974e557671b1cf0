"""Orphan-proof process management, with real processes: registry, reaper, lifeline, process groups.

``python tests/test_orphans.py`` (not under pytest) measures the figures quoted in
docs/reliability.md: time for the kernels to exit after ``kill -9`` of the
controller, orphans left, and the reaper's cost when there is nothing to reap.
"""

import glob
import json
import os
import shutil
import signal
import socket
import stat
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path

import psutil
import pytest

import kernelpit
from conftest import kernel_processes, wait_until
from kernelpit.pool import leftovers, reaper
from kernelpit.pool.registry import RunRegistry, controller_identity, default_path

DEMO = "kernelpit.kernels.demo"
SPAWN_ADAPTER = '''
import subprocess
from kernelpit.kernels import tool

_children = []


@tool
def spawn_sleep(seconds: float = 1000) -> int:
    """Start a `sleep` subprocess, leave it running, return its pid."""
    p = subprocess.Popen(["sleep", str(seconds)])
    _children.append(p)
    return p.pid
'''
SCRIPT = '''
import json, sys, time, kernelpit
pool = kernelpit.Pool(adapters=[{demo!r}, "kp_spawn"], workers=2, path=[{path!r}])
sleepers = [pool.options(worker=w.id).call("spawn_sleep") for w in pool.workers()]
print(json.dumps({{"run_id": pool.run_id, "kernels": [w.pid for w in pool.workers()],
                  "sleepers": sleepers}}), flush=True)
time.sleep(600)
'''


@pytest.fixture(scope="module")
def spawn_dir(tmp_path_factory):
    d = tmp_path_factory.mktemp("adapters")
    (d / "kp_spawn.py").write_text(SPAWN_ADAPTER)
    return str(d)


def alive(procs):
    """The processes of ``procs`` that are still running (zombies count as gone)."""
    out = []
    for p in procs:
        try:
            if p.is_running() and p.status() != psutil.STATUS_ZOMBIE:
                out.append(p)
        except psutil.NoSuchProcess:
            pass
    return out


class Controller:
    """A process owning a pool: a script with an embedded Pool, or ``kernelpit serve``."""

    def __init__(self, kind, spawn_dir, lifeline=True):
        self.env = {**os.environ, "PYTHONUNBUFFERED": "1",
                    "KERNELPIT_LIFELINE": "1" if lifeline else "0"}
        if kind == "script":
            self.proc = subprocess.Popen(
                [sys.executable, "-c", SCRIPT.format(demo=DEMO, path=spawn_dir)],
                env=self.env, stdout=subprocess.PIPE, text=True)
            info = json.loads(self.proc.stdout.readline())
            self.run_id = info["run_id"]
            self.kernels = [psutil.Process(p) for p in info["kernels"]]
            self.others = [psutil.Process(p) for p in info["sleepers"]]
        else:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "kernelpit", "serve", "--adapter", DEMO, "--workers", "2",
                 "--no-discovery"], env=self.env, stderr=subprocess.PIPE, text=True)
            for line in self.proc.stderr:
                if "bridge serving" in line:
                    break
            else:
                raise AssertionError("kernelpit serve did not start")
            threading.Thread(target=self.proc.stderr.read, daemon=True).start()
            self.kernels = [p for p in psutil.Process(self.proc.pid).children(recursive=True)
                            if "kernelpit.kernels" in p.cmdline()]
            self.run_id = self.kernels[0].environ()["KERNELPIT_RUN_ID"]
            self.others = []
        assert len(self.kernels) == 2

    @property
    def everything(self):
        return self.kernels + self.others

    def kill9(self):
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait()
        return time.monotonic()

    def cleanup(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        for p in alive(self.everything):
            p.kill()


@pytest.mark.parametrize("kind", ["script", "serve"])
def test_kill_9_of_the_controller_its_kernels_and_their_children_exit_by_themselves(kind, spawn_dir):
    c = Controller(kind, spawn_dir)
    try:
        assert all(p.environ()["KERNELPIT_CONTROLLER_PID"] == str(c.proc.pid) for p in c.kernels)
        c.kill9()
        _, left = psutil.wait_procs(c.everything, timeout=10)
        assert alive(left) == []
        assert kernel_processes(c.run_id) == []
    finally:
        c.cleanup()


def test_a_script_that_ends_without_atexit_leaves_no_kernel():
    script = textwrap.dedent(f"""
        import os, kernelpit
        pool = kernelpit.Pool(adapters=[{DEMO!r}], workers=2)
        print(pool.run_id, flush=True)
        os._exit(0)  # no atexit, no close: only the lifeline is left
    """)
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    wait_until(lambda: kernel_processes(out.stdout.strip()) == [], timeout=10)


@pytest.mark.parametrize("kind", ["script", "serve"])
def test_without_the_lifeline_the_next_start_reaps_what_a_killed_controller_left(kind, spawn_dir):
    c = Controller(kind, spawn_dir, lifeline=False)
    try:
        # what it leaves on disk, seen while it lives (once it is dead, any pool start on this
        # machine may remove its shared memory, whatever its runtime dir): its shared-memory
        # directory, and its run directory (call channel, kernels' sockets, worker logs)
        assert os.path.isdir(f"/dev/shm/kernelpit-{c.run_id}")
        run_dirs = glob.glob(os.path.join(tempfile.gettempdir(), f"kernelpit-{c.run_id}-*"))
        assert len(run_dirs) == 1 and os.path.exists(os.path.join(run_dirs[0], "calls"))
        c.kill9()
        # nothing ends them by themselves now: not the lifeline, not ipykernel's parent poller
        _, left = psutil.wait_procs(c.everything, timeout=1.5)
        assert len(alive(left)) == len(c.everything)
        rows = RunRegistry().kernels(c.run_id)
        assert [r.state for r in rows] == ["active", "active"]
        assert {r.pid for r in rows} == {p.pid for p in c.kernels}
        runtime = default_path().parent.parent
        assert list(runtime.glob(f"kernel-kernelpit-{c.run_id}-*.json"))
        # the next start of any pool (same runtime dir) ends them before its workers launch
        with kernelpit.Pool(adapters=[DEMO], workers=1) as pool:
            assert alive(c.everything) == []
            assert kernel_processes(c.run_id) == []
            assert RunRegistry().kernels(c.run_id) == []
            assert not list(runtime.glob(f"kernel-kernelpit-{c.run_id}-*.json"))
            assert not os.path.exists(f"/dev/shm/kernelpit-{c.run_id}")
            assert not os.path.exists(run_dirs[0])
            assert glob.glob(os.path.join(tempfile.gettempdir(), f"kernelpit-{pool.run_id}-*"))
            assert pool.call("add", 1, 2) == 3
    finally:
        c.cleanup()


def test_a_start_removes_the_files_of_any_dead_run_and_keeps_live_ones(tmp_path):
    # runs recorded in another runtime dir's registry are unknown here: their owner files say
    # whose they are; an older version's channel directory (kp-*, no owner file) is judged by
    # whether anyone still listens on its socket
    gone = psutil.Popen(["sleep", "30"])
    gone_identity = (gone.pid, gone.create_time())
    gone.kill()
    gone.wait()
    runs, run_dirs = {}, {}
    for name, (pid, start) in {"dead": gone_identity, "live": controller_identity()}.items():
        path = f"/dev/shm/kernelpit-test{name}{os.getpid()}"
        os.makedirs(path)
        Path(path, "w1-0.arrow").write_bytes(b"x" * 1000)
        Path(path + leftovers.OWNER_SUFFIX).write_text(f"{pid} {start!r}\n")
        runs[name] = path
        run_dir = tempfile.mkdtemp(prefix=f"kernelpit-test{name}-")
        Path(run_dir, leftovers.OWNER_FILE).write_text(f"{pid} {start!r}\n")
        Path(run_dir, "worker-1.log").write_text("log")
        run_dirs[name] = run_dir
    channels, listening = {}, None
    for name in ("dead", "live"):
        path = tempfile.mkdtemp(prefix="kp-")
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.bind(f"{path}/calls")
        if name == "live":
            sock.listen()
            listening = sock
        else:
            sock.close()  # its controller died: the socket file stays, nobody listens
        old = time.time() - 2 * leftovers.LEGACY_MIN_AGE
        os.utime(path, (old, old))
        channels[name] = path
    try:
        with kernelpit.Pool(adapters=[DEMO], workers=1) as pool:
            own = f"/dev/shm/kernelpit-{pool.run_id}"
            assert os.path.isdir(own) and os.path.exists(own + leftovers.OWNER_SUFFIX)
            assert not os.path.exists(runs["dead"])
            assert not os.path.exists(runs["dead"] + leftovers.OWNER_SUFFIX)
            assert os.path.exists(Path(runs["live"], "w1-0.arrow"))
            assert not os.path.exists(run_dirs["dead"]) and not os.path.exists(channels["dead"])
            assert os.path.exists(Path(run_dirs["live"], "worker-1.log"))
            assert os.path.exists(Path(channels["live"], "calls"))
            [own_dir] = glob.glob(os.path.join(tempfile.gettempdir(), f"kernelpit-{pool.run_id}-*"))
            assert os.path.exists(Path(own_dir, "calls"))  # the call channel lives in it
        assert not os.path.exists(own) and not os.path.exists(own + leftovers.OWNER_SUFFIX)
        assert not os.path.exists(own_dir)
    finally:
        listening.close()
        for path in runs.values():
            leftovers.remove_shared_dir(path)
        for path in [*run_dirs.values(), *channels.values()]:
            shutil.rmtree(path, ignore_errors=True)


def test_the_run_registry_and_its_sidecar_files_are_private(tmp_path):
    old = os.umask(0o022)
    try:
        reg = RunRegistry(tmp_path / "kernelpit" / "registry.sqlite")
        reg.open_run("r1")
        files = sorted(p.name for p in (tmp_path / "kernelpit").iterdir())
        assert files == ["registry.sqlite", "registry.sqlite-shm", "registry.sqlite-wal"]
        for name in files:
            assert stat.S_IMODE((tmp_path / "kernelpit" / name).stat().st_mode) == 0o600, name
        reg.close()  # the last connection removes the sidecar files
        # a registry an older version made world-readable is narrowed when it is next opened
        (tmp_path / "kernelpit" / "registry.sqlite").chmod(0o644)
        reg = RunRegistry(tmp_path / "kernelpit" / "registry.sqlite")
        reg.open_run("r2")
        for name in files:
            assert stat.S_IMODE((tmp_path / "kernelpit" / name).stat().st_mode) == 0o600, name
        reg.close()
    finally:
        os.umask(old)


def test_a_tools_subprocess_dies_with_its_kernel_on_kill_and_on_close(spawn_dir):
    with kernelpit.Pool(adapters=[DEMO, "kp_spawn"], workers=1, path=[spawn_dir]) as pool:
        kernel = pool.workers()[0]
        child = psutil.Process(pool.call("spawn_sleep"))
        assert os.getpgid(child.pid) == os.getpgid(kernel.pid) == kernel.pid  # own group
        pool.restart(kernel.id)  # kill -9 of the kernel's process group
        _, left = psutil.wait_procs([child], timeout=10)
        assert alive(left) == []
        wait_until(lambda: [w for w in pool.workers() if w.state == "idle"], timeout=60)
        child = psutil.Process(pool.options(deadline=30).call("spawn_sleep"))
    _, left = psutil.wait_procs([child], timeout=10)
    assert alive(left) == []


def test_registry_rows_are_reserved_before_the_launch_and_activated_after(monkeypatch):
    from kernelpit.pool import worker as worker_module

    real_launch = worker_module.launch
    seen_at_launch = []

    async def observed_launch(spec, env, *args, **kwargs):  # the real launch, observed
        seen_at_launch.append([(r.state, r.pid) for r in RunRegistry().kernels(env["KERNELPIT_RUN_ID"])])
        return await real_launch(spec, env, *args, **kwargs)

    monkeypatch.setattr(worker_module, "launch", observed_launch)
    with kernelpit.Pool(adapters=[DEMO], workers=1) as pool:
        assert seen_at_launch == [[("reserved", None)]]
        [row] = RunRegistry().kernels(pool.run_id)
        kernel = pool.workers()[0]
        assert (row.state, row.pid, row.pgid) == ("active", kernel.pid, kernel.pid)
        assert row.create_time == pytest.approx(psutil.Process(kernel.pid).create_time())
        assert (row.controller_pid, row.controller_start) == controller_identity()
        assert row.reserved <= row.activated
        env = psutil.Process(kernel.pid).environ()
        assert env["KERNELPIT_RUN_ID"] == pool.run_id
        assert env["KERNELPIT_CONTROLLER_PID"] == str(os.getpid())
        assert float(env["KERNELPIT_CONTROLLER_START"]) == controller_identity()[1]
        assert env["KERNELPIT_REGISTRY"] == str(default_path())
        run_id = pool.run_id
    assert RunRegistry().kernels(run_id) == []
    assert run_id not in {r.run_id for r in RunRegistry().runs()}


def test_registry_rows_follow_a_kernel_through_its_states(tmp_path):
    reg = RunRegistry(tmp_path / "registry.sqlite")
    assert reg._query("PRAGMA journal_mode")[0][0] == "wal"
    reg.open_run("r1")
    reg.reserve("r1", 7)
    [row] = reg.kernels("r1")
    assert (row.state, row.pid, row.activated) == ("reserved", None, None)
    proc = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        reg.activate("r1", 7, proc.pid)
        [row] = reg.kernels("r1")
        assert (row.state, row.pid, row.pgid) == ("active", proc.pid, proc.pid)
        assert row.create_time == psutil.Process(proc.pid).create_time()
        reg.gone("r1", 7)
        assert reg.kernels("r1")[0].state == "gone"
        reg.close_run("r1")
        assert reg.kernels() == [] and reg.runs() == []
    finally:
        proc.kill()
        proc.wait()


def test_a_second_registry_in_one_process_keeps_the_first_ones_sqlite_locks(tmp_path):
    """One process, several runs (named pools, a benchmark's pools, a module's pool and a
    test's): opening the next registry must not drop the SQLite locks the first one holds.
    When it did (an open and close of the database file: POSIX locks are per process and
    file), another process's connection closing took itself for the last one, checkpointed
    and deleted the WAL under the first: "disk I/O error", lost rows, and pages of
    ``kernels`` read back as ``runs`` rows (what a user's registry showed)."""
    path = tmp_path / "registry.sqlite"
    held = RunRegistry(path)
    held.open_run("held")
    RunRegistry(path).close()  # the next run's registry, opened and closed
    code = (f"from kernelpit.pool.registry import RunRegistry\n"
            f"r = RunRegistry({str(path)!r}); r.open_run('brief'); r.close()")
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)
    assert os.path.exists(f"{path}-wal")  # still in use by `held`: not checkpointed away
    held.reserve("held", 1)
    held.close()
    with RunRegistry(path)._db as db:
        assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    reg = RunRegistry(path)
    assert {r.run_id for r in reg.runs()} == {"held", "brief"}
    assert [(k.run_id, k.worker_id) for k in reg.kernels()] == [("held", 1)]
    reg.close()


def test_the_registry_takes_concurrent_writers(tmp_path):
    path = tmp_path / "registry.sqlite"
    script = textwrap.dedent(f"""
        import os, sys
        from kernelpit.pool.registry import RunRegistry
        reg = RunRegistry({str(path)!r})
        run = sys.argv[1]
        reg.open_run(run)
        for w in range(60):
            reg.reserve(run, w)
            reg.activate(run, w, os.getpid())
            if w % 2:
                reg.gone(run, w)
    """)
    procs = [subprocess.Popen([sys.executable, "-c", script, f"run{i}"], stderr=subprocess.PIPE,
                              text=True) for i in range(4)]
    for p in procs:
        _, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
    reg = RunRegistry(path)
    assert len(reg.runs()) == 4
    rows = reg.kernels()
    assert len(rows) == 240
    assert sum(r.state == "gone" for r in rows) == 120


def marked_process(run_id, controller=None, registry=None, group=True):
    """A `sleep` carrying the run-id marker, in its own group with a child, like a kernel."""
    env = {**os.environ, "KERNELPIT_RUN_ID": run_id,
           "KERNELPIT_REGISTRY": str(registry or default_path())}
    if controller is not None:
        env["KERNELPIT_CONTROLLER_PID"], env["KERNELPIT_CONTROLLER_START"] = map(str, controller)
    return subprocess.Popen(["sh", "-c", "sleep 1000 & exec sleep 1000"], env=env,
                            start_new_session=group)


def dead_controller():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    start = psutil.Process(p.pid).create_time()
    p.wait()
    return p.pid, start


def test_the_reaper_ends_only_marked_processes_of_dead_controllers(tmp_path):
    me = controller_identity()
    dead = dead_controller()
    mine = {"rdead", "rreuse", "rlive", "rother", "runknown", "rgone"}  # (not other sessions')
    procs = {
        "dead controller": marked_process("rdead", dead),
        "reused controller pid": marked_process("rreuse", (me[0], me[1] - 1000)),
        "live controller": marked_process("rlive", me),
        "another registry": marked_process("rother", dead, registry=tmp_path / "x.sqlite"),
        "no controller known": marked_process("runknown"),
        "unmarked": subprocess.Popen(["sleep", "1000"], start_new_session=True),
    }
    reg = RunRegistry()
    # a registry row naming the unmarked process, as if its pid had been reused
    unmarked = procs["unmarked"]
    reg.open_run("rgone")
    reg.reserve("rgone", 1)
    reg.activate("rgone", 1, unmarked.pid)
    reg._db.execute("UPDATE runs SET controller_pid = ?, controller_start = ? WHERE run_id = ?",
                    (dead[0], dead[1], "rgone"))
    children = {}
    try:
        for name, proc in procs.items():
            if name != "unmarked":
                wait_until(lambda: len(psutil.Process(proc.pid).children()) == 1)
        children = {k: psutil.Process(p.pid).children() for k, p in procs.items()}
        result = reaper.reap_orphans(reg, grace=5)
        ended = {"dead controller", "reused controller pid"}
        # each marked leader and its child (which inherited the marker)
        assert {o.pid for o in result.orphans if o.run_id in mine} == {
            p.pid for k in ended for p in [procs[k], *children[k]]}
        for name, proc in procs.items():
            everything = [psutil.Process(proc.pid), *children[name]]
            if name in ended:
                _, left = psutil.wait_procs(everything, timeout=10)
                assert alive(left) == [], name
            else:
                assert len(alive(everything)) == len(everything), name
        assert "rgone" not in {r.run_id for r in reg.runs()}  # its row is forgotten
        # the other registry's orphan is left to its own registry, unless asked for everywhere
        other = {p.pid for p in [procs["another registry"], *children["another registry"]]}
        found = reaper.find_orphans(reg, everywhere=True).orphans
        assert {o.pid for o in found if o.run_id in mine} == other
        assert not [o for o in reaper.find_orphans(reg).orphans if o.run_id in mine]
        # no controller recorded, but its parent (this test) is alive: not even suspicious
        assert procs["no controller known"].pid not in reaper.find_orphans(reg).undetermined
    finally:
        for name, proc in procs.items():
            for p in alive(children.get(name, [])):
                p.kill()
            proc.kill()
            proc.wait()


def test_the_reaper_costs_little_when_there_is_nothing_to_reap():
    reg = RunRegistry()
    costs = sorted(reaper.reap_orphans(reg).scan.seconds for _ in range(20))
    scan = reaper.find_orphans(reg)
    assert scan.orphans == [] and scan.processes > 0
    print(f"\nreaper: {scan.processes} processes, median {costs[10] * 1000:.1f} ms")


# -- measurements for docs/reliability.md -------------------------------------------------------

def measure(rounds: int = 5) -> None:
    import tempfile

    os.environ["JUPYTER_RUNTIME_DIR"] = tempfile.mkdtemp(prefix="kp-measure-")
    spawn = tempfile.mkdtemp(prefix="kp-adapters-")
    Path(spawn, "kp_spawn.py").write_text(SPAWN_ADAPTER)
    for kind in ("script", "serve"):
        exits, orphans = [], 0
        for _ in range(rounds):
            c = Controller(kind, spawn)
            t0 = c.kill9()
            pending = list(c.everything)
            while alive(pending):
                psutil.wait_procs(alive(pending), timeout=0.01)
            exits.append(time.monotonic() - t0)
            orphans += len(kernel_processes(c.run_id)) + len(alive(c.others))
            c.cleanup()
        exits.sort()
        print(f"{kind}: kill -9 of the controller -> every kernel and tool subprocess gone in "
              f"median {exits[len(exits) // 2] * 1000:.0f} ms, max {exits[-1] * 1000:.0f} ms "
              f"({rounds} rounds); orphans left: {orphans}")
        c = Controller(kind, spawn, lifeline=False)
        c.kill9()
        t0 = time.perf_counter()
        result = reaper.reap_orphans(RunRegistry())
        print(f"{kind}, lifeline off: the next start's reaper ended {len(result.terminated)} "
              f"+ {len(result.killed)} (SIGKILL) processes in {(time.perf_counter() - t0) * 1000:.0f} ms; "
              f"left: {len(alive(c.everything))}")
        c.cleanup()
    reg = RunRegistry()
    costs = sorted(reaper.reap_orphans(reg).scan.seconds for _ in range(200))
    raw = []
    for _ in range(200):
        t0 = time.perf_counter()
        _, n = reaper._marked_processes()
        raw.append(time.perf_counter() - t0)
    raw.sort()
    print(f"reaper with nothing to reap, {n} processes: /proc scan median {raw[100] * 1000:.2f} ms, "
          f"scan + registry + judging median {costs[100] * 1000:.2f} ms, p95 {costs[190] * 1000:.2f} ms")


if __name__ == "__main__":
    measure()
