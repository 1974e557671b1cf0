"""One API, two backends: every test here runs against an embedded ``kernelpit.Pool`` and
against a client of a real bridge (``kernelpit.connect``), and expects the same answers."""

import inspect
import math
import threading

import pytest

import kernelpit
import kernelpit.aio
from conftest import ADAPTERS, wait_until
from kernelpit.caller import AsyncHandle
from kernelpit.config import PoolConfig
from kernelpit.remote import AsyncClient, Client
from kernelpit.service.server import Bridge
from kernelpit.sync import Handle, Portal
from kernelpit.watch import Snapshot

SETTINGS = dict(adapters=["kp_tools"], workers=2, path=[ADAPTERS])
#: what only a bridge client has, and what only an embedded pool has (docs/architecture.md)
ONLY_CLIENT = {"address", "server_info", "check", "info",
               "add_token", "list_tokens", "revoke_token", "rotate_token"}
ONLY_POOL = {"start"}


@pytest.fixture(scope="module", params=["embedded", "remote"])
def pool(request):
    if request.param == "embedded":
        with kernelpit.Pool(**SETTINGS) as p:
            yield p
        return
    portal = Portal("test-api-bridge")
    bridge = Bridge([PoolConfig(name="default", **SETTINGS)], discovery=False, grace=2)
    portal.call(bridge.start)
    try:
        with kernelpit.connect(bridge.address, bridge.token) as client:
            yield client
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()


def public(cls):
    return {name for name in dir(cls) if not name.startswith("_")}


# -- the contract itself (no kernels) ---------------------------------------------------------

def test_blocking_handles_have_every_method_of_the_async_api_with_its_signature():
    for name in public(AsyncHandle):
        twin = inspect.signature(getattr(Handle, name)).parameters
        theirs = inspect.signature(getattr(AsyncHandle, name)).parameters
        if name == "options":  # the blocking API adds display=
            assert set(twin) - set(theirs) == {"display"}
        else:
            assert twin == theirs, name
        for cls in (kernelpit.Pool, Client):
            assert getattr(cls, name) is getattr(Handle, name), (cls, name)


def test_pool_and_client_differ_only_where_documented():
    assert public(kernelpit.Pool) - public(Client) <= ONLY_POOL
    assert public(Client) - public(kernelpit.Pool) <= ONLY_CLIENT
    assert public(kernelpit.aio.Pool) - public(AsyncClient) <= ONLY_POOL
    assert public(AsyncClient) - public(kernelpit.aio.Pool) <= ONLY_CLIENT


# -- calls ----------------------------------------------------------------------------------

def test_call_stream_and_map(pool):
    assert pool.call("add", 1, b=2) == 3
    kinds = [e.kind for e in pool.stream("steps", n=3)]
    assert kinds[0] in ("queued", "started") and kinds[-1] == "result"
    assert kinds.count("progress") == 3
    assert pool.map("add", range(50), range(50)) == [2 * i for i in range(50)]


def test_a_consumer_behind_a_flood_gets_every_line_and_the_final_progress(pool, tmp_path):
    n, every = 20_000, 100
    done = tmp_path / "flood-done"
    stream = pool.stream("flood", n=n, every=every, done_file=str(done))
    events = [next(stream)]  # then the consumer falls behind the whole flood
    wait_until(done.exists, timeout=60)
    events += list(stream)
    assert "".join(e.text for e in events if e.kind == "stdout") == "".join(
        f"line {i}\n" for i in range(every, n + 1, every))
    last = 0
    for e in events:
        if e.kind == "progress":
            assert e.done > last and e.total == n  # in order
            last = e.done
        elif e.kind == "stdout":  # the progress just before a line is never coalesced away
            assert last == int(e.text.split()[1]), (last, e.text)
    assert last == n  # the final progress
    assert events[-1].kind == "result" and events[-1].value == n
    assert sum(e.kind == "progress" for e in events) < n // 10  # the rest coalesced


def test_non_finite_floats_come_back_exactly(pool):
    assert pool.call("same", [math.inf, -math.inf, 1.5]) == [math.inf, -math.inf, 1.5]
    assert math.isnan(pool.call("same", {"x": math.nan})["x"])


