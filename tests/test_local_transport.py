"""The local transport: a client on the bridge's machine reaches it through a Unix socket in
the bridge's private run directory, with the same handlers, token checks and errors as gRPC,
and large Arrow values through the pool's shared memory.  (The API itself is covered by
tests/test_api.py, whose suite runs over this transport too.)"""

import gc
import hashlib
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
import threading
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pyarrow as pa
import pytest

import kernelpit
from conftest import ADAPTERS, ctrl_c_at, wait_until
from kernelpit.config import PoolConfig
from kernelpit.kernels import wire
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal

ROWS = 1 << 20  # 4 float64 columns: 32 MB, far above the 1 MB shared-memory threshold


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    portal = Portal("test-local-bridge")
    b = Bridge([PoolConfig(name="default", adapters=["kp_arrow"], workers=2, path=[ADAPTERS]),
                PoolConfig(name="tools", adapters=["kp_tools"], workers=1, path=[ADAPTERS])],
               grace=2,
               discovery=tmp_path_factory.mktemp("discovery") / "kernelpit-bridge.json",
               store=str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite"),
               token_file=tmp_path_factory.mktemp("tokens") / "tokens.json")
    portal.call(b.start)
    yield b
    portal.call(b.stop, 0)
    portal.stop()


@pytest.fixture(scope="module")
def client(bridge):
    with kernelpit.connect(bridge.local_address, bridge.token, transport="local") as c:
        yield c


def shm_files(bridge, prefix=""):
    return sorted(n for n in os.listdir(bridge.manager.shm_dir) if n.startswith(prefix))


def in_client_process(bridge, body: str) -> dict:
    """Run ``body`` in a client process of its own (``c``: its client; ``shm_maps()``: the
    pool's shared-memory files it maps; ``ROWS``); returns what it put in ``out``."""
    script = textwrap.dedent('''
        import gc, json, kernelpit
        import numpy as np, pyarrow as pa
        def shm_maps():
            with open("/proc/self/maps") as f:
                return [l.split(None, 5)[5].strip() for l in f
                        if len(l.split(None, 5)) == 6 and l.split(None, 5)[5].startswith(SHM)]
        out = {}
        with kernelpit.connect(ADDRESS, TOKEN, transport="local") as c:
    ''') + textwrap.indent(textwrap.dedent(body), " " * 4) + "\nprint(json.dumps(out))\n"
    for name, value in (("SHM", bridge.manager.shm_dir), ("ADDRESS", bridge.local_address),
                        ("TOKEN", bridge.token), ("ROWS", ROWS)):
        script = script.replace(name, repr(value))
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout.strip().splitlines()[-1])


# -- where it listens, and who may use it -------------------------------------------------------

def test_the_socket_is_private_and_the_discovery_file_names_it(bridge):
    path = bridge.local_address.removeprefix("unix:")
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600
    assert stat.S_IMODE(os.stat(os.path.dirname(path)).st_mode) == 0o700
    assert os.stat(path).st_uid == os.getuid()
    assert json.loads(bridge.discovery_path.read_text())["local"] == path


def test_auto_picks_the_socket_for_a_bridge_of_this_machine_and_grpc_can_be_forced(bridge,
                                                                                     monkeypatch):
    monkeypatch.setattr(kernelpit.discovery, "default_path", lambda: bridge.discovery_path)
    with kernelpit.connect() as c:  # from the discovery file: address, token, socket
        assert c.transport == "local" and c.call("echo", 3) == 3
    with kernelpit.connect(transport="grpc") as c:
        assert c.transport == "grpc" and c.call("echo", 3) == 3
    with kernelpit.connect(bridge.address, bridge.token) as c:  # its address: the same bridge
        assert c.transport == "local"


def test_local_fails_clearly_for_a_bridge_elsewhere_and_bad_choices_are_named(bridge, tmp_path):
    with pytest.raises(kernelpit.BridgeError, match="transport='local' cannot reach the bridge "
                       "at 127.0.0.1:1.*this machine run by this user.*transport='grpc'"):
        kernelpit.connect("127.0.0.1:1", "token", transport="local")
    with pytest.raises(kernelpit.BridgeError, match="cannot be reached"):
        kernelpit.connect(f"unix:{tmp_path}/nothing.sock", "token")
    with pytest.raises(ValueError, match="transport must be one of 'auto', 'grpc', 'local'"):
        kernelpit.connect(bridge.address, bridge.token, transport="tcp")
    with pytest.raises(ValueError, match="speaks the local transport only"):
        kernelpit.connect(bridge.local_address, bridge.token, transport="grpc")


