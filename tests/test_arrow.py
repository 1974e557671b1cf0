"""The Arrow data plane in the embedded pool: types, shared memory, no leaks."""

import fractions
import os
import time

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest

import kernelpit
import arrow_cases
from conftest import ADAPTERS, wait_until


@pytest.fixture(scope="module")
def pool():
    # a low threshold sends everything but tiny values through shared memory
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS], shm_threshold=2000) as p:
        yield p


def shm_files(pool):
    d = f"/dev/shm/kernelpit-{pool.run_id}"
    return os.listdir(d) if os.path.isdir(d) else []


TABLES = {
    **arrow_cases.TABLES,
    "large": pa.table({"x": np.arange(100_000, dtype=np.float64), "y": np.arange(100_000)}),
}


@pytest.mark.parametrize("name", list(TABLES))
def test_tables_round_trip(pool, name):
    table = TABLES[name]
    out = pool.call("echo", table)
    assert isinstance(out, pa.Table) and out.equals(table) and out.schema == table.schema


def test_record_batches_round_trip(pool):
    batch = pa.record_batch({"a": [1, 2], "b": ["x", None]})
    out = pool.call("echo", batch)
    assert isinstance(out, pa.RecordBatch) and out.equals(batch)


FRAMES = {
    **arrow_cases.FRAMES,
    "large": pd.DataFrame({"x": np.random.default_rng(0).random(50_000)}),
}


@pytest.mark.parametrize("name", list(FRAMES))
def test_dataframes_keep_dtypes_and_index(pool, name):
    frame = FRAMES[name]
    out = pool.call("echo", frame)
    pd.testing.assert_frame_equal(out, frame)
    assert pool.call("frame_info", frame)["type"] == "DataFrame"  # the tool got a DataFrame too


def test_a_range_index_stays_a_range_index(pool):
    frame = pd.DataFrame({"x": [1, 2, 3]}, index=pd.RangeIndex(10, 40, 10))
    out = pool.call("echo", frame)
    assert isinstance(out.index, pd.RangeIndex) and out.index.equals(frame.index)


def test_series_and_numpy_arrays_keep_type_dtype_and_shape(pool):
    series = pd.Series([1.5, None], name="price")
    pd.testing.assert_series_equal(pool.call("echo", series), series)
    for arr in (np.arange(24, dtype=np.int16).reshape(2, 3, 4), np.zeros((0, 3)),
                np.linspace(0, 1, 100_000), np.array(["a", "bc"]), np.array([True, False]),
                np.array(["2024-01-01", "NaT"], dtype="datetime64[ms]")):
        out = pool.call("echo", arr)
        assert isinstance(out, np.ndarray) and out.dtype == arr.dtype and out.shape == arr.shape
        np.testing.assert_array_equal(out, arr)
    assert pool.call("echo", np.float32(2.5)) == 2.5 and pool.call("echo", np.int64(7)) == 7


def test_values_nest_inside_ordinary_structures(pool):
    table = TABLES["nullable"]
    out = pool.call("echo", {"t": table, "a": [np.arange(3), b"raw"], "n": 1})
    assert out["t"].equals(table) and list(out["a"][0]) == [0, 1, 2] and out["a"][1] == b"raw"


def only_free_slabs(pool):
    return all(n.endswith(".free") for n in shm_files(pool))


def inodes(pool, start=""):
    d = f"/dev/shm/kernelpit-{pool.run_id}"
    return {os.stat(os.path.join(d, n)).st_ino for n in shm_files(pool) if n.startswith(start)}


def test_large_values_go_by_reference_and_leave_only_free_slabs(pool):
    out = pool.call("echo", TABLES["large"])
    assert out.equals(TABLES["large"])
    del out
    wait_until(lambda: only_free_slabs(pool))


def test_the_pages_of_dropped_values_are_reused_both_ways():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS],
                        shm_threshold=2000) as p:
        worker = p.workers()[0].id
        table = pa.table({"x": np.ones(50_000)})
        for _ in range(2):  # warm: the first values of each direction allocate their slabs
            assert p.call("numeric_table", 50_000, 1).num_rows == 50_000
            assert p.call("describe", table)["rows"] == 50_000
        wait_until(lambda: only_free_slabs(p))
        results, arguments = inodes(p, f"w{worker}-"), inodes(p, "host-")
        assert results and arguments
        for _ in range(3):
            assert p.call("numeric_table", 50_000, 1).num_rows == 50_000
            assert p.call("describe", table)["rows"] == 50_000
            wait_until(lambda: only_free_slabs(p))
        # the same files (and so the same pages) carried every later value
        assert inodes(p, f"w{worker}-") == results and inodes(p, "host-") == arguments


def test_a_closed_pool_leaves_no_slab_mapped_in_its_owner():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS],
                        shm_threshold=2000) as p:
        table = pa.table({"x": np.ones(50_000)})
        for _ in range(3):  # the owner writes its argument slabs, then keeps them mapped
            assert p.call("describe", table)["rows"] == 50_000
        run = f"kernelpit-{p.run_id}"
    with open("/proc/self/maps") as f:
        assert [line for line in f if run in line] == []


