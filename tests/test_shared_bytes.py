"""Large byte strings by shared memory (kernelpit.kernels.shared_bytes): between the pool and
its workers, and through a bridge that passes them on without a copy."""

import gc
import hashlib
import os
import subprocess
import sys
import textwrap

import numpy as np
import pyarrow as pa
import pytest

import kernelpit
from conftest import ADAPTERS, wait_until
from kernelpit.contract.values import BadValue, to_value
from kernelpit.kernels import arena, protocol, shared_bytes
from kernelpit.kernels.arrow import DecodeError, Transport

MB = 1 << 20


def blob(n, seed=0):
    """What the kp_arrow tool ``blob(n, seed)`` returns."""
    return (seed.to_bytes(4, "little") + bytes(range(252))) * (n // 256) + bytes(n % 256)


@pytest.fixture(scope="module")
def pool():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS], shm_threshold=MB) as p:
        yield p


def shm_files(pool):
    d = f"/dev/shm/kernelpit-{pool.run_id}"
    return sorted(os.listdir(d)) if os.path.isdir(d) else []


def test_an_embedded_pool_moves_large_bytes_through_slabs_both_ways_as_bytes(pool):
    got = pool.call("blob", 8 * MB, 3)
    assert type(got) is bytes and got == blob(8 * MB, 3)
    for value in (got, bytearray(got), memoryview(got), memoryview(got)[::2]):
        sent = bytes(value)
        assert pool.call("blob_info", value) == {
            "type": "bytes", "len": len(sent), "sha256": hashlib.sha256(sent).hexdigest()}
    # nothing in flight or held: the result went through a slab of the worker's arena, the
    # arguments through one of the caller's, and both slabs are free for the next value
    (worker,) = pool.workers()
    slabs = shm_files(pool)
    assert all(n.endswith(".free") for n in slabs)
    assert {n.split("-")[0] for n in slabs} == {"host", f"w{worker.id}"}


