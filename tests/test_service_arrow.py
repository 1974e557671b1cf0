"""Arrow values through the bridge: a real grpc.aio server, real kernels, the real clients.

Every client of this module accepts messages of at most 8 MB and the bridge
too (--max-message-size 8MB), so tables of 100 MB and 1 GB can only get
through in chunks: no single gRPC message exceeded the limit when they do.
"""

import asyncio
import gc
import hashlib
import os
import subprocess
import sys

import grpc
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.compute as pc
import pytest

import kernelpit
import kernelpit.remote.target
import kernelpit.aio
import kernelpit.remote
import arrow_cases
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.contract.framing import BLOB_SIZE_KEY
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2

LIMIT = 8 << 20
TTL = 5.0


@pytest.fixture(scope="module")
def bridge():
    portal = Portal("test-arrow-bridge")
    b = Bridge([PoolConfig(name="default", adapters=["kp_arrow", "kp_remote_arrow"], workers=1,
                           path=[ADAPTERS])],
               max_message_size=LIMIT, grace=5, discovery=False, blob_ttl=TTL)
    portal.call(b.start)
    with pytest.MonkeyPatch.context() as mp:  # clients refuse any message above the limit
        mp.setattr(kernelpit.remote.target, "CHANNEL_OPTIONS", [
            ("grpc.max_receive_message_length", LIMIT), ("grpc.max_send_message_length", LIMIT),
            ("grpc.enable_retries", 0)])
        b.portal = portal
        yield b
    portal.call(b.stop, 0)
    portal.stop()


@pytest.fixture(scope="module")
def client(bridge):
    with kernelpit.connect(bridge.address, bridge.token) as c:
        yield c


def leftovers(bridge):
    """Blobs held by the bridge and files in its shared-memory directory (but the free
    slabs its arena keeps for the next values)."""
    shm = bridge.manager.shm_dir
    names = os.listdir(shm) if shm and os.path.isdir(shm) else []
    return len(bridge.blobs), sorted(n for n in names if not n.endswith(".free"))


@pytest.fixture(autouse=True)
def nothing_left_behind(bridge):
    yield
    try:
        wait_until(lambda: leftovers(bridge) == (0, []), timeout=TTL * 3)
    except AssertionError:
        raise AssertionError(f"left: {leftovers(bridge)}")


BIG = pa.table({"x": np.arange(2_000_000, dtype=np.float64), "y": np.arange(2_000_000)})  # 32 MB

TABLES = {
    **arrow_cases.TABLES,
    "big": BIG,
}


@pytest.mark.parametrize("name", list(TABLES))
def test_tables_round_trip(client, name):
    table = TABLES[name]
    out = client.call("echo", table)
    assert isinstance(out, pa.Table) and out.equals(table) and out.schema == table.schema


def test_record_batches_round_trip(client):
    for batch in (pa.record_batch({"a": [1, 2], "b": ["x", None]}), BIG.to_batches()[0]):
        out = client.call("echo", batch)
        assert isinstance(out, pa.RecordBatch) and out.equals(batch)