def test_a_table_received_from_a_tool_is_passed_back_by_reference():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS],
                        shm_threshold=2000) as p:
        got = p.call("numeric_table", 50_000, 1)
        held = shm_files(p)
        assert len(held) == 1 and held[0].startswith("host@")  # the caller maps the tool's file
        assert p.call("describe", got)["rows"] == 50_000
        # no copy was written for the argument (a copy would stay as a free slab of ours);
        # the tool's own name of the lent file goes once it lets go of the argument
        wait_until(lambda: shm_files(p) == held)
        inode = os.stat(os.path.join(f"/dev/shm/kernelpit-{p.run_id}", held[0])).st_ino
        del got
        # the tool has let go of its name, so the last holder gives the file back to the
        # tool's arena: the same pages carry the tool's next value
        wait_until(lambda: [n.endswith(".free") for n in shm_files(p)] == [True])
        again = p.call("numeric_table", 50_000, 1)
        assert os.stat(os.path.join(f"/dev/shm/kernelpit-{p.run_id}", shm_files(p)[0])).st_ino == inode
        del again


def test_an_arena_of_zero_frees_shared_memory_at_once():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS],
                        shm_threshold=2000, shm_arena=0) as p:
        assert p.call("numeric_table", 50_000, 1).num_rows == 50_000
        assert p.call("describe", pa.table({"x": np.ones(50_000)}))["rows"] == 50_000
        wait_until(lambda: shm_files(p) == [])


def test_a_generator_of_record_batches_streams_batches(pool):
    events = list(pool.stream("batches", 3, rows=5))
    parts = [e.value for e in events if e.kind == "partial"]
    assert [type(p) for p in parts] == [pa.RecordBatch] * 3
    assert pa.Table.from_batches(parts).column("i").to_pylist() == list(range(15))
    assert events[-1].value == 3


def test_a_worker_crashing_mid_transfer_leaves_no_shared_memory(pool):
    dead = pool.workers()[0].id
    with pytest.raises(kernelpit.WorkerCrashed):
        pool.call("die_after_writing", 100_000)
    assert [n for n in shm_files(pool) if n.startswith((f"w{dead}-", f"w{dead}@"))] == []
    assert pool.options(deadline=60).call("echo", 1) == 1


def test_unsupported_objects_name_the_type_and_pickle_is_opt_in(pool):
    with pytest.raises(kernelpit.InvalidArguments,
                       match=r"type fractions.Fraction cannot be sent; supported types are .*pandas DataFrame"):
        pool.call("echo", fractions.Fraction(1, 3))
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS], pickle=True) as p:
        assert p.call("echo", fractions.Fraction(1, 3)) == fractions.Fraction(1, 3)


def test_the_shared_memory_directory_goes_with_the_pool():
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS]) as p:
        d = f"/dev/shm/kernelpit-{p.run_id}"
        assert os.path.isdir(d) and oct(os.stat(d).st_mode & 0o777) == "0o700"
    assert not os.path.exists(d)


def test_a_gigabyte_table_both_ways_without_copies_in_the_worker():
    rows = 1 << 27  # 128 Mi float64 = 1 GiB
    with kernelpit.Pool(adapters=["kp_arrow"], workers=1, path=[ADAPTERS]) as p:
        out = p.call("numeric_table", rows, 1)
        assert out.num_rows == rows and out.nbytes == rows * 8
        assert out.column(0)[rows - 1].as_py() == rows - 1
        del out
        before = p.call("rss")
        info = p.call("describe", pa.table({"x": np.ones(rows)}))
        assert info == {"rows": rows, "type": "Table", "rss": info["rss"]}
        assert info["rss"] - before < 100_000_000  # the worker mapped it, it did not copy 1 GiB
        wait_until(lambda: only_free_slabs(p))  # kept for reuse, at most the arena's cap
        assert sum(os.stat(f"/dev/shm/kernelpit-{p.run_id}/{n}").st_size
                   for n in shm_files(p)) <= 2 << 30  # the default shm_arena


def test_the_cap_removes_the_slabs_freed_longest_ago_first(tmp_path):
    from kernelpit.kernels import arena
    for name in ("w1-old.free", "w2-mid.free", "host-new.free"):
        (tmp_path / name).write_bytes(b"x" * 1000)  # freed in this order (their ctime)
        time.sleep(0.01)  # not a wait: file times move in clock ticks, keep the three apart
    assert arena.make_room(str(tmp_path), 1500, 3000)  # two must go: the oldest two
    assert sorted(os.listdir(tmp_path)) == ["host-new.free"]
    assert not arena.make_room(str(tmp_path), 3001, 3000)  # larger than the cap itself
    assert os.listdir(tmp_path) == ["host-new.free"]  # nothing removed for nothing