def test_tokens_and_roles_are_checked_per_request_as_over_grpc(bridge, client):
    with pytest.raises(kernelpit.Unauthenticated, match="the token is wrong"):
        kernelpit.connect(bridge.local_address, "not-a-token")
    reader = client.add_token("local-reader", "read")
    with kernelpit.connect(bridge.local_address, reader.secret) as c:
        assert {t.name for t in c.tools()} >= {"echo"}
        assert c.server_info().security.role == "read"
        with pytest.raises(kernelpit.PermissionDenied, match="needs role call"):
            c.call("echo", 3)  # the multiplexed stream, from a blocking thread
        with pytest.raises(kernelpit.PermissionDenied, match="needs role call"):
            list(c.stream("echo", 3))
        client.revoke_token("local-reader")
        with pytest.raises(kernelpit.Unauthenticated, match="revoked or rotated"):
            c.tools()  # the next request on the same connection is refused


def test_garbage_on_the_socket_drops_that_connection_only(bridge, client):
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(bridge.local_address.removeprefix("unix:"))
        s.sendall(b"\xff" * 64)
        assert s.recv(1) == b""  # the bridge hung up on it
    with socket.socket(socket.AF_UNIX) as s:  # a well-framed message that is no greeting
        s.connect(bridge.local_address.removeprefix("unix:"))
        wire.send(s, [b"hello"])
        assert s.recv(1) == b""
    assert client.call("echo", 5) == 5


def test_ctrl_c_in_a_blocking_call_interrupts_the_tool(client, keyboard_interrupts):
    main = threading.get_ident()
    seen: list[str] = []  # what the interrupting thread did, for the failure's message

    def interrupt_when_busy():
        try:
            wait_until(lambda: any(w.state == "busy" for w in client.workers("tools")))
        except BaseException as exc:
            seen.append(f"never saw a busy worker: {exc!r}")
            raise
        seen.append("sent SIGINT")
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    try:
        client.call("spin", 60)  # the lone caller's path: its own blocking connection
    except KeyboardInterrupt:
        pass
    else:
        pytest.fail(f"the call ran to its end; the interrupting thread: {seen or 'no news'}")
    wait_until(lambda: all(w.state == "idle" for w in client.workers("tools")))
    assert client.options(deadline=10).call("add", 3, b=3) == 6


def test_ctrl_c_between_sending_a_call_and_waiting_for_it_still_cancels_it(client):
    # the interrupt lands after the request went out and before the wait for its reply began
    with pytest.raises(KeyboardInterrupt), ctrl_c_at("_responses"):
        client.call("spin", 60)
    wait_until(lambda: all(w.state == "idle" for w in client.workers("tools")))
    assert client.options(deadline=10).call("add", 2, b=5) == 7


# -- large values by shared memory --------------------------------------------------------------

def test_a_table_from_a_worker_is_mapped_from_the_pool_s_shared_memory(bridge):
    out = in_client_process(bridge, """
        table = c.call("numeric_table", ROWS, 4)
        out["rows"], out["last"] = table.num_rows, table.column("c3").to_numpy()[-1].item()
        out["mapped"] = shm_maps()    # its buffers: the worker's file, mapped here
        out["described"] = c.call("describe", table)["rows"]    # and back the same way
        del table
        gc.collect()
        out["after"] = shm_maps()
    """)
    assert (out["rows"], out["last"], out["described"]) == (ROWS, ROWS - 1 + 3, ROWS)
    assert len(out["mapped"]) == 1, "the table did not come by shared memory"
    # passed back by reference (this client wrote no copy), and unmapped with the table
    assert out["after"] == []


def test_tables_both_ways_equal_what_was_sent(client):
    rng = np.random.default_rng(7)
    sent = pa.table({"x": rng.random(ROWS), "y": np.arange(ROWS)})
    back = client.call("echo", sent)
    assert back.equals(sent)
    again = client.call("echo", back)  # received, then passed back
    assert again.equals(sent)


