"""Rounds of everything a client does, over each transport, leave nothing behind: no file
descriptor, thread, shared-memory file or mapping more than one round leaves, in the bridge
and its clients (this process) or in the workers; and no request or connection leaves a
reference cycle of Kernelpit's objects for the garbage collector."""

import collections
import gc
import os
import re
import threading

import pytest

import kernelpit
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal

ROUNDS = 6
ROWS = 1 << 18  # 4 float64 columns: 8 MB, by shared memory or as blobs
POOLED = re.compile(r".+_\d+$")  # a ThreadPoolExecutor's worker thread: "asyncio_1"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    portal = Portal("test-soak-bridge")
    # one worker: what it makes on its first use of each kind of request is made by the
    # first round, so any growth after that is a leak
    b = Bridge([PoolConfig(name="default", adapters=["kp_arrow"], workers=1, path=[ADAPTERS],
                           health_interval=0.2)],
               grace=2,
               discovery=tmp_path_factory.mktemp("discovery") / "kernelpit-bridge.json",
               store=str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite"))
    portal.call(b.start)
    # the first health check opens the bridge's heartbeat sockets (and ZMQ's threads)
    wait_until(lambda: all(w.last_heartbeat for w in b.manager.workers()))
    yield b
    portal.call(b.stop, 0)
    portal.stop()


def _connect(bridge, transport: str):
    address = bridge.local_address if transport == "local" else bridge.address
    return kernelpit.connect(address, bridge.token, transport=transport)


def _round(bridge, transport: str) -> None:
    with _connect(bridge, transport) as c:
        _requests(c)


def _requests(c) -> None:
    """One request of every kind."""
    assert c.call("echo", [1, "two"]) == [1, "two"]
    table = c.call("numeric_table", ROWS, 4)
    assert c.call("describe", table)["rows"] == ROWS
    data = c.call("blob", 3 << 20, 7)
    assert c.call("blob_info", data)["len"] == 3 << 20
    del table, data
    assert len([e for e in c.stream("batches", 3) if e.kind == "partial"]) == 3
    with c.session() as s:
        assert s.call("echo", 5) == 5
    assert c.submit("echo", "job").result(timeout=60) == "job"
    assert c.map("echo", range(20)) == list(range(20))


def _held(bridge) -> dict[str, int]:
    """What this process (the bridge and its clients) and the workers hold now."""
    shm = bridge.manager.shm_dir
    pids = [os.getpid()] + [w.pid for w in bridge.manager.workers()]
    held = {"shm files": len(os.listdir(shm))}
    for n, pid in enumerate(pids):
        who = "bridge" if n == 0 else f"worker {n}"
        held[f"{who} fds"] = len(os.listdir(f"/proc/{pid}/fd"))
        held[f"{who} threads"] = len(_threads(pid))
        with open(f"/proc/{pid}/maps") as f:
            held[f"{who} shm maps"] = sum(1 for line in f if shm in line)
    return held


def _fds() -> dict[str, str]:
    """This process's file descriptors and what each points to."""
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile
            pass
    return found


def _described(bridge, before: dict[str, str]) -> list[str]:
    """The fds opened since ``before``; a TCP socket with its local and remote ports (the
    gRPC port, the blob lane's, or another), so that a failure says whose it is."""
    ports = {int(bridge.address.rsplit(":", 1)[1]): "grpc",
             **({bridge._lane.port: "blob lane"} if bridge._lane is not None else {})}
    tcp = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.readlines()[1:]:
                cols = line.split()
                local, remote = (int(c.rsplit(":", 1)[1], 16) for c in cols[1:3])
                tcp[cols[9]] = f"tcp {local}->{remote} ({ports.get(local) or ports.get(remote)})"
    out = []
    for fd, target in _fds().items():
        if before.get(fd) != target:
            inode = target[8:-1] if target.startswith("socket:[") else None
            out.append(f"{fd}: {tcp.get(inode, target) if inode else target}")
    return out


def _threads(pid: int) -> set[int]:
    """A process's threads, without the workers of bounded thread pools, which grow with
    load up to their size (gRPC's event engine; in this process, executors)."""
    found = set()
    for tid in os.listdir(f"/proc/{pid}/task"):
        try:
            with open(f"/proc/{pid}/task/{tid}/comm") as f:
                if f.read().strip() != "event_engine":
                    found.add(int(tid))
        except OSError:  # ended meanwhile
            pass
    if pid == os.getpid():
        found -= {t.native_id for t in threading.enumerate() if POOLED.match(t.name)}
    return found


@pytest.mark.parametrize("transport", ["grpc", "local"])
def test_rounds_of_every_kind_of_request_leave_nothing_behind(bridge, transport):
    _round(bridge, transport)  # the first round makes what stays: channels, pools, caches
    _round(bridge, transport)
    before = _held(bridge)
    fds_before = _fds()
    for _ in range(ROUNDS):
        _round(bridge, transport)

    def grown() -> dict[str, tuple[int, int]]:
        now = _held(bridge)
        return {k: (before[k], now[k]) for k in before if now[k] > before[k]}

    # what a round makes goes with it, at once or within a kept frame's decay (10 s)
    try:
        wait_until(lambda: not grown(), timeout=30)
    except AssertionError:
        raise AssertionError(f"more held after {ROUNDS} rounds (before, now): {grown()}; "
                             f"new fds of this process: {_described(bridge, fds_before)}")


def _ours(obj) -> str | None:
    """What ``obj`` is, when it is Kernelpit's own (a type or function of its modules)."""
    kind = type(obj)
    module = obj.__module__ if kind.__name__ == "function" else kind.__module__
    if isinstance(module, str) and module.startswith("kernelpit"):
        return f"{module}.{getattr(obj, '__qualname__', kind.__qualname__)}"
    return None


@pytest.mark.parametrize("transport", ["grpc", "local"])
def test_requests_and_connections_leave_no_reference_cycle_of_kernelpit_objects(bridge,
                                                                               transport):
    # a cycle outlives its last reference until the collector's oldest generation runs, and
    # holds whatever it references (last session's held mapped results and uploaded tables,
    # a closed connection's channel and buffers)
    _round(bridge, transport)
    gc.collect()
    gc.disable()
    try:
        for _ in range(3):
            _round(bridge, transport)  # a connection of its own each
        gc.set_debug(gc.DEBUG_SAVEALL)
        gc.collect()
        found = collections.Counter(filter(None, map(_ours, gc.garbage)))
    finally:
        gc.set_debug(0)
        gc.garbage.clear()
        gc.enable()
    assert not found, found
