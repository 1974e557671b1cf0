"""The embedded pool, against real kernels: calls, streams, sessions, errors, lifecycle."""

import json
import math
import os
import signal
import stat
import subprocess
import sys
import textwrap
import threading
from array import array

import pytest
from jupyter_client import BlockingKernelClient

import kernelpit
from conftest import ADAPTERS, kernel_processes, wait_until


@pytest.fixture(scope="module")
def pool():
    with kernelpit.Pool(adapters=["kp_tools"], workers=2, path=[ADAPTERS]) as p:
        yield p


def idle_count(pool):
    return sum(w.state == "idle" for w in pool.workers())


# -- calls and events -------------------------------------------------------------------------

def test_call_returns_result_with_positional_and_keyword_arguments(pool):
    assert pool.call("add", a=1, b=2) == 3
    assert pool.call("add", 40, 2) == 42
    assert pool.call("add", 5) == 5


def test_values_round_trip_including_nested_bytes(pool):
    value = {"list": [1, 2.5, None, True], "text": "h\u00e9llo", "nested": {"raw": b"\x00\xff"}}
    out = pool.call("echo", value=value, blob=b"\x01\x02" * 1000)
    assert out == {"value": value, "blob": b"\x01\x02" * 1000}


def test_a_call_the_worker_cannot_read_fails_alone_and_the_worker_keeps_serving(pool):
    # "$kp" marks binary values on the wire; this one points at a buffer that was never sent
    pinned = pool.options(worker=pool.workers()[0].id, deadline=20)
    with pytest.raises(Exception, match="could not be read") as info:
        pinned.call("echo", value={"$kp": "bytes", "i": 3})
    assert "echo()" in str(info.value)
    assert pinned.call("echo", value=1) == {"value": 1, "blob": b""}


def test_stream_events_arrive_in_order_with_output_and_result_last(pool):
    events = list(pool.stream("steps", n=4))
    kinds = [e.kind for e in events]
    assert kinds[0] == "started"
    assert kinds[-1] == "result" and events[-1].value == 4
    progress = [e for e in events if e.kind == "progress"]
    assert [(p.done, p.total, p.message) for p in progress] == [
        (i, 4, f"step {i}") for i in range(1, 5)]
    stdout = "".join(e.text for e in events if e.kind == "stdout")
    assert stdout == "".join(f"line {i}\n" for i in range(4))
    assert "".join(e.text for e in events if e.kind == "stderr") == "warning!\n"
    # each line is printed before the progress report that follows it
    order = [e.kind for e in events if e.kind in ("stdout", "progress")]
    assert order == ["stdout", "progress"] * 4
    assert len({e.call_id for e in events}) == 1


def test_generator_tool_streams_partials_then_its_return_value(pool):
    events = list(pool.stream("gen", n=5))
    assert [e.value for e in events if e.kind == "partial"] == [0, 1, 4, 9, 16]
    assert events[-1].kind == "result" and events[-1].value == "done"
    assert pool.call("gen", 3) == "done"


def test_display_sends_the_mime_bundle(pool):
    events = list(pool.stream("show", html="<i>x</i>"))
    displays = [e for e in events if e.kind == "display"]
    assert len(displays) == 1
    assert displays[0].data["text/html"] == "<i>x</i>"
    assert "text/plain" in displays[0].data
    assert events[-1].value == "shown"


def test_tools_are_described_with_doc_and_parameter_schema(pool):
    tools = {t.name: t for t in pool.tools()}
    assert {"add", "echo", "steps", "gen"} <= set(tools)
    add = tools["add"]
    assert add.doc == "Add two integers."
    assert add.signature == "add(a: int, b: int = 0) -> int"
    assert add.parameters["properties"]["a"] == {"type": "integer"}
    assert add.parameters["properties"]["b"] == {"type": "integer", "default": 0}
    assert add.parameters["required"] == ["a"]
    assert tools["gen"].streaming and not add.streaming
    assert "echo_value" not in tools  # registered under its given name


def test_workers_report_pid_state_rss_and_connection_file(pool):
    workers = pool.workers()
    assert len(workers) == 2
    for w in workers:
        assert w.state in ("idle", "busy")
        assert w.pid and w.rss > 10_000_000
        assert os.path.exists(w.connection_file)
        assert w.attach_command.endswith(w.connection_file)


def test_cells_run_in_a_worker_see_the_state_tools_see(pool):
    worker = pool.workers()[0]
    for _ in range(2):
        pool.options(worker=worker.id).call("bump")
    client = BlockingKernelClient(connection_file=worker.connection_file)
    client.load_connection_file()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=20)
        reply = client.execute_interactive(
            "import kp_tools", user_expressions={"n": "kp_tools.COUNTER"}, timeout=20)
        assert reply["content"]["status"] == "ok"
        assert reply["content"]["user_expressions"]["n"]["data"]["text/plain"] == "2"
    finally:
        client.stop_channels()
    assert pool.options(worker=worker.id).call("bump") == 3  # and the tool sees the cell's world