FRAMES = {
    **arrow_cases.FRAMES,
    "big": pd.DataFrame({"x": np.random.default_rng(0).random(1_000_000),
                         "c": pd.Categorical(np.resize(["u", "v", "w"], 1_000_000))},
                        index=pd.RangeIndex(5, 1_000_005, name="i")),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_dataframes_keep_dtypes_and_index(client, name):
    frame = FRAMES[name]
    out = client.call("echo", frame)
    if len(frame) < 1000:
        pd.testing.assert_frame_equal(out, frame)
    else:  # as strict, without assert_frame_equal's slow categorical path
        assert out.equals(frame) and list(out.dtypes) == list(frame.dtypes)
        pd.testing.assert_index_equal(out.index, frame.index, exact=True)  # still a RangeIndex
    assert client.call("frame_info", frame)["type"] == "DataFrame"  # the tool got a DataFrame too


def test_series_and_numpy_arrays_keep_type_dtype_and_shape(client):
    series = pd.Series([1.5, None], name="price")
    pd.testing.assert_series_equal(client.call("echo", series), series)
    for arr in (np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.zeros((0, 3)),
                np.linspace(0, 1, 100_000), np.array(["a", "bc"]), np.array([True, False]),
                np.array(["2024-01-01", "NaT"], dtype="datetime64[ms]"),
                np.ones((200, 100, 300), dtype=np.float32)):  # 24 MB: a tensor in chunks
        out = client.call("echo", arr)
        assert isinstance(out, np.ndarray) and out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
    assert client.call("echo", np.float32(2.5)) == 2.5 and client.call("echo", np.int64(7)) == 7


def test_values_nest_inside_ordinary_structures(client):
    table = TABLES["nullable"]
    value = {"t": table, "a": [np.arange(3), b"raw"], "n": 1, "big": [BIG, BIG.slice(5, 10)]}
    out = client.call("echo", value)
    assert out["t"].equals(table) and list(out["a"][0]) == [0, 1, 2] and out["a"][1] == b"raw"
    assert out["big"][0].equals(BIG) and out["big"][1].equals(BIG.slice(5, 10)) and out["n"] == 1


def test_a_generator_of_record_batches_streams_batches(client):
    # small batches inline, 3 MB ones inline but never several in one message, 8 MB ones as blobs
    for rows in (5, 400_000, 1_000_000):
        events = list(client.stream("batches", 3, rows=rows))
        parts = [e.value for e in events if e.kind == "partial"]
        assert [type(p) for p in parts] == [pa.RecordBatch] * 3
        assert pa.Table.from_batches(parts).column("i").to_pylist() == list(range(3 * rows))
        assert events[-1].value == 3


def test_map_with_arrow_items(client):
    items = [TABLES["nullable"], BIG, TABLES["empty"]]
    out = client.map("echo", items)
    assert all(o.equals(t) for o, t in zip(out, items))
    assert client.map("checksum", [BIG, BIG.slice(0, 10)]) == [
        {"rows": 2_000_000, "sum": float(np.arange(2_000_000).sum()), "type": "Table"},
        {"rows": 10, "sum": 45.0, "type": "Table"}]


def test_async_client_moves_arrow_values(bridge):
    async def main():
        async with kernelpit.aio.connect(bridge.address, bridge.token) as pool:
            assert (await pool.call("echo", BIG)).equals(BIG)
            parts = [e.value async for e in pool.stream("batches", 2, rows=1_000_000)
                     if e.kind == "partial"]
            assert [p.num_rows for p in parts] == [1_000_000] * 2
            assert (await pool.map("echo", [BIG]))[0].equals(BIG)
            together = await asyncio.gather(*(pool.call("echo", BIG.slice(i)) for i in range(3)))
            assert [t.num_rows for t in together] == [2_000_000 - i for i in range(3)]
            # 3 MB each, inline: one call batch of them all would pass the 8 MB limit
            mid = BIG.slice(0, 190_000)
            together = await asyncio.gather(*(pool.call("echo", mid) for _ in range(6)))
            assert all(t.equals(mid) for t in together)
    asyncio.run(main())


def test_a_hundred_megabyte_table_both_ways_in_chunks(client):
    rows = 13_000_000  # 104 MB, thirteen times the message limit
    out = client.call("numeric_table", rows, 1)
    assert out.num_rows == rows and out.column(0)[rows - 1].as_py() == rows - 1
    assert client.call("checksum", out) == {"rows": rows, "sum": float(rows * (rows - 1) // 2),
                                            "type": "Table"}


def test_a_gigabyte_table_result_through_a_remote_client(client):
    rows = 1 << 27  # 128 Mi float64 = 1 GiB
    out = client.call("numeric_table", rows, 1)
    assert out.num_rows == rows and out.nbytes == rows * 8
    assert out.column(0)[rows - 1].as_py() == rows - 1 and out.column(0)[12345].as_py() == 12345


def test_a_gigabyte_argument_uploads_in_chunks(client):
    rows = 1 << 27
    table = pa.table({"x": np.ones(rows)})
    assert client.call("checksum", table) == {"rows": rows, "sum": float(rows), "type": "Table"}


def test_an_uploaded_argument_is_let_go_as_soon_as_the_call_returns(client):
    # the client keeps no reference to an argument it uploaded (not even in a reference
    # cycle, which would hold it until the next garbage collection)
    before = pa.total_allocated_bytes()
    gc.disable()
    try:  # 16 MB, in memory of pyarrow's allocator: uploaded as a blob
        table = pa.table({"x": pc.multiply(pa.array(np.arange(2 * LIMIT // 8, dtype="float64")), 2)})
        assert pa.total_allocated_bytes() >= before + 2 * LIMIT
        assert client.call("describe", table)["rows"] == table.num_rows
        del table
        assert pa.total_allocated_bytes() == before
    finally:
        gc.enable()


def test_bytes_larger_than_a_message_go_in_chunks_both_ways(client, bridge):
    size = 3 * LIMIT + 7
    data = os.urandom(size)
    assert client.call("digest", data) == {"size": size, "sha256": hashlib.sha256(data).hexdigest()}
    out = client.call("pattern", size)
    assert type(out) is bytes and out == (bytes(range(251)) * (size // 251 + 1))[:size]
    assert client.call("echo", {"a": data, "b": [b"small"]}) == {"a": data, "b": [b"small"]}

    async def main():
        async with kernelpit.aio.connect(bridge.address, bridge.token) as pool:
            assert await pool.call("pattern", size) == out
    asyncio.run(main())


CLIENT_KEEPS = """
import sys, time, kernelpit
from kernelpit.kernels import wire
wire.KEPT_SECONDS = 4  # long enough for a 64 MB call on a loaded machine: unheld frames
# that wait longer than that between calls are let go, and the next one is received anew
size = 64 << 20  # above glibc's largest mmap threshold: malloc alone would unmap it when freed
expected = (bytes(range(251)) * (size // 251 + 1))[:size]

def rss():
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096

with kernelpit.connect(sys.argv[1], sys.argv[2]) as c:
    first = c.call("pattern", size)
    view = memoryview(first)[:5]
    address = id(first)
    del first
    held = c.call("pattern", size)  # `view` still holds the first: a buffer of its own
    assert id(held) != address and bytes(view) == expected[:5] and held == expected
    del view, held
    before = rss()
    again = c.call("pattern", size)
    assert again == expected and len(again) == size and hash(again) == hash(expected)
    assert id(again) == address and rss() < before + size // 2  # no new memory for it
    del again
    kept = rss()
    assert kept > before - size // 2  # dropped, but its memory kept for the next result
    deadline = time.monotonic() + 30
    while rss() > kept - size // 2 and time.monotonic() < deadline:
        time.sleep(0.05)  # idle for KEPT_SECONDS: let go
    assert rss() < kept - size // 2, (kept, rss())
print("ok")
"""


def test_a_client_keeps_the_memory_of_a_large_result_for_the_next_until_idle(bridge):
    """A fresh buffer for every large result costs a page fault and a zeroed page per 4 KiB
    (on a VM that takes freed pages back, several times that): a client (its own process
    here) receives the next large result into the memory of one nobody holds any more,
    never into one a view still holds, and lets it go once idle for KEPT_SECONDS."""
    out = subprocess.run([sys.executable, "-c", CLIENT_KEEPS, bridge.address, bridge.token],
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert out.stdout.split() == ["ok"]

# -- malformed input, cut transfers, crashes --------------------------------------------------

def arrow_value(marker, buffers, blobs=()):
    return values_pb2.Value(json=f"[{marker}]", buffers=buffers, blobs=blobs)


def ipc(table):
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as w:
        w.write_table(table)
    return sink.getvalue().to_pybytes()


GOOD = ipc(TABLES["nullable"])


@pytest.mark.parametrize("value,says", [
    (arrow_value('{"$kp": "arrow", "t": "table", "i": 0}', [b"not arrow"]), "malformed Arrow"),
    (arrow_value('{"$kp": "arrow", "t": "table", "i": 0}', [GOOD[: len(GOOD) // 2]]),
     "malformed Arrow"),
    (arrow_value('{"$kp": "arrow", "t": "pandas", "i": 0}', [GOOD[:200] + b"\xff" * 64 + GOOD[264:]]),
     "malformed Arrow"),
    (arrow_value('{"$kp": "arrow", "t": "tensor", "i": 0}', [GOOD]), "malformed Arrow"),
    (arrow_value('{"$kp": "arrow", "t": "table", "i": 3}', [GOOD]), "no matching buffer"),
    (arrow_value('{"$kp": "arrow", "t": "table", "shm": "x.arrow"}', []), "shared-memory"),
    (arrow_value('{"$kp": "arrow", "t": "table", "i": 0}', [b""],
                 [values_pb2.BlobRef(id="nope", size=10)]), "no uploaded blob"),
    (arrow_value('{"$kp": "arrow", "t": "table", "i": 0}', [b"", b""],
                 [values_pb2.BlobRef(id="nope", size=10)]), "blob reference"),
])
def test_malformed_arrow_is_invalid_argument(client, stub, auth, value, says):
    req = pb.CallRequest(tool="echo", args=value)
    for call in (stub.Call, lambda r, metadata: list(stub.CallStream(r, metadata=metadata))):
        with pytest.raises(grpc.RpcError) as info:
            call(req, metadata=auth)
        assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in info.value.details() and "args" in info.value.details()
    assert client.call("echo", TABLES["nullable"]).equals(TABLES["nullable"])  # still serving


def test_another_client_writes_and_reads_tables_by_the_documented_convention(stub, auth):
    # what a non-Python client does: an Arrow IPC stream in a buffer, a marker in the JSON
    reply = stub.Call(pb.CallRequest(tool="echo", args=arrow_value(
        '{"$kp": "arrow", "t": "table", "i": 0}', [GOOD])), metadata=auth)
    marker = reply.result.json
    assert '"$kp":"arrow"' in marker and '"t":"table"' in marker
    assert pa.ipc.open_stream(reply.result.buffers[0]).read_all().equals(TABLES["nullable"])
    # a big one: uploaded with WriteBlob, read back with ReadBlob, in chunks
    data = ipc(BIG)
    ref = stub.WriteBlob((pb.BlobChunk(data=data[i:i + (1 << 20)])
                          for i in range(0, len(data), 1 << 20)), metadata=auth)
    assert ref.size == len(data)
    value = arrow_value('{"$kp": "arrow", "t": "table", "i": 0}', [b""], [ref])
    reply = stub.Call(pb.CallRequest(tool="echo", args=value), metadata=auth)
    (blob,) = [r for r in reply.result.blobs if r.id]
    got = b"".join(c.data for c in stub.ReadBlob(pb.ReadBlobRequest(id=blob.id), metadata=auth))
    assert len(got) == blob.size and pa.ipc.open_stream(got).read_all().equals(BIG)
    with pytest.raises(grpc.RpcError) as info:  # read once: then it is gone
        list(stub.ReadBlob(pb.ReadBlobRequest(id=blob.id), metadata=auth))
    assert info.value.code() == grpc.StatusCode.NOT_FOUND


def big_result_blob(stub, auth):
    reply = stub.Call(pb.CallRequest(tool="numeric_table", args=values_pb2.Value(
        json="[4000000, 1]")), metadata=auth)
    return next(r for r in reply.result.blobs if r.id)


def test_a_client_disconnecting_mid_transfer_leaves_nothing(bridge, auth):
    # mid-download: one chunk read, then the connection goes
    channel = grpc.insecure_channel(bridge.address)
    stub = pb_grpc.BridgeStub(channel)
    reads = stub.ReadBlob(pb.ReadBlobRequest(id=big_result_blob(stub, auth).id), metadata=auth)
    next(reads)
    assert len(bridge.blobs) == 1
    channel.close()
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)  # at once, not at the TTL
    # mid-upload: the stream of chunks breaks off
    channel = grpc.insecure_channel(bridge.address)
    stub = pb_grpc.BridgeStub(channel)
    sent = []

    def chunks():
        yield pb.BlobChunk(data=b"\x00" * (1 << 20))
        sent.append(1)
        channel.close()
        yield pb.BlobChunk(data=b"\x00" * (1 << 20))

    with pytest.raises((grpc.RpcError, ValueError)):  # it says how much it meant to send
        stub.WriteBlob(chunks(), metadata=(*auth, (BLOB_SIZE_KEY, str(2 << 20))))
    assert sent
    wait_until(lambda: bridge.blobs.files() == [], timeout=TTL - 1)


def test_a_cancelled_stream_frees_its_unread_blobs(bridge, stub, auth):
    req = pb.CallRequest(tool="batches", args=values_pb2.Value(json="[3]"),
                         kwargs=values_pb2.Value(json='{"rows": 1000000}'))
    events = stub.CallStream(req, metadata=auth)
    for batch in events:
        if any(e.WhichOneof("kind") == "partial" for e in batch.events):
            break
    assert len(bridge.blobs) >= 1
    events.cancel()
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL - 1)


def test_unread_blobs_expire(bridge, stub, auth):
    big_result_blob(stub, auth)
    assert len(bridge.blobs) == 1
    wait_until(lambda: len(bridge.blobs) == 0, timeout=TTL * 3)


def test_a_worker_crash_mid_transfer_leaves_nothing(client):
    with pytest.raises(kernelpit.WorkerCrashed):
        client.call("die_after_writing", 2_000_000)  # result half written to shared memory
    with pytest.raises(kernelpit.WorkerCrashed):
        client.options(deadline=120).call("die_holding", BIG)  # an uploaded argument in hand
    assert client.options(deadline=120).call("echo", BIG).equals(BIG)


def test_an_upload_that_cannot_fit_is_refused_up_front(client, stub, auth):
    with pytest.raises(grpc.RpcError) as info:
        stub.WriteBlob(iter([pb.BlobChunk(data=b"x")]), metadata=(*auth, (BLOB_SIZE_KEY, str(10**15))))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "does not fit" in info.value.details()
    assert client.call("echo", BIG).equals(BIG)


def test_a_large_result_is_streamed_from_the_values_own_buffers(tmp_path):
    # what the bridge does with a table a worker handed over by shared memory: no copy
    from kernelpit.contract.values import to_value

    path = str(tmp_path / "t.arrow")
    with pa.OSFile(path, "wb") as sink, pa.ipc.new_file(sink, BIG.schema) as writer:
        writer.write_table(BIG)
    mapped = pa.ipc.open_file(pa.memory_map(path)).read_all()
    parked = []
    value = to_value({"t": mapped}, park=lambda segments, size: parked.append(segments) or "id")
    assert [r.id for r in value.blobs] == ["id"] and value.buffers == [b""]
    addresses = {s.address for s in parked[0] if isinstance(s, pa.Buffer)}
    assert mapped.column("x").chunks[0].buffers()[1].address in addresses
