"""Pools placed on a real local multi-node Ray cluster (tests/raycluster.py, shared with
tests/test_ray_provisioner.py through the session fixture ``ray_cluster``).

Every node is on 127.0.0.1 and shares this machine's /dev/shm; a worker on another node
than the controller's must still take the network path (signed TCP, values inline in
parts), and one on the controller's node the Unix socket and shared memory: that is
decided by Ray node id, and checked here.
"""

from __future__ import annotations

import concurrent.futures
import json
import logging
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import raycluster  # noqa: F401 - sets Ray's environment before anything imports ray
from conftest import ADAPTERS, wait_until

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' "
                                        "(.ci/run installs it)")

import kernelpit  # noqa: E402
from kernelpit.exceptions import Cancelled, DeadlineExceeded, WorkerCrashed  # noqa: E402
from kernelpit.kernels import signing, wire  # noqa: E402
from kernelpit.pool.registry import RunRegistry  # noqa: E402

TESTS = Path(__file__).parent
pytestmark = pytest.mark.timeout(240)
TOOLS = ["kp_ray", "kp_tools"]


def ray_pool(resources: dict, workers: int = 1, **extra) -> dict:
    return {"adapters": TOOLS, "workers": workers, "path": [ADAPTERS], "placement": "ray",
            "resources": resources, **extra}


@pytest.fixture(scope="module")
def pool(ray_cluster):
    """One pool per module: a worker on node_a, one on node_b, one on the head (the
    controller's node) and a local one, in one process."""
    with kernelpit.Pool(pools={
            "a": ray_pool({"CPU": 0.5, "node_a": 1}),
            "b": ray_pool({"CPU": 0.5, "node_b": 1}),
            "h": ray_pool({"CPU": 0.5, "head": 1}),
            "l": {"adapters": TOOLS, "workers": 1, "path": [ADAPTERS]}},
            ray_address=ray_cluster.address) as made:
        yield made


def manager(pool):
    return pool._async._backend.manager


def worker_of(pool, name):
    (found,) = [w for w in pool.workers() if w.pool == name]
    return found


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


# -- placement, the channel each worker takes, and what the pool shows ------------------------

def test_workers_go_where_their_resources_say_and_pick_their_channel_by_node_id(pool,
                                                                               ray_cluster):
    controller = ray.get_runtime_context().get_node_id()
    assert controller == ray_cluster.node_id("head")
    expected = {"a": ray_cluster.node_id("node_a"), "b": ray_cluster.node_id("node_b"),
                "h": controller}
    for name, node in expected.items():
        info = worker_of(pool, name)
        assert (info.node, info.host) == (node, "127.0.0.1")
        assert info.rss > 20 * 2**20  # sampled by its host actor on its node
        found = pool.options(pool=name).call("where")
        assert found["node"] == node and found["pid"] == info.pid
        # same host and /dev/shm for every node here: only the node id tells them apart
        assert (found["channel"], found["shm"]) == (("unix", True) if name == "h" else
                                                    ("tcp", False))
    local = worker_of(pool, "l")
    assert (local.node, local.host) == (None, None)
    assert pool.options(pool="l").call("where")["channel"] == "unix"

    # the registry records each kernel's node (no local pid: nothing here ever signals it)
    rows = {r.worker_id: r for r in RunRegistry().kernels(pool.run_id)}
    for name, node in expected.items():
        row = rows[worker_of(pool, name).id]
        assert (row.node, row.host, row.pid) == (node, "127.0.0.1", None)
        assert row.actor and row.remote_pid == worker_of(pool, name).pid
    from kernelpit.cli import workers_table
    from kernelpit.doctor import check_placed_kernels

    table = workers_table(pool.workers())
    assert "NODE" in table and expected["a"][:8] in table and "local" in table
    (check,) = check_placed_kernels(RunRegistry())
    assert expected["a"][:8] in check.summary and expected["b"][:8] in check.summary


def test_call_stream_session_and_map_on_another_node(pool):
    a = pool.options(pool="a")
    assert a.call("add", a=2, b=3) == 5
    events = list(a.stream("counted", n=5))
    # in order over the signed channel, each progress before its line (a progress followed by
    # another event is never coalesced away)
    seen = [(e.kind, e.done if e.kind == "progress" else e.text.strip())
            for e in events if e.kind in ("progress", "stdout")]
    assert seen == [pair for i in range(1, 6) for pair in (("progress", i),
                                                          ("stdout", f"step {i}"))]
    assert events[-1].kind == "result" and events[-1].value == 5
    with pool.session(pool="a") as s:
        assert [s.call("keep", value=v) for v in (1, 2, 3)] == [1, 3, 6]
    xs = list(range(500))
    assert a.map("add", xs, xs) == [2 * x for x in xs]
    blob = os.urandom(9 * 2**20 + 7)  # both ways in signed 4 MiB parts
    assert a.call("echo", value=[1, "x"], blob=blob) == {"value": [1, "x"], "blob": blob}