def test_worker_kernels_listen_on_private_unix_sockets_not_tcp_ports(pool):
    # no port can be taken by another process between choosing it and binding it
    for worker in pool.workers():
        with open(worker.connection_file) as f:
            info = json.load(f)
        assert info["transport"] == "ipc" and os.path.isabs(info["ip"])
        assert os.stat(os.path.dirname(info["ip"])).st_mode & 0o077 == 0  # the run's 0700 dir
        for channel in ("shell", "iopub", "stdin", "control", "hb"):
            assert stat.S_ISSOCK(os.stat(f"{info['ip']}-{info[channel + '_port']}").st_mode)


# -- errors ----------------------------------------------------------------------------------

def test_builtin_exception_is_reraised_as_itself_with_remote_traceback(pool):
    with pytest.raises(KeyError) as info:
        pool.call("raise_key", key="nope")
    assert info.value.args == ("nope",)
    assert "raise_key" in info.value.remote_traceback
    assert isinstance(info.value.__cause__, kernelpit.RemoteTraceback)


def test_other_exceptions_arrive_as_remote_error_naming_the_type(pool):
    with pytest.raises(kernelpit.RemoteError) as info:
        pool.call("raise_custom", msg="kaput")
    err = info.value
    assert (err.remote_type, err.remote_module, err.message) == ("CustomError", "kp_tools", "kaput")
    assert "raise CustomError(msg)" in err.remote_traceback
    assert err.tool == "raise_custom" and err.worker in {w.id for w in pool.workers()}


def test_unknown_tool_lists_close_matches(pool):
    with pytest.raises(kernelpit.ToolNotFound, match=r"no tool named 'ad'; did you mean 'add'"):
        pool.call("ad", 1)


@pytest.mark.parametrize("kwargs, message", [
    ({"a": "x"}, r"parameter 'a' of add\(\) must be int, got str 'x'"),
    ({"a": 1, "c": 2}, r"unexpected parameter 'c'; it takes: a, b"),
    ({}, r"missing the required parameter 'a'"),
    ({"a": True}, r"parameter 'a' of add\(\) must be int, got bool"),
])
def test_invalid_arguments_are_rejected_before_the_tool_runs(pool, kwargs, message):
    calls_before = sum(w.calls for w in pool.workers())
    with pytest.raises(kernelpit.InvalidArguments, match=message):
        pool.call("add", **kwargs)
    assert sum(w.calls for w in pool.workers()) == calls_before


def test_too_many_positional_arguments(pool):
    with pytest.raises(kernelpit.InvalidArguments, match=r"takes 2 positional argument"):
        pool.call("add", 1, 2, 3)


def test_a_result_that_cannot_be_sent_fails_with_a_clear_type_error(pool):
    with pytest.raises(TypeError, match=r"cannot send: type builtins.set"):
        pool.call("not_serializable")
    assert pool.call("add", 1, 1) == 2


