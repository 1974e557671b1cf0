"""Streamed results (kernelpit.contract.streamed): a large result of numeric lists read by
the client while the worker still packs the rest, with a real bridge, real kernels, the
Python client and a client of the proto alone."""

import asyncio
import json
import struct
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest

import kernelpit
import kernelpit.aio
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import values_pb2

MAX_MESSAGE = 1 << 20  # chunks of 512 KB: a 1.6 MB column comes in several
TTL = 3.0
# 8 MB a column, above the bridge's STREAM_FROM (1 MiB): the worker packs each in ~10 ms,
# time enough for the bridge to start the stream before the result comes
ROWS = 1_000_000
STREAMED = (("kernelpit-accept", "packed-lists,streamed-results"),)


def served(**kw):
    portal = Portal("test-streamed")
    b = Bridge([PoolConfig(name="default", adapters=["kp_tools"], workers=1, path=[ADAPTERS]),
                # a result that takes long to send; a worker that did not stop sending it
                # within 3 s of a cancel would be restarted
                PoolConfig(name="pickling", adapters=["kp_tools"], workers=1, path=[ADAPTERS],
                           pickle=True, cancel_grace=3)],
               max_message_size=MAX_MESSAGE, grace=5, discovery=False, blob_ttl=TTL, **kw)
    portal.call(b.start)
    try:
        with kernelpit.connect(b.address, b.token, transport="grpc") as c:
            yield b, c
    finally:
        portal.call(b.stop, 0)
        portal.stop()


@pytest.fixture(scope="module")
def served_with_lane():
    yield from served()


@pytest.fixture(scope="module")
def served_without_lane():
    yield from served(blob_lane=False)  # the Python client reads the stream with ReadBlob


def connected_locally(bridge):
    with kernelpit.connect(bridge.local_address, bridge.token, transport="local") as c:
        yield c


@pytest.fixture(scope="module")
def local_client(served_with_lane):
    yield from connected_locally(served_with_lane[0])


@pytest.fixture(scope="module")
def local_client_without_lane(served_without_lane):
    yield from connected_locally(served_without_lane[0])


@pytest.fixture(scope="module", params=["blob lane", "ReadBlob", "local transport",
                                        "local transport, ReadBlob"])
def bridge_and_client(request):
    """(bridge, client, whether the client reads streams on the blob lane)"""
    if request.param == "ReadBlob":
        return (*request.getfixturevalue("served_without_lane"), False)
    if request.param == "local transport, ReadBlob":  # over the local transport's socket
        return (request.getfixturevalue("served_without_lane")[0],
                request.getfixturevalue("local_client_without_lane"), False)
    bridge, client = request.getfixturevalue("served_with_lane")
    if request.param == "local transport":  # on the lane's Unix socket
        return bridge, request.getfixturevalue("local_client"), True
    return bridge, client, True


@pytest.fixture(scope="module")
def bridge(served_with_lane):
    return served_with_lane[0]


@pytest.fixture(scope="module")
def client(served_with_lane):
    return served_with_lane[1]


def table(rows, cols=3):
    return {f"c{j}": [i * 0.5 + j for i in range(rows)] for j in range(cols)}


def call_request(rows, **kwargs):
    return pb.CallRequest(tool="float_columns", kwargs=values_pb2.Value(
        json=json.dumps({"rows": rows, **kwargs})))


def records(data):
    """The records of a streamed result's blob (its bytes), read as the format in
    kernelpit.contract.streamed says: a 14-byte head, then its body."""
    out, pos = [], 0
    while pos < len(data):
        kind, typecode, index, size = struct.unpack_from("<ccIQ", data, pos)
        body = data[pos + 14:pos + 14 + size]
        assert len(body) == size
        out.append((kind, typecode, index, body))
        pos += 14 + size
    return out