def test_a_100mb_arrow_table_from_a_worker_on_another_node(pool):
    shm = Path(manager(pool).shm_dir)
    table = pool.options(pool="a").call("table", mb=100)
    assert table.num_rows == 100 * 2**20 // 32 and table.num_columns == 4
    assert table.column("c3")[12345].as_py() == 12345 + 3
    assert table.nbytes >= 100 * 2**20
    assert not list(shm.iterdir())  # it came over the network path, not by shared memory
    big = pool.options(pool="h").call("table", mb=4)  # the head's worker: shared memory
    assert big.num_rows == 4 * 2**20 // 32


def test_a_connection_file_attaches_a_kernel_client_that_sees_the_tools_module_state(pool):
    from jupyter_client import BlockingKernelClient

    info = worker_of(pool, "b")
    assert stat.S_IMODE(os.stat(info.connection_file).st_mode) == 0o600  # on the controller
    pool.options(pool="b").call("where")
    client = BlockingKernelClient(connection_file=info.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=30)
        out: list[str] = []
        reply = client.execute_interactive(
            "import kp_ray, os; print(kp_ray.STATE['calls'], os.environ['KERNELPIT_NODE_ID'])",
            timeout=30, output_hook=lambda m: out.append(m["content"].get("text", "")))
        assert reply["content"]["status"] == "ok"
        calls, node = "".join(out).split()
        assert int(calls) >= 1 and node == info.node
    finally:
        client.stop_channels()