def test_tables_of_long_float_columns_come_back_exact_with_partials_in_order(pool):
    # each column is 400 KB: it goes ahead of its event and becomes a list while the worker
    # packs the next one (kernels/protocol.py)
    rows = 50_000
    expected = {f"c{j}": [i * 0.5 + j for i in range(rows)] for j in range(3)}
    with pool.session() as s:
        events = [e for e in s.stream("float_columns", rows, partials=2) if e.kind != "started"]
        assert [e.kind for e in events] == ["partial", "partial", "result"]
        assert [e.value for e in events[:2]] == [{"k": 0, **expected}, {"k": 1, **expected}]
        assert events[-1].value == expected
        assert all(type(x) is float for x in events[-1].value["c2"])
        # columns sent ahead of an event the worker could not finish are not left behind
        with pytest.raises(TypeError, match=r"cannot send: type builtins.set"):
            s.call("float_columns", rows, then_unsendable=True)
        smaller = s.call("float_columns", rows // 2, cols=2)
        assert smaller == {f"c{j}": expected[f"c{j}"][:rows // 2] for j in range(2)}


def test_error_event_ends_a_stream_and_carries_the_exception(pool):
    events = list(pool.stream("raise_custom"))
    assert events[-1].kind == "error"
    assert isinstance(events[-1].error, kernelpit.RemoteError)
    with pytest.raises(kernelpit.RemoteError):
        events[-1].raise_()


def test_unknown_call_option_is_a_type_error(pool):
    with pytest.raises(TypeError, match="unknown call option"):
        pool.options(timeout=3)


# -- sessions ----------------------------------------------------------------------------------

def test_session_keeps_state_on_one_worker_across_calls(pool):
    with pool.session(metadata={"owner": "test"}) as s:
        pid = s.call("pid")
        s.call("remember", "model", "weights-v1")
        for _ in range(20):
            assert s.call("pid") == pid
            assert s.call("remember", "model") == "weights-v1"
        info = {x.id: x for x in pool.sessions()}[s.id]
        assert info.metadata == {"owner": "test"} and info.calls == 42 and info.worker == s.worker
    assert s.id not in {x.id for x in pool.sessions()}
    with pytest.raises(kernelpit.SessionNotFound, match="closed or expired"):
        s.call("pid")


def test_session_state_is_private_to_each_session(pool):
    with pool.session() as a, pool.session() as b:
        a.call("remember", "k", "A")
        assert b.call("remember", "k") is None
        assert a.call("remember", "k") == "A"


def test_session_expires_after_its_idle_ttl(pool):
    s = pool.session(ttl=0.3)
    s.call("pid")
    wait_until(lambda: s.id not in {x.id for x in pool.sessions()}, timeout=10)
    with pytest.raises(kernelpit.SessionNotFound):
        s.call("pid")


# -- the asyncio twin ------------------------------------------------------------------------------

def test_asyncio_api_has_the_same_names():
    import asyncio

    async def main():
        async with kernelpit.aio.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS]) as p:
            assert await p.call("add", a=2, b=3) == 5
            kinds = [e.kind async for e in p.stream("gen", n=2)]
            async with p.session() as s:
                await s.call("remember", "x", 1)
                assert await s.call("remember", "x") == 1
            assert [t.name for t in await p.tools()]
            assert len(await p.workers()) == 1
            assert await p.map("add", [1, 2], [10, 20]) == [11, 22]
            return kinds, p.run_id

    kinds, run_id = asyncio.run(main())
    assert kinds == ["started", "partial", "partial", "result"]
    assert kernel_processes(run_id) == []


# -- map ------------------------------------------------------------------------------------------

def test_map_runs_every_item_in_order_across_workers(pool):
    n = 2000
    assert pool.map("add", range(n), range(n)) == [2 * i for i in range(n)]
    assert pool.map("add", range(10), range(10), chunksize=3) == [2 * i for i in range(10)]
    assert pool.map("add", []) == []


def test_map_gives_back_every_value_with_its_type(pool):
    # plain ints and floats travel as typed arrays; anything else stays JSON
    floats = [0.1, -0.0, float("inf"), 1e308, 5e-324]
    out = pool.map("same", floats)
    assert out == floats and all(type(v) is float for v in out) and math.copysign(1, out[1]) == -1
    assert math.isnan(pool.map("same", [float("nan")])[0])
    for values in ([True, False], [1, 2.5, None], [2**70, 1], [-2**63, 2**63 - 1], ["a", "b"],
                   [[1], (2,)], [7] * 3):
        out = pool.map("same", values, chunksize=2)
        assert out == [list(v) if isinstance(v, tuple) else v for v in values]
        assert [type(v) for v in out] == [list if t is tuple else t for t in map(type, values)]
    assert pool.map("add", range(5), [10, 20, 30]) == [10, 21, 32]  # cut to the shortest, as zip
    with pytest.raises(TypeError, match="at least one iterable"):
        pool.map("add")
    assert pool.call("same", array("h", [1, -2])) == array("h", [1, -2])


def test_map_raises_the_first_failing_item_with_its_index(pool):
    with pytest.raises(KeyError) as info:
        pool.map("raise_key", ["a", "b", "c"], chunksize=1)
    assert info.value.args == ("a",) and info.value.map_index == 0
    with pytest.raises(kernelpit.InvalidArguments, match=r"item 2: parameter 'a' of add\(\) must be int"):
        pool.map("add", [1, 2, "x"])
    with pytest.raises(kernelpit.InvalidArguments, match="generator, use stream"):
        pool.map("gen", [1, 2])


def test_arguments_that_cannot_be_sent_are_invalid_and_leave_the_pool_serving(pool):
    with pytest.raises(kernelpit.InvalidArguments, match=r"cannot be sent: type builtins.set"):
        pool.call("echo", value={1, 2})
    deep = []
    for _ in range(5000):
        deep = [deep]
    with pytest.raises(kernelpit.InvalidArguments, match="RecursionError"):
        pool.call("echo", value=deep)
    assert all(w.state == "idle" for w in pool.workers())
    assert pool.call("add", 1, 2) == 3


def test_map_checks_every_item_even_on_the_fast_path(pool):
    items = list(range(5000)) + [True] + list(range(10))  # a bool is not an int
    with pytest.raises(kernelpit.InvalidArguments, match=r"item 5000: parameter 'a' of add\(\) must be int, got bool"):
        pool.map("add", items)
    with pytest.raises(kernelpit.InvalidArguments, match=r"item 0: add\(\) takes 2 positional"):
        pool.map("add", [1, 2], [1, 2], [3, 4])  # three columns for two parameters
    assert pool.map("add", [1, 2], [10, 20]) == [11, 22]