def test_a_large_table_comes_back_exact_to_the_python_client(bridge_and_client):
    bridge, client, on_lane = bridge_and_client
    streamed = bridge.blobs.streamed
    lane = bridge._lane.served if bridge._lane is not None else None
    expected = table(ROWS)
    got = client.call("float_columns", ROWS)
    assert got == expected and all(type(x) is float for x in got["c2"])
    # partials' lists are not the result's: the result still comes back whole and exact
    assert client.call("float_columns", ROWS, cols=2, partials=2) == table(ROWS, 2)
    assert bridge.blobs.streamed == streamed + 2  # (kernelpit_results_streamed)
    if on_lane:
        assert bridge._lane.served == lane + 2  # both read over the blob lane
    elif lane is not None:
        assert bridge._lane.served == lane
    assert client.call("float_columns", 100) == table(100)  # no list comes ahead: plain
    assert bridge.blobs.streamed == streamed + 2
    # 0.8 MB columns: streamed over the lane and the local transport (from 64 KiB), whole
    # over ReadBlob (from 1 MiB)
    assert client.call("float_columns", 100_000) == table(100_000)
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)  # freed as read, not at the TTL


def test_the_format_as_a_client_of_the_proto_reads_it(bridge, stub, auth):
    expected = table(ROWS)
    reply = stub.Call(call_request(ROWS), metadata=(*auth, *STREAMED))
    value = reply.result
    assert value.encoding == "kernelpit-streamed" and value.WhichOneof("kind") == "raw"
    assert value.raw == b"" and value.blobs[0].id
    *lists, last = records(drain(stub, auth, value)[0])
    assert last[0] == b"V" and {r[0] for r in lists} == {b"L"}
    numbers = {index: list(struct.unpack(f"<{len(body) // 8}d", body))
               for _, typecode, index, body in lists if typecode == b"d"}
    result = values_pb2.Value.FromString(last[3])
    doc = json.loads(result.json)
    assert {k: numbers[m["a"]] for k, m in doc.items()} == expected
    assert all(m == {"$kp": "list", "t": "d", "a": m["a"]} for m in doc.values())
    # a client that reads packed lists but did not ask for streaming gets the whole value
    whole = stub.Call(call_request(ROWS), metadata=(*auth, ("kernelpit-accept", "packed-lists")))
    assert whole.result.encoding == "" and json.loads(whole.result.json)["c0"]["i"] == 0
    # (its columns are blobs here: above the message limit)
    assert [len(b) for b in drain(stub, auth, whole.result)] == [ROWS * 8] * 3
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)


def test_the_asyncio_client_and_threads_read_streamed_results_too(bridge, client):
    # over the Calls stream (one stream, many calls): the asyncio client's calls, and a
    # blocking client's while another thread of it is in a call
    expected = table(ROWS, 2)
    streamed = bridge.blobs.streamed

    async def main():
        async with kernelpit.aio.connect(bridge.address, bridge.token,
                                         transport="grpc") as aclient:
            return await asyncio.gather(*(aclient.call("float_columns", ROWS, cols=2)
                                          for _ in range(2)))

    assert asyncio.run(main()) == [expected, expected]
    with ThreadPoolExecutor(3) as threads:
        assert list(threads.map(lambda _: client.call("float_columns", ROWS, cols=2),
                                range(3))) == [expected] * 3
    assert bridge.blobs.streamed == streamed + 5
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)


def drain(stub, auth, value):
    """Read every blob ``value`` references (each is freed once read)."""
    return [b"".join(c.data for c in stub.ReadBlob(pb.ReadBlobRequest(id=ref.id), metadata=auth))
            for ref in value.blobs if ref.id]


def test_a_client_says_from_how_long_a_list_it_wants_a_stream(bridge, stub, auth):
    # 0.88 MB columns: below the bridge's default (1 MiB), above what this client asks for;
    # twenty of them, so that the result comes well after the first
    request = call_request(110_000, cols=20)
    whole = stub.Call(request, metadata=(*auth, *STREAMED))
    assert whole.result.encoding == "" and len(drain(stub, auth, whole.result)) == 20
    asked = stub.Call(request, metadata=(*auth, *STREAMED, ("kernelpit-stream-from", "65536")))
    assert asked.result.encoding == "kernelpit-streamed"
    *lists, last = records(drain(stub, auth, asked.result)[0])
    assert len(lists) == 20 and last[0] == b"V"
    # not a number: the default
    bad = stub.Call(request, metadata=(*auth, *STREAMED, ("kernelpit-stream-from", "soon")))
    assert bad.result.encoding == "" and len(drain(stub, auth, bad.result)) == 20
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)