def test_a_value_sent_twice_in_one_message_arrives_twice(pool):
    # the sender writes one file for it and refers to it twice; the receiver reads it once
    data = blob(2 * MB, 4)
    table = pa.table({"x": np.arange(MB // 4, dtype=np.float64)})
    back = pool.call("echo", {"a": data, "b": [data, data], "t": table, "u": [table]})
    assert back["a"] == data and back["b"] == [data, data]
    assert back["t"].equals(table) and back["u"][0].equals(table)


def test_a_byte_string_goes_into_its_writer_s_free_slab_and_reads_back_as_itself(tmp_path):
    shm = str(tmp_path)
    writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    reader = Transport(shm_dir=shm, threshold=1000, prefix="host")
    first, second = blob(8 * MB, 3), blob(2 * MB + 17, 5)
    frames = protocol.encode({"a": first, "b": [first], "c": bytearray(b"x" * 999)}, writer)
    assert len(frames) == 2  # one file for the value sent twice, a frame for the small one
    got = protocol.decode(frames, reader)
    assert got == {"a": first, "b": [first], "c": b"x" * 999} and type(got["a"]) is bytes
    wait_until(lambda: [n.endswith(".free") for n in os.listdir(shm)] == [True])
    inode = os.stat(os.path.join(shm, os.listdir(shm)[0])).st_ino
    for _ in range(2):  # the first value written mapped the slab; the next goes through it
        got = protocol.decode(protocol.encode({"v": memoryview(second)}, writer), reader)["v"]
        assert got == second  # the smaller value, not the larger slab it went through
        assert [os.stat(os.path.join(shm, n)).st_ino for n in os.listdir(shm)] == [inode]


def test_a_byte_string_large_enough_for_two_reading_threads_arrives_whole(tmp_path):
    shm = str(tmp_path)
    writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    reader = Transport(shm_dir=shm, threshold=1000, prefix="host")
    n = shared_bytes.COPY_THREADS_FROM + 4097  # split off a page boundary, an odd tail
    sent = hashlib.sha256(b"0").digest() * (n // 32) + bytes(range(n % 32))
    for _ in range(2):  # into a new file, then through the slab it became
        got = protocol.decode(protocol.encode({"v": sent}, writer), reader)["v"]
        assert type(got) is bytes and len(got) == n and got == sent
        del got


def test_a_reader_keeps_its_mapping_of_a_slab_only_while_the_slab_exists(tmp_path):
    shm = str(tmp_path)
    writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    reader = Transport(shm_dir=shm, threshold=1000, prefix="host")

    def read_only():  # the reader's mappings of files in the run directory (the writer's: rw)
        with open("/proc/self/maps") as f:
            return [line.split(None, 5)[5].strip() for line in f
                    if shm in line and line.split()[1].startswith("r--")]

    def send(value):
        got = protocol.decode(protocol.encode({"v": value}, writer), reader)["v"]
        assert got == value

    send(blob(2 * MB, 1))
    send(blob(2 * MB, 2))  # through the slab the first one left, read through the kept mapping
    slab = [n for n in os.listdir(shm) if n.endswith(".free")]
    assert len(slab) == 1 and [slab[0] in m for m in read_only()] == [True]
    os.unlink(os.path.join(shm, slab[0]))  # removed (the cap, or its writer's death)
    send(blob(3 * MB, 3))  # a new file: the next copy drops the mapping of the one gone
    assert len(read_only()) == 1 and not [m for m in read_only() if "(deleted)" in m]
    arena.forget(shm)  # the run is over: nothing of it stays mapped
    assert read_only() == []


def test_a_bridge_keeps_a_received_byte_string_mapped_and_lends_it_on(tmp_path):
    shm = str(tmp_path)
    worker = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    client = Transport(shm_dir=shm, threshold=1000, prefix="l1")
    data = os.urandom(5000)
    frames = protocol.encode({"v": data}, worker)
    assert len(frames) == 1  # no frame: the data is in a file
    held = protocol.decode(frames, bridge)["v"]
    assert shared_bytes.received(held) and bytes(held) == data and len(held) == 5000
    on = protocol.encode({"v": held}, bridge)  # lent: a second name of the same file
    names = os.listdir(shm)
    assert len(names) == 2 and len({os.stat(os.path.join(shm, n)).st_ino for n in names}) == 1
    got = protocol.decode(on, client)["v"]
    assert type(got) is bytes and got == data
    assert [n.startswith("host@w1-") for n in os.listdir(shm)] == [True]  # the client's name went
    del held
    gc.collect()
    # the last holder gave the file back to its writer's arena
    assert [n.startswith("w1-") and n.endswith(".free") for n in os.listdir(shm)] == [True]


def at_page_offset(data, offset):
    """A read-only view of ``data`` whose first byte lies ``offset`` bytes past a page."""
    room = bytearray(len(data) + 2 * 4096)
    start = (offset - np.frombuffer(room, np.uint8).ctypes.data) % 4096
    room[start:start + len(data)] = data
    return memoryview(room)[start:start + len(data)].toreadonly()


@pytest.mark.parametrize("offset", [0, 48, 4095])
def test_a_byte_string_lies_in_its_slab_at_its_offset_within_a_page_and_arrives_whole(
        tmp_path, offset):
    # so both copies, into the slab and out into a bytes object (whose data lies 48 bytes
    # past a page), move between addresses at one offset within their pages
    shm = str(tmp_path)
    worker = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    client = Transport(shm_dir=shm, threshold=1000, prefix="l1")
    data = os.urandom(3 * MB + 5)
    marker = shared_bytes.encode(at_page_offset(data, offset), worker)
    assert marker.get("off", 0) == offset  # no "off" at all for a byte string at a page
    assert os.stat(os.path.join(shm, marker["shm"])).st_size >= offset + len(data)
    got = shared_bytes.decode(dict(marker), client)  # a worker's result, read by a client
    assert type(got) is bytes and got == data
    for _ in range(2):  # the second time through the slab the first one left
        marker = shared_bytes.encode(at_page_offset(data, offset), worker)
        held = shared_bytes.decode(marker, bridge)  # kept mapped, exactly the value
        assert shared_bytes.received(held) and held.readonly and len(held) == len(data)
        assert held[:8] == data[:8] and held[-3:] == data[-3:] and bytes(held) == data
        lent = shared_bytes.encode(held, bridge)  # a second name, the same offset
        assert lent.get("off", 0) == offset
        assert shared_bytes.decode(lent, client) == data
        del held
        gc.collect()


@pytest.mark.parametrize("offset", [0, 48])
def test_a_bridge_streams_a_received_byte_string_through_its_kept_mapping_of_the_slab(
        tmp_path, offset):
    # A bridge reads a value it streams to a gRPC client once, whole: through the mapping
    # of the value's slab that it keeps (whose page tables the value before filled), and
    # never from another file or offset, whatever came in that slab before.
    shm = str(tmp_path)
    worker = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    kept = set()
    for _ in range(3):  # the same slab each time, with other bytes in it
        data = os.urandom(3 * MB + 5)
        held = shared_bytes.decode(shared_bytes.encode(at_page_offset(data, offset), worker),
                                   bridge)
        streamed = arena.read_once(held)
        assert streamed is not held and streamed.obj is not held.obj  # another mapping
        assert bytes(streamed) == data
        part = held[MB:2 * MB + 7]  # a slice reads through it too, at its own place
        assert bytes(arena.read_once(part)) == data[MB:2 * MB + 7]
        kept.add(id(streamed.obj))
        del held, streamed, part
        gc.collect()
    assert len(kept) == 1  # one slab, one kept mapping
    unrelated = memoryview(bytearray(blob(2 * MB, 4)))
    assert arena.read_once(unrelated) is unrelated  # not received: read as it is
    arena.forget(shm)


def test_a_bridge_lets_go_of_its_kept_mapping_of_a_slab_that_is_gone(tmp_path):
    # A slab the bridge streamed from and its writer then deleted (past its cap, or the
    # writer died) would stay in memory through the bridge's kept mapping; the blob
    # store's sweeper lets go of it.
    import asyncio

    from kernelpit.service.blobs import BlobStore

    shm = str(tmp_path)
    worker = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    data = os.urandom(3 * MB)
    held = shared_bytes.decode(shared_bytes.encode(data, worker), bridge)
    assert bytes(arena.read_once(held)) == data
    del held
    gc.collect()  # the slab is back in its writer's arena, and still kept mapped here

    def mapped(state):  # this process's read-only mappings of the run's files (the writer's: rw)
        with open("/proc/self/maps") as f:
            return [line for line in f if shm in line and line.split()[1].startswith("r--")
                    and ("(deleted)" in line) == state]

    assert mapped(False)
    os.unlink(os.path.join(shm, [n for n in os.listdir(shm) if n.endswith(".free")][0]))
    assert mapped(True)  # the file is gone, its pages are not

    async def sweep():
        store = BlobStore(shm, ttl=0.2)
        store.start()
        try:
            while mapped(True):
                await asyncio.sleep(0.02)
        finally:
            store.close()
    asyncio.run(asyncio.wait_for(sweep(), 20))
    assert not mapped(True) and not mapped(False)
    arena.forget(shm)  # the writer's own mapping, in this process too here


def test_a_bridge_streams_a_received_table_through_its_kept_mapping_of_the_slab(tmp_path):
    from kernelpit.kernels import arrow

    shm = str(tmp_path)
    worker = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    for seed in (1, 2):
        table = pa.table({"x": np.arange(400_000, dtype=np.float64) + seed,
                          "y": np.arange(400_000, dtype=np.int64) * seed})
        held = protocol.decode(protocol.encode({"v": table}, worker), bridge)["v"]
        segments = arrow.Segments()
        arrow.write_ipc(pa, held, pa.PythonFile(segments, mode="w"), file_format=False)
        streamed = [arena.read_once(p) for p in segments.parts]
        assert any(type(s) is memoryview and s is not p
                   for s, p in zip(streamed, segments.parts))  # the columns, at least
        got = pa.ipc.open_stream(b"".join(bytes(memoryview(s)) for s in streamed)).read_all()
        assert got.equals(table)
        del held, segments, streamed
        gc.collect()
    arena.forget(shm)


def test_a_byte_string_fits_the_slab_a_byte_string_of_its_length_left_at_any_offset(tmp_path):
    # the offset within a page follows the sender's memory, which changes from value to
    # value; a slab that fit only the first offset would mean fresh pages every time
    shm = str(tmp_path)
    writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    reader = Transport(shm_dir=shm, threshold=1000, prefix="host")
    data = os.urandom(2 * MB + 5)
    inodes = set()
    for offset in (0, 4095, 48, 4095):
        got = protocol.decode(protocol.encode({"v": at_page_offset(data, offset)}, writer),
                              reader)["v"]
        assert got == data
        (slab,) = os.listdir(shm)
        assert slab.endswith(".free")
        inodes.add(os.stat(os.path.join(shm, slab)).st_ino)
    assert len(inodes) == 1


def test_a_result_that_fails_halfway_gives_its_written_table_back_at_once(pool):
    # the table is in shared memory before the set fails the result; its file goes back to
    # the worker's arena now, not when the worker dies
    (pid,) = [w.pid for w in pool.workers()]
    with pytest.raises(TypeError, match="cannot send: type builtins.set"):
        pool.call("table_then_unsendable", MB)
    assert [n for n in shm_files(pool) if not n.endswith(".free")] == []
    assert pool.call("numeric_table", MB).num_rows == MB  # through that slab
    assert [w.pid for w in pool.workers()] == [pid]


@pytest.mark.parametrize("encode, fails", [
    (lambda value, shm: protocol.encode(value, shm), protocol.EncodeError),
    (lambda value, shm: to_value(value, shm=shm), BadValue),  # the bridge's encoder
], ids=["protocol", "contract"])
def test_a_message_that_fails_halfway_leaves_no_file_in_flight(tmp_path, encode, fails):
    shm = str(tmp_path)
    writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
    with pytest.raises(fails):
        encode({"a": os.urandom(5000), "z": {1, 2}}, writer)
    assert [n.startswith("w1-") and n.endswith(".free") for n in os.listdir(shm)] == [True]
    # a lent file: its second name goes, and its holder keeps the file
    bridge = Transport(shm_dir=shm, threshold=1000, prefix="host", passes_on=True)
    held = protocol.decode(protocol.encode({"v": os.urandom(5000)}, writer), bridge)["v"]
    before = sorted(os.listdir(shm))
    with pytest.raises(fails):
        encode({"v": held, "z": {1, 2}}, bridge)
    assert sorted(os.listdir(shm)) == before


def test_a_value_that_does_not_fit_in_shared_memory_goes_inline_and_leaves_no_file(tmp_path):
    # "no room" as a full /dev/shm gives it (ENOSPC), made here with a file size limit of
    # 1 MB in a child process (EFBIG): both encoders, a worker's and the bridge's, send the
    # byte string and the table inline, and the part of a file written is removed
    script = textwrap.dedent(f"""
        import os, resource, signal
        import numpy as np, pyarrow as pa
        from kernelpit.contract.values import from_value, to_value
        from kernelpit.kernels import protocol, wire
        from kernelpit.kernels.arrow import Transport
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
        shm = {str(tmp_path)!r}
        writer = Transport(shm_dir=shm, threshold=1000, prefix="w1")
        data = os.urandom(3 << 20)
        table = pa.table({{"x": np.arange(1 << 18, dtype=np.float64)}})
        frames = protocol.encode({{"b": data, "t": table}}, writer)
        assert os.listdir(shm) == [], os.listdir(shm)
        sent = [b"".join(bytes(p) for p in f) if type(f) is wire.Gather else f for f in frames]
        got = protocol.decode(sent, Transport(shm_dir=shm, threshold=1000, prefix="host"))
        assert got["b"] == data and got["t"].equals(table)
        value = to_value({{"b": data, "t": table}}, shm=writer)
        assert os.listdir(shm) == [] and '"shm"' not in value.json
        got = from_value(value, shm=writer)
        assert got["b"] == data and got["t"].equals(table)
        print("inline")
    """)
    run = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                         timeout=120)
    assert run.returncode == 0 and run.stdout.strip() == "inline", run.stderr


@pytest.mark.parametrize("marker, says", [
    ({"$kp": "bytes", "shm": "../x.arrow", "len": 10, "a": "w1"}, "refusing"),
    ({"$kp": "bytes", "shm": "w1-none.arrow", "len": 10, "a": "w1"}, "gone"),
    ({"$kp": "bytes", "shm": "w1-a.arrow", "len": 10, "a": "w/1"}, "refusing"),
    ({"$kp": "bytes", "shm": "w1-short.arrow", "len": 10 ** 6, "a": "w1"},
     "needs the first 1000000 bytes of its file, which has 10"),
    ({"$kp": "bytes", "shm": "w1-short.arrow", "len": 5, "a": "w1", "off": 8},
     "needs the first 13 bytes of its file, which has 10"),
    ({"$kp": "bytes", "shm": "w1-short.arrow", "len": 5, "a": "w1", "off": -1}, "offset -1"),
    ({"$kp": "bytes", "shm": "w1-short.arrow", "len": 5, "a": "w1", "off": 4096}, "offset 4096"),
    ({"$kp": "bytes", "shm": "w1-short.arrow", "len": 5, "a": "w1", "off": "8"}, "offset '8'"),
])
def test_a_bad_shared_memory_reference_is_a_decode_error(tmp_path, marker, says):
    (tmp_path / "w1-short.arrow").write_bytes(b"x" * 10)
    header = protocol.markers.dumps({"v": marker}).encode()
    with pytest.raises(DecodeError, match=says):
        protocol.decode([header], Transport(shm_dir=str(tmp_path), prefix="host"))
    with pytest.raises(DecodeError, match="refusing"):  # no shared memory here at all
        protocol.decode([header], Transport())
