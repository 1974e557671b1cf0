"""The blob lane (kernelpit.service.blob_lane): large results read over a plain TCP port
beside gRPC, with a real bridge, real kernels and the real clients.  ReadBlob stays the
contract: the client falls back to it when the lane cannot be reached."""

import asyncio
import os
import socket
import stat

import grpc
import pyarrow as pa
import pytest

import kernelpit
import kernelpit.aio
import kernelpit.remote.target
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2

LIMIT = 8 << 20  # the bridge's message limit: larger results go as blobs
TTL = 5.0


def start_bridge(**kw):
    portal = Portal("test-blob-lane")
    b = Bridge([PoolConfig(name="default", adapters=["kp_arrow", "kp_remote_arrow"], workers=1,
                           path=[ADAPTERS])],
               max_message_size=LIMIT, grace=5, discovery=False, blob_ttl=TTL, **kw)
    portal.call(b.start)
    b.portal = portal
    return b


def stop_bridge(b):
    b.portal.call(b.stop, 0)
    b.portal.stop()


@pytest.fixture(scope="module")
def bridge():
    b = start_bridge()
    yield b
    stop_bridge(b)


@pytest.fixture(scope="module")
def client(bridge):
    with kernelpit.connect(bridge.address, bridge.token, transport="grpc") as c:
        yield c


@pytest.fixture(scope="module")
def stub(bridge):
    channel = grpc.insecure_channel(bridge.address, options=[
        ("grpc.max_receive_message_length", LIMIT)])
    yield pb_grpc.BridgeStub(channel)
    channel.close()


@pytest.fixture
def auth(bridge):
    return (("authorization", f"Bearer {bridge.token}"),)