def test_a_value_with_a_large_table_and_large_bytes_goes_both_ways(client):
    # both by shared memory, in one value, one call
    sent = {"t": pa.table({"x": np.arange(ROWS, dtype="float64")}), "b": os.urandom(6 << 20)}
    back = client.call("echo", sent)
    assert back["b"] == sent["b"] and back["t"].equals(sent["t"])


def test_threads_of_one_client_each_read_their_results_blobs(client):
    # Float columns above the message limit come as blobs.  A thread whose call went on the
    # Calls stream (another thread held the fast path) reads them with blocking RPCs, which
    # on this transport serve one thread at a time: each thread has its own connection (it
    # shared the fast path's, and the two threads' messages were mixed up).
    rows = 700_000  # 5.6 MB a column
    expected = {f"c{j}": [i * 0.5 + j for i in range(rows)] for j in range(2)}
    tools = client.options(pool="tools")
    with ThreadPoolExecutor(3) as threads:
        for _ in range(3):
            assert list(threads.map(lambda _: tools.call("float_columns", rows, cols=2),
                                    range(3))) == [expected] * 3


def test_large_bytes_go_between_worker_and_client_never_through_the_bridge_s_heap(bridge):
    # the bridge runs in this process: what it allocates while a client of its own process
    # gets 64 MB from a tool and sends them back is traced here
    wire.drop_kept()  # no frame kept from earlier tests to receive into unseen
    tracemalloc.start()
    try:
        start = tracemalloc.get_traced_memory()[0]
        out = in_client_process(bridge, """
            import hashlib
            data = c.call("blob", 64 << 20, 7)
            out["type"], out["sha256"] = type(data).__name__, hashlib.sha256(data).hexdigest()
            out["back"] = c.call("blob_info", data)
        """)
        peak = tracemalloc.get_traced_memory()[1] - start
    finally:
        tracemalloc.stop()
    expected = hashlib.sha256(((7).to_bytes(4, "little") + bytes(range(252))) * (1 << 18))
    assert out["type"] == "bytes" and out["sha256"] == expected.hexdigest()
    assert out["back"] == {"type": "bytes", "len": 64 << 20, "sha256": expected.hexdigest()}
    assert peak < 8 << 20, f"the bridge allocated {peak >> 20} MiB for a 64 MiB value"


def test_a_job_takes_a_large_table_as_a_blob_not_by_shared_memory(client):
    # a job's values are journaled and outlive the caller: never a file in shared memory
    sent = pa.table({"x": np.arange(ROWS, dtype="float64")})
    assert client.submit("echo", sent).result(timeout=60).equals(sent)


def test_a_finished_job_s_large_result_leaves_the_bridge_s_shared_memory(bridge, client):
    # the bridge holds a worker's large result mapped while it journals it; once the job is
    # durable the mapping goes at once, not at the next full garbage collection
    gc.disable()  # only reference counting may free it
    try:
        for n in range(3):
            data = client.submit("blob", 3 << 20, n).result(timeout=60)
            assert data[:4] == n.to_bytes(4, "little") and len(data) == 3 << 20
        wait_until(lambda: shm_files(bridge, "host@") == [])
    finally:
        gc.enable()


def test_a_client_that_dies_leaves_nothing_in_shared_memory(bridge):
    script = textwrap.dedent(f"""
        import sys, kernelpit
        import numpy as np, pyarrow as pa
        from kernelpit.kernels import arrow, shared_bytes
        c = kernelpit.connect({bridge.local_address!r}, {bridge.token!r})
        held = c.call("numeric_table", {ROWS}, 4)      # mapped, held
        shm = c._async._backend.channel.shared_memory
        # as if it died while sending values: written to shared memory, never sent
        arrow.encode(pa.table({{"x": np.arange({ROWS}, dtype="float64")}}), [], shm)
        shared_bytes.encode(bytes(8 << 20), shm)
        print(shm.prefix, flush=True)
        sys.stdin.read()
    """)
    child = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE,
                             stdout=subprocess.PIPE, text=True)
    try:
        prefix = child.stdout.readline().strip()
        assert prefix.startswith("l") and len(shm_files(bridge, prefix + "-")) == 2
    finally:
        child.send_signal(signal.SIGKILL)
        child.wait(10)
    wait_until(lambda: not shm_files(bridge, prefix + "-") and not shm_files(bridge, prefix + "@"))