def test_interrupt_and_cancel_reach_a_kernel_on_another_node(pool):
    a = pool.options(pool="a")
    with pytest.raises(DeadlineExceeded):
        a.options(deadline=1).call("nap", seconds=60)
    assert a.call("add", a=1) == 1  # the cancel stopped the tool: the worker serves again

    worker = worker_of(pool, "a")
    with concurrent.futures.ThreadPoolExecutor(1) as ex:
        running = ex.submit(a.call, "nap", seconds=60)
        wait_until(lambda: worker_of(pool, "a").current_call, timeout=30)
        pool.interrupt(worker.id)
        with pytest.raises(Cancelled):
            running.result(30)

    # SIGINT through the host actor stops a cell running in the kernel itself
    from jupyter_client import BlockingKernelClient

    client = BlockingKernelClient(connection_file=worker.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        msg_id = client.execute("import time; print('sleeping', flush=True); time.sleep(60)")
        while True:  # in the cell's own code (ipykernel drops a SIGINT that lands before it)
            msg = client.get_iopub_msg(timeout=30)
            if msg["msg_type"] == "stream" and "sleeping" in msg["content"]["text"]:
                break
        pool.interrupt(worker.id)
        reply = client.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["ename"] == "KeyboardInterrupt"
    finally:
        client.stop_channels()
    assert a.call("add", a=2) == 2


# -- the TCP channel refuses what is not signed with the run's key ------------------------------

def _greeted(endpoint: str) -> tuple[socket.socket, list]:
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    sock = socket.create_connection((host, int(port)), timeout=10)
    reader = wire.Reader()
    greeting: list = []
    while not greeting:
        greeting = reader.advance(sock.recv_into(reader.buffer()))
    return sock, greeting[0]


def _closed_by_peer(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        while sock.recv(65536):
            pass
    except ConnectionResetError:
        pass
    return True


def test_frames_not_signed_with_the_run_key_are_refused_and_the_pool_keeps_serving(pool,
                                                                                  caplog):
    channel = manager(pool)._channel
    endpoint, key = channel.tcp_endpoint, channel.key
    assert endpoint.startswith("tcp://127.0.0.1:")
    caplog.set_level(logging.WARNING, logger="kernelpit.pool")

    junk, greeting = _greeted(endpoint)  # bytes that are no message at all
    assert bytes(greeting[0]) == signing.MAGIC
    junk.sendall(b"\xff" * 64 + b"GET / HTTP/1.1\r\n\r\n")
    assert _closed_by_peer(junk)

    forged, greeting = _greeted(endpoint)  # a greeting answered with another key
    reply, _ = signing.answer(greeting, signing.new_key(), b"1")
    forged.sendall(b"".join(wire.pieces(reply)))
    assert _closed_by_peer(forged)

    # the right key (a worker's), then an unsigned call result, then a forged tag
    for tail in ([b'{"op":"ev","id":1,"k":"result","value":1}'],
                 [b'{"op":"ev","id":1,"k":"result","value":1}', b"\0" * 32]):
        inside, greeting = _greeted(endpoint)
        reply, _ = signing.answer(greeting, key, b"999")
        inside.sendall(b"".join(wire.pieces(reply)) + b"".join(wire.pieces(tail)))
        assert _closed_by_peer(inside)

    refused = [r.getMessage() for r in caplog.records if "dropped a connection" in r.getMessage()]
    assert len(refused) == 4, refused
    for name in ("a", "b", "l"):
        assert pool.options(pool=name).call("add", a=4, b=5) == 9


# -- failures: a lost node, a lost controller ---------------------------------------------------

def test_a_removed_node_fails_its_calls_and_the_pool_refills_on_the_other(ray_cluster, caplog):
    node = ray_cluster.add_node("node_c", resources={"worker": 8})
    caplog.set_level(logging.WARNING, logger="kernelpit")
    with kernelpit.Pool(pools={
            "x": ray_pool({"CPU": 0.5, "worker": 1}, workers=2),   # spread over node_b and c
            "y": ray_pool({"CPU": 0.5, "node_c": 1})},             # only node_c has these
            ray_address=ray_cluster.address) as pool:
        where = {w.id: w.node for w in pool.workers()}
        spread = sorted(w.node for w in pool.workers() if w.pool == "x")
        assert spread == sorted([ray_cluster.node_id("node_b"), node.node_id])
        on_c = [psutil.Process(w.pid) for w in pool.workers() if w.node == node.node_id]
        assert len(on_c) == 2

        with concurrent.futures.ThreadPoolExecutor(3) as ex:
            retried = [ex.submit(pool.options(pool="x").call, "nap_idempotent", seconds=6)
                       for _ in range(2)]
            lost = ex.submit(pool.options(pool="y").call, "nap", seconds=60)
            wait_until(lambda: all(w.current_call for w in pool.workers()), timeout=30)
            ray_cluster.cluster.remove_node(node, allow_graceful=False)
            ray_cluster.nodes.pop("node_c")

            with pytest.raises(WorkerCrashed) as err:
                lost.result(60)
            assert err.value.reason == "node_lost"
            assert "node" in str(err.value) and "nap()" in str(err.value)
            # the idempotent call on node_c ran again on node_b
            assert {f.result(60)["node"] for f in retried} == {ray_cluster.node_id("node_b")}

        for proc in on_c:
            wait_until(lambda: gone(proc), timeout=60)
        # back to full size on the node that is left; the pool whose resources are gone
        # says so at once (no launch waits for a node that cannot exist)
        wait_until(lambda: [w.node for w in pool.workers() if w.pool == "x"
                            and w.state in ("idle", "busy")]
                   == [ray_cluster.node_id("node_b")] * 2, timeout=90)
        assert not (set(where) & {w.id for w in pool.workers() if w.node == node.node_id})
        wait_until(lambda: any("ResourcesUnavailable" in r.getMessage() and "node_c" in
                               r.getMessage() for r in caplog.records), timeout=30)


DRIVER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    import raycluster, kernelpit
    pool = kernelpit.Pool(pools={{
        name: {{"adapters": ["kp_ray"], "workers": 1, "path": [{adapters!r}],
                "placement": "ray", "resources": {{"CPU": 0.5, name: 1}}}}
        for name in ("node_a", "node_b")}}, ray_address={address!r})
    print(json.dumps([w.pid for w in pool.workers()]), flush=True)
    time.sleep(600)
""")


def test_kill_9_of_the_controller_leaves_no_kernel_on_any_node(ray_cluster):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tests=str(TESTS), adapters=ADAPTERS,
                                             address=ray_cluster.address)],
        stdout=subprocess.PIPE, text=True)
    try:
        line = driver.stdout.readline()
        assert line, "the driver exited before its pool started"
        kernels = [psutil.Process(pid) for pid in json.loads(line)]
        assert len(kernels) == 2 and not any(gone(k) for k in kernels)
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        for kernel in kernels:
            wait_until(lambda: gone(kernel), timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()