def pattern(size):
    return (bytes(range(251)) * (size // 251 + 1))[:size]


def result_blob(stub, auth, size):
    """A result blob of ``size`` bytes waiting in the bridge, made as any gRPC client would."""
    reply = stub.Call(pb.CallRequest(tool="pattern", args=values_pb2.Value(json=f"[{size}]")),
                      metadata=auth)
    (ref,) = [r for r in reply.result.blobs if r.id]
    assert ref.size == size
    return ref


def lane(bridge, way="tcp"):
    """A connection to the lane: its TCP port, or (``way="unix"``) its Unix socket beside
    the local transport."""
    if way == "unix":
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.settimeout(20)
        sock.connect(bridge._lane.path)
        return sock
    port = bridge._info().blob_lane_port
    assert port
    return socket.create_connection(("127.0.0.1", port), timeout=20)


def reply_line(sock):
    line = b""
    while not line.endswith(b"\n"):
        got = sock.recv(1)
        if not got:
            break
        line += got
    return line.decode()


def read_exactly(sock, n):
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        k = sock.recv_into(view[got:])
        assert k, f"closed after {got} of {n} bytes"
        got += k
    return bytes(buf)


def test_the_bridge_names_its_lane_in_server_info(bridge, client):
    info = client.server_info()
    assert info.blob_lane_port > 0
    assert info.blob_lane_port != int(bridge.address.rsplit(":", 1)[1])


def test_the_lanes_unix_socket_is_private_and_named_to_local_clients(bridge):
    path = bridge._lane.path
    assert os.path.dirname(path) == os.path.dirname(bridge.local_address[len("unix:"):])
    assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # in the run's 0700 directory
    with kernelpit.connect(bridge.local_address, bridge.token, transport="local") as c:
        assert c.server_info().blob_lane_port > 0
        assert c._async._backend._lane.where == path  # not the TCP port


def test_large_results_come_over_the_lane_in_both_clients(bridge, client):
    lane_ = bridge._lane
    wait_until(lambda: len(bridge.blobs) == 0)  # the tests before: their blobs counted and freed
    before = lane_.served
    size = 3 * LIMIT + 7
    out = client.call("pattern", size)
    assert type(out) is bytes and out == pattern(size)
    table = client.call("numeric_table", 1_000_000, 3)  # 24 MB of doubles: a blob
    assert table.equals(pa.table({f"c{i}": pa.array(range(i, 1_000_000 + i), pa.float64())
                                  for i in range(3)}))
    # the client may have its bytes before the bridge's send returns and counts them
    wait_until(lambda: lane_.served == before + 2)

    async def main():
        async with kernelpit.aio.connect(bridge.address, bridge.token, transport="grpc") as pool:
            return await pool.call("pattern", size)
    assert asyncio.run(main()) == out
    wait_until(lambda: lane_.served == before + 3)
    wait_until(lambda: len(bridge.blobs) == 0)  # each freed once read


@pytest.mark.parametrize("way", ["tcp", "unix"])
def test_a_lane_read_is_checked_like_read_blob_and_reads_once(bridge, stub, auth, way):
    ref = result_blob(stub, auth, 2 * LIMIT)
    with lane(bridge, way) as sock:
        sock.sendall(f"READ {ref.id} not-the-token\n".encode())
        line = reply_line(sock)
        assert line.startswith("ERR UNAUTHENTICATED ") and "Bearer <token>" in line
        sock.sendall(f"READ {ref.id} -\n".encode())
        assert reply_line(sock).startswith("ERR UNAUTHENTICATED no token was sent")
        secret = bridge.portal.call(_add_token, bridge, f"lane-reader-{way}", "read")
        sock.sendall(f"READ {ref.id} {secret}\n".encode())
        line = reply_line(sock)
        assert line.startswith("ERR PERMISSION_DENIED ") and "needs role call" in line
        # refused three times, the blob is still there, and the same connection reads it
        sock.sendall(f"READ {ref.id} {bridge.token}\n".encode())
        assert reply_line(sock) == f"OK {ref.size}\n"
        assert read_exactly(sock, ref.size) == pattern(ref.size)
        sock.sendall(f"READ {ref.id} {bridge.token}\n".encode())
        line = reply_line(sock)
        assert line.startswith("ERR NOT_FOUND ") and "already read" in line
    with pytest.raises(grpc.RpcError) as info:  # gone for ReadBlob too
        list(stub.ReadBlob(pb.ReadBlobRequest(id=ref.id), metadata=auth))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


async def _add_token(bridge, name, role):
    return bridge.tokens.add(name, role)[1]


@pytest.mark.parametrize("way", ["tcp", "unix"])
@pytest.mark.parametrize("request_", [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n",
                                      b"READ onlytwo\n", b"x" * 3000])
def test_what_is_not_the_protocol_is_refused_and_the_lane_goes_on(bridge, client, request_, way):
    with lane(bridge, way) as sock:
        sock.sendall(request_)
        line = reply_line(sock)
        assert line.startswith("ERR INVALID_ARGUMENT ") and "READ <blob id> <token>" in line
        assert sock.recv(1) == b""  # and the connection is closed
    assert client.call("pattern", LIMIT + 1) == pattern(LIMIT + 1)


def test_a_reader_that_goes_away_mid_blob_frees_it(bridge, client, stub, auth):
    ref = result_blob(stub, auth, 64 << 20)
    with lane(bridge) as sock:
        sock.sendall(f"READ {ref.id} {bridge.token}\n".encode())
        assert reply_line(sock) == f"OK {ref.size}\n"
        read_exactly(sock, 1 << 20)
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)  # at once, not at the TTL
    assert client.call("pattern", LIMIT + 1) == pattern(LIMIT + 1)


def test_a_client_falls_back_to_read_blob_when_the_lane_is_unreachable():
    b = start_bridge()
    try:
        with kernelpit.connect(b.address, b.token, transport="grpc") as c:
            assert c.server_info().blob_lane_port > 0  # the client knows the lane...
            b.portal.call(b._lane.stop)                # ...which then cannot be reached
            assert c.call("pattern", 2 * LIMIT) == pattern(2 * LIMIT)
            assert b._lane.served == 0
            wait_until(lambda: len(b.blobs) == 0)
    finally:
        stop_bridge(b)


def test_without_the_lane_results_come_over_grpc():
    b = start_bridge(blob_lane=False)
    try:
        with kernelpit.connect(b.address, b.token, transport="grpc") as c:
            assert c.server_info().blob_lane_port == 0
            assert c.call("pattern", 2 * LIMIT) == pattern(2 * LIMIT)
            wait_until(lambda: len(b.blobs) == 0)
    finally:
        stop_bridge(b)


def test_an_idle_connection_is_closed_and_the_client_makes_a_new_one(bridge, client,
                                                                     monkeypatch):
    from kernelpit.service import blob_lane
    assert client.call("pattern", LIMIT + 1) == pattern(LIMIT + 1)  # the client keeps a connection
    monkeypatch.setattr(blob_lane, "IDLE_TIMEOUT", 0.5)
    with lane(bridge) as sock:
        assert sock.recv(1) == b""  # closed by the bridge once idle (the socket's timeout: 20 s)
    wait_until(lambda: len(bridge.blobs) == 0)  # counted once freed
    before = bridge._lane.served
    # the client's kept connection was closed too (it waited under the old timeout, so send
    # one request to bring it under the new one): the next reads reconnect and still use the lane
    for _ in range(2):
        assert client.call("pattern", LIMIT + 2) == pattern(LIMIT + 2)
    wait_until(lambda: bridge._lane.served == before + 2)


def test_a_token_the_request_line_cannot_carry_reads_over_grpc():
    b = start_bridge(token="two words")  # a valid gRPC metadata value, not one lane word
    try:
        with kernelpit.connect(b.address, b.token, transport="grpc") as c:
            assert c.call("pattern", 2 * LIMIT) == pattern(2 * LIMIT)
            assert b._lane.served == 0
    finally:
        stop_bridge(b)


def test_the_lane_is_counted_in_the_bridges_metrics():
    import urllib.request

    from prometheus_client.parser import text_string_to_metric_families
    b = start_bridge(metrics_address="127.0.0.1:0")
    try:
        with kernelpit.connect(b.address, b.token, transport="grpc") as c:
            assert c.call("pattern", 2 * LIMIT) == pattern(2 * LIMIT)
        with lane(b) as sock:
            sock.sendall(b"READ 0123 not-the-token\n")
            assert reply_line(sock).startswith("ERR UNAUTHENTICATED ")
        wait_until(lambda: len(b.blobs) == 0)  # counted once freed
        with urllib.request.urlopen(b.metrics.url, timeout=5) as reply:
            text = reply.read().decode()
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(text) for s in family.samples}
        assert samples[("kernelpit_blob_lane_blobs_total", ())] == 1
        assert samples[("kernelpit_blob_lane_bytes_total", ())] == 2 * LIMIT
        assert samples[("kernelpit_blob_lane_refused_total",
                        (("status", "UNAUTHENTICATED"),))] == 1
    finally:
        stop_bridge(b)


def test_threads_reading_at_once_each_get_their_own_blobs(bridge, client):
    from concurrent.futures import ThreadPoolExecutor
    wait_until(lambda: len(bridge.blobs) == 0)
    before = bridge._lane.served
    sizes = [LIMIT + 1 + k for k in range(12)]  # a different value for every call
    with ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda size: client.call("pattern", size), sizes))
    assert [len(r) for r in results] == sizes
    assert all(r == pattern(size) for r, size in zip(results, sizes))
    wait_until(lambda: bridge._lane.served == before + len(sizes))
