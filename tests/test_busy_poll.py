"""The busy-polling selector and loop (kernelpit.busy_poll), on real sockets.

Budgets here are tens of milliseconds, far longer than the microseconds a ready socket takes
to report, so that what a wait counts as (short or long) does not hang on this machine's
load; the default budget's effect on calls is measured in benchmarks/, not here."""

import asyncio
import os
import socket
import subprocess
import sys
import threading
import time

import psutil
import pytest

from conftest import wait_until
from kernelpit import busy_poll

BUDGET = 0.05


@pytest.fixture
def pair():
    a, b = socket.socketpair()
    a.setblocking(False)
    yield a, b
    a.close()
    b.close()


def short_waits(selector, a, b, n):
    for _ in range(n):
        b.send(b"x")
        ready = selector.select(None)
        assert [key.fileobj for key, _ in ready] == [a]
        assert a.recv(16) == b"x"


def test_a_selector_polls_while_its_waits_are_short_and_stops_when_they_are_long(pair):
    a, b = pair
    with busy_poll.BusyPollSelector(BUDGET) as selector:
        selector.register(a, busy_poll.selectors.EVENT_READ)
        assert not selector.polling  # it starts asleep: nothing learnt yet
        short_waits(selector, a, b, 24)
        assert selector.polling
        short_waits(selector, a, b, 4)
        assert selector.polls > 0
        for _ in range(8):  # nothing comes within the budget: an idle loop
            assert selector.select(2 * BUDGET) == []
        assert not selector.polling


def test_a_polling_selector_returns_late_events_and_wakes_for_its_timers(pair):
    a, b = pair
    with busy_poll.BusyPollSelector(BUDGET) as selector:
        selector.register(a, busy_poll.selectors.EVENT_READ)
        short_waits(selector, a, b, 24)
        # an event after the budget: found by the sleep that follows the poll
        writer = threading.Timer(3 * BUDGET, b.send, (b"late",))
        writer.start()
        ready = selector.select(None)
        writer.join()
        assert [key.fileobj for key, _ in ready] == [a] and a.recv(16) == b"late"
        short_waits(selector, a, b, 12)
        assert selector.polling
        # a timer due within the budget: the poll ends then, with nothing
        t0 = time.monotonic()
        assert selector.select(BUDGET / 5) == []
        assert time.monotonic() - t0 >= BUDGET / 5
        # a timer due after it: the sleep that follows ends then, with nothing
        t0 = time.monotonic()
        assert selector.select(2 * BUDGET) == []
        assert time.monotonic() - t0 >= 2 * BUDGET


def test_a_selector_does_not_poll_while_the_cpus_are_busy(pair):
    a, b = pair
    cpus = len(os.sched_getaffinity(0))
    spinners = [subprocess.Popen([sys.executable, "-c", "while True: pass"])
                for _ in range(cpus + 1)]
    try:
        def runnable():
            with open("/proc/loadavg") as f:
                return int(f.read().split()[3].partition("/")[0])
        wait_until(lambda: runnable() > cpus)  # the spinners run
        with busy_poll.BusyPollSelector(BUDGET) as selector:
            selector.register(a, busy_poll.selectors.EVENT_READ)
            short_waits(selector, a, b, 40)  # short waits, but every CPU is taken
            assert selector.polling and selector.busy_share > 0.5
            polls = selector.polls
            short_waits(selector, a, b, 20)
            assert selector.polls == polls
    finally:
        for p in spinners:
            p.kill()
            p.wait()


def test_a_zero_budget_never_polls(pair):
    a, b = pair
    with busy_poll.BusyPollSelector(0) as selector:
        selector.register(a, busy_poll.selectors.EVENT_READ)
        short_waits(selector, a, b, 16)
        assert not selector.polling
    loop = busy_poll.new_event_loop(0)
    try:
        assert not isinstance(loop, busy_poll.BusyPollLoop)
    finally:
        loop.close()


def test_a_budget_below_zero_is_refused():
    with pytest.raises(ValueError, match="busy-poll budget must be >= 0 seconds, got -1"):
        busy_poll.BusyPollSelector(-1)