def test_tool_errors_carry_tool_call_id_and_worker(pool):
    with pytest.raises(KeyError) as info:
        pool.call("raise_key", key="k")
    err = info.value
    assert err.args == ("k",) and "raise_key" in err.remote_traceback
    assert err.tool == "raise_key" and err.call_id > 0 and err.worker in {
        w.id for w in pool.workers()} | {err.worker}
    with pytest.raises(kernelpit.RemoteError) as info:
        pool.call("raise_custom", msg="boom")
    assert (info.value.remote_type, info.value.tool) == ("CustomError", "raise_custom")


def test_bad_input_raises_the_same_exceptions(pool):
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean 'add'"):
        pool.call("addd")
    with pytest.raises(kernelpit.InvalidArguments, match="'a'"):
        pool.call("add", a="x")
    with pytest.raises(kernelpit.InvalidArguments, match="cannot be sent"):
        pool.call("same", threading.Lock())
    with pytest.raises(kernelpit.InvalidArguments, match="cannot be sent"):
        pool.map("same", [threading.Lock()])
    with pytest.raises(kernelpit.PoolNotFound, match="no pool named 'nope'"):
        pool.tools("nope")
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean"):
        pool.describe("sme")
    with pytest.raises(kernelpit.SessionNotFound):
        pool.get_session("no-such-session")
    with pytest.raises(kernelpit.WorkerNotFound):
        pool.interrupt(10**6)
    with pytest.raises(TypeError, match="unknown call option"):
        pool.options(dedline=1)
    assert pool.call("add", 2, 3) == 5


def test_deadline_and_worker_options(pool):
    with pytest.raises(kernelpit.DeadlineExceeded):
        pool.options(deadline=0.3).call("spin", seconds=30)
    worker = pool.workers()[0].id
    started = [e for e in pool.options(worker=worker).stream("add", 1) if e.kind == "started"]
    assert started[0].worker == worker
    wait_until(lambda: all(w.state == "idle" for w in pool.workers()))


# -- sessions -------------------------------------------------------------------------------

def test_sessions_open_get_list_and_close_by_id(pool):
    with pool.session(metadata={"who": "test"}) as s:
        s.call("remember", "k", 41)
        assert s.call("remember", "k") == 41
        assert pool.get_session(s.id).worker == s.worker
        assert s.id in {x.id for x in pool.sessions()}
    other = pool.session(id="closed-by-id")
    assert pool.close_session(other.id).id == "closed-by-id"
    with pytest.raises(kernelpit.SessionNotFound):
        pool.get_session("closed-by-id")


# -- introspection and control ----------------------------------------------------------------

def test_tools_describe_and_workers(pool):
    assert "add" in {t.name for t in pool.tools()}
    assert pool.describe("add").parameters["required"] == ["a"]
    workers = pool.workers("default")
    assert len(workers) == 2 and pool.workers("other-pool") == []


def test_watch_sends_a_snapshot_then_changes_and_can_be_closed_from_another_thread(pool):
    stream = pool.watch(interval=0.2)
    first = next(stream)
    assert isinstance(first, Snapshot) and len(first.workers) == 2
    timer = threading.Timer(0.5, stream.close)
    timer.start()
    seen = [e.kind for e in stream]  # ends when closed, without an error
    timer.join()
    assert "snapshot" in seen


def test_untaint_of_a_tool_that_is_not_quarantined(pool):
    assert pool.untaint("add") is False
    with pytest.raises(kernelpit.ToolNotFound):
        pool.untaint("no_such_tool")


def test_subscribe_pushes_each_calls_events_in_order(pool):
    events = []
    stream = pool.subscribe(["call.*", "session.*"])
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    # through a bridge the subscription starts when the RPC arrives: call until it is live
    wait_until(lambda: pool.call("add", 1, 2) == 3 and any(e.kind == "call.finished"
                                                           for e in events))
    with pool.session() as s:
        s.call("add", 2, 2)
        sid = s.id
    wait_until(lambda: any(e.kind == "session.closed" for e in events))
    stream.close()
    reader.join(timeout=5)
    for call_id in {e.call_id for e in events if e.kind == "call.queued"}:
        mine = [e for e in events if e.call_id == call_id]
        assert [e.kind for e in mine] == ["call.queued", "call.started", "call.finished"]
        assert mine[-1].data["outcome"] == "ok" and mine[-1].tool == "add"
        assert mine[1].worker == mine[2].worker is not None and mine[0].pool == "default"
    assert [e.data["session"] for e in events if e.kind.startswith("session.")] == [sid, sid]
    with pytest.raises(ValueError, match="unknown telemetry event kind"):
        pool.subscribe(["calls.finished"])