def test_a_result_that_fails_after_its_lists_raises_the_tools_error(bridge_and_client):
    bridge, client, _ = bridge_and_client
    # the columns are packed and sent ahead, then the set cannot be sent: the error ends
    # the stream, and the client raises what a plain call raises
    with pytest.raises(TypeError, match=r"cannot send: type builtins.set"):
        client.call("float_columns", 1_000_000, then_unsendable=True)
    assert client.call("float_columns", ROWS, cols=1) == table(ROWS, 1)
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)


def test_a_stream_read_cut_short_or_never_read_is_freed(bridge, stub, auth, client):
    reply = stub.Call(call_request(ROWS), metadata=(*auth, *STREAMED))
    chunks = stub.ReadBlob(pb.ReadBlobRequest(id=reply.result.blobs[0].id), metadata=auth)
    next(chunks)
    chunks.cancel()  # the client goes away mid-read
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)  # at once, not at the TTL
    unread = stub.Call(call_request(ROWS), metadata=(*auth, *STREAMED))
    assert unread.result.encoding == "kernelpit-streamed"
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL + 5)  # freed after the TTL
    err = None
    try:
        list(stub.ReadBlob(pb.ReadBlobRequest(id=unread.result.blobs[0].id), metadata=auth))
    except grpc.RpcError as exc:
        err = exc
    assert err is not None and err.code() == grpc.StatusCode.NOT_FOUND
    assert "expired" in err.details()
    wait_until(lambda: any(w.state == "idle" for w in client.workers()))
    assert client.call("add", 2, b=3) == 5


@pytest.mark.parametrize("way", ["blob lane", "ReadBlob", "local transport",
                                 "local transport, ReadBlob"])
def test_a_cancelled_asyncio_call_stops_reading_its_stream_and_its_tool(request, way):
    bridge = request.getfixturevalue("served_without_lane" if way.endswith("ReadBlob")
                                     else "served_with_lane")[0]
    address, transport = ((bridge.local_address, "local") if way.startswith("local")
                          else (bridge.address, "grpc"))
    streamed = bridge.blobs.streamed

    pids = worker_pids(bridge, "pickling")

    async def main():
        async with kernelpit.aio.connect(address, bridge.token, transport=transport) as aclient:
            # its column goes ahead and streams to this client, then the rest takes 60 s
            call = asyncio.ensure_future(
                aclient.options(pool="pickling").call("column_then_slow", ROWS, 60.0))
            async def streaming():
                while not (bridge.blobs.streamed > streamed and bridge.blobs.being_read):
                    await asyncio.sleep(0.01)  # (no event to await in the bridge's process)
            await asyncio.wait_for(streaming(), 30)
            call.cancel()
            with pytest.raises(asyncio.CancelledError):
                await call
            # the read is cut short: the bridge frees the result (before its TTL) and cancels
            # the call; its worker stops sending the result and serves again, well before the
            # 60 s the result would take, and without a restart (its state is kept)
            await asyncio.to_thread(wait_until, lambda: len(bridge.blobs) == 0, TTL - 1)
            await asyncio.to_thread(wait_until, lambda: idle(bridge, "pickling"), 10)
            assert worker_pids(bridge, "pickling") == pids
            assert await aclient.options(pool="pickling").call("add", 2, b=3) == 5

    asyncio.run(main())


def idle(bridge, pool):
    return all(w.state == "idle" for w in bridge.manager.groups[pool].workers.values())


def worker_pids(bridge, pool):
    return {w.pid for w in bridge.manager.groups[pool].workers.values()}