@pytest.mark.skipif(sys.version_info < (3, 11), reason="asyncio.run takes a loop from 3.11")
def test_run_serves_a_real_asyncio_program_on_a_polling_loop():
    async def main():
        assert isinstance(asyncio.get_running_loop(), busy_poll.BusyPollLoop)

        async def echo(reader, writer):
            while line := await reader.readline():
                writer.write(line)
                await writer.drain()
            writer.close()
        server = await asyncio.start_server(echo, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        got = []
        for i in range(200):  # sequential round trips: the waits the loop learns from
            writer.write(b"%d\n" % i)
            got.append(int(await reader.readline()))
        await asyncio.sleep(0.01)  # a timer, while the loop polls
        selector = asyncio.get_running_loop().busy_poll
        polling, polls = selector.polling, selector.polls
        # work in a thread: no polls while it runs (it would wait for the GIL they hold)
        assert await asyncio.to_thread(sum, range(10**6)) == 499999500000
        polls_beside_thread = selector.polls - polls
        writer.close()
        await writer.wait_closed()
        server.close()
        await server.wait_closed()
        return got, polling, polls_beside_thread, selector.threads_at_work

    got, polling, polls_beside_thread, threads_at_work = busy_poll.run(main(), budget=BUDGET)
    assert got == list(range(200))
    assert polling
    assert polls_beside_thread == 0 and threads_at_work == 0


def test_serve_refuses_a_bad_busy_poll_saying_what_it_takes(tmp_path):
    def serve(*args):
        return subprocess.run([sys.executable, "-m", "kernelpit", "serve", "--adapter",
                               "kernelpit.kernels.demo", "--no-discovery", *args],
                              capture_output=True, text=True, timeout=60)
    r = serve("--busy-poll", "-5")
    assert r.returncode == 2
    assert "busy poll must be microseconds from 0 (never) to 10000, got -5.0" in r.stderr
    config = tmp_path / "kp.toml"
    config.write_text('[bridge]\nbusy_poll = "fast"\n')
    r = serve("--config", str(config))
    assert r.returncode == 2 and "got 'fast'" in r.stderr


def test_an_idle_bridge_stops_polling_after_a_burst_of_calls(tmp_path):
    from test_service_lifecycle import Served
    s = Served(tmp_path, "--adapter", "kernelpit.kernels.demo", "--workers", "1")
    try:
        bridge = psutil.Process(s.proc.pid)
        with s.connect() as client:
            for _ in range(300):  # sequential calls: the bridge's loop polls between them
                client.call("add", 1, 2)
            time.sleep(0.5)  # the loop learns that its waits are long now
            before, t0 = bridge.cpu_times(), time.monotonic()
            time.sleep(2)
            after, wall = bridge.cpu_times(), time.monotonic() - t0
            assert client.call("add", 1, 2) == 3
        used = (after.user + after.system - before.user - before.system) / wall
        assert used < 0.25, f"an idle bridge used {used:.0%} of a CPU"
    finally:
        s.stop()


@pytest.mark.parametrize("files, member, quota, cpus", [
    ({}, "0::/", None, None),  # no cgroup files: the CPUs it has affinity to
    ({"cpu.max": "max 100000\n"}, "0::/", None, None),
    ({"cpu.max": "150000 100000\n"}, "0::/", 1.5, 1),  # a container's own cgroup at the root
    ({"cpu.max": "50000 100000\n"}, "0::/", 0.5, 1),
    ({"cpu/cpu.cfs_quota_us": "-1\n", "cpu/cpu.cfs_period_us": "100000\n"}, "", None, None),
    ({"cpu/cpu.cfs_quota_us": "100000\n", "cpu/cpu.cfs_period_us": "100000\n"}, "", 1.0, 1),
    # a systemd unit's CPUQuota=, below the root: the process's own path
    ({"cpu.max": "max 100000\n", "system.slice/kp.service/cpu.max": "50000 100000\n"},
     "0::/system.slice/kp.service\n", 0.5, 1),
    # the tightest quota on the way wins: a slice's over its unit's none
    ({"system.slice/cpu.max": "100000 100000\n", "system.slice/kp.service/cpu.max": "max 100000\n"},
     "0::/system.slice/kp.service\n", 1.0, 1),
    # cgroup v1 without a cgroup namespace: the cpu controller's path
    ({"cpu/docker/abc/cpu.cfs_quota_us": "150000\n", "cpu/docker/abc/cpu.cfs_period_us": "100000\n"},
     "12:cpu,cpuacct:/docker/abc\n4:memory:/docker/abc\n0::/\n", 1.5, 1),
], ids=["none", "v2-max", "v2-1.5", "v2-0.5", "v1-none", "v1-1", "v2-unit", "v2-slice", "v1-path"])
def test_a_cgroups_cpu_quota_caps_the_cpus_it_counts_as_spare(tmp_path, files, member, quota,
                                                               cpus):
    root = tmp_path / "fs"
    for name, text in files.items():
        (root / name).parent.mkdir(parents=True, exist_ok=True)
        (root / name).write_text(text)
    (tmp_path / "cgroup").write_text(member)
    assert busy_poll.cpu_quota(str(root), str(tmp_path / "cgroup")) == quota
    assert busy_poll.usable_cpus(str(root), str(tmp_path / "cgroup")) == \
        (cpus or len(os.sched_getaffinity(0)))


def test_a_process_in_a_real_cgroup_with_a_quota_counts_its_cpus(tmp_path):
    """A real cgroup (v1's cpu controller, or v2's cpu.max) with a quota of half a CPU: a
    process moved into it counts one CPU (needs root and a writable cgroup hierarchy)."""
    v1 = "/sys/fs/cgroup/cpu"
    if os.path.isfile(os.path.join(v1, "cpu.cfs_quota_us")):
        parent, files = v1, {"cpu.cfs_quota_us": "50000"}
    elif os.path.isfile("/sys/fs/cgroup/cgroup.controllers") and \
            "cpu" in open("/sys/fs/cgroup/cgroup.subtree_control").read().split():
        parent, files = "/sys/fs/cgroup", {"cpu.max": "50000 100000"}
    else:
        pytest.skip("no cgroup cpu controller to make a cgroup in")
    group = os.path.join(parent, f"kernelpit-test-{os.getpid()}")
    try:
        os.mkdir(group)
    except OSError as exc:
        pytest.skip(f"cannot make a cgroup here ({exc}): needs root")
    child = None
    try:
        for name, text in files.items():
            with open(os.path.join(group, name), "w") as f:
                f.write(text)
        child = subprocess.Popen(
            [sys.executable, "-c", "import sys; sys.stdin.readline(); "
             "from kernelpit import busy_poll; print(busy_poll.usable_cpus(), "
             "busy_poll.cpu_quota())"],
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        with open(os.path.join(group, "cgroup.procs"), "w") as f:
            f.write(str(child.pid))
        out, _ = child.communicate("go\n", timeout=60)
        assert out.split() == ["1", "0.5"]
    finally:
        if child is not None and child.poll() is None:
            child.kill()
            child.wait()
        os.rmdir(group)
