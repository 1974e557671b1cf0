"""The bridge over loopback: a real grpc.aio server, real kernels, the real clients."""

import asyncio
import json
import math
import threading
from array import array
import time

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

import kernelpit
import kernelpit.aio
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.watch import SessionChanged, Snapshot, WorkerChanged
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2

MAX_MESSAGE = 1 << 20


async def _start(bridge):
    return await bridge.start()


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    portal = Portal("test-bridge")
    b = Bridge([PoolConfig(name="default", adapters=["kp_tools"], workers=2, path=[ADAPTERS]),
                PoolConfig(name="demo", adapters=["kernelpit.kernels.demo"], workers=1)],
               max_message_size=MAX_MESSAGE, grace=5,
               store=str(tmp_path_factory.mktemp("service-jobs") / "jobs.sqlite"))
    portal.call(_start, b)
    yield b
    portal.call(b.stop, 0)
    portal.stop()


@pytest.fixture(scope="module")
def client(bridge):
    with kernelpit.connect() as c:  # found through the discovery file
        yield c


def rpc_error(fn, *args, **kwargs) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        fn(*args, **kwargs)
    return info.value


def still_serving(client):
    assert client.call("add", 2, b=3) == 5


def idle(client, worker_id):
    return any(w.id == worker_id and w.state == "idle" for w in client.workers())


# -- calls ---------------------------------------------------------------------------------

def test_call_with_positional_keyword_and_binary_values(client):
    assert client.call("add", 40, b=2) == 42
    value = {"list": [1, 2.5, None, True], "text": "h\u00e9llo", "nested": {"raw": b"\x00\xff"}}
    assert client.call("echo", value=value, blob=b"\x01" * 1000) == {"value": value,
                                                                       "blob": b"\x01" * 1000}
    assert client.call("c_sleep_uninterruptible", seconds=0) is None


def test_stream_has_every_kind_of_event_in_order(client):
    events = list(client.stream("steps", n=2))
    kinds = [e.kind for e in events]
    assert kinds[0] in ("queued", "started") and kinds[-1] == "result"
    assert [e.text for e in events if e.kind == "stdout"] == ["line 0\n", "line 1\n"]
    assert [(e.done, e.total, e.message) for e in events if e.kind == "progress"] == \
        [(1, 2, "step 1"), (2, 2, "step 2")]
    assert any(e.kind == "stderr" and "warning!" in e.text for e in events)
    assert len({e.call_id for e in events}) == 1
    assert isinstance(events[-1], kernelpit.Result) and events[-1].value == 2


def test_stream_display_and_partials(client):
    shown = list(client.stream("show", html="<i>x</i>"))
    display = next(e for e in shown if e.kind == "display")
    assert display.data["text/html"] == "<i>x</i>"
    partials = [e.value for e in client.stream("gen", n=4) if e.kind == "partial"]
    assert partials == [0, 1, 4, 9]


def test_tool_exceptions_arrive_as_the_same_classes(client):
    with pytest.raises(KeyError) as info:
        client.call("raise_key", key="k")
    assert info.value.args == ("k",)
    assert "raise_key" in info.value.remote_traceback
    with pytest.raises(kernelpit.RemoteError) as info:
        client.call("raise_custom", msg="boom")
    err = info.value
    assert (err.remote_type, err.remote_module, err.message) == ("CustomError", "kp_tools", "boom")
    last = list(client.stream("raise_key"))[-1]
    assert isinstance(last, kernelpit.Error) and isinstance(last.error, KeyError)


def test_call_options_travel_deadline_pool_and_worker(client):
    with pytest.raises(kernelpit.DeadlineExceeded):
        client.options(deadline=0.3).call("spin", seconds=30)
    assert client.options(pool="demo").call("add", a=1, b=2) == 3
    worker = client.workers()[0].id
    started = [e for e in client.options(worker=worker).stream("add", 1) if e.kind == "started"]
    assert started[0].worker == worker
    wait_until(lambda: all(w.state == "idle" for w in client.workers()))


def test_map_runs_across_the_pool(client):
    assert client.map("add", range(20), range(20)) == [2 * i for i in range(20)]
    assert client.map("add", range(500), chunksize=7) == list(range(500))


def test_long_number_lists_travel_packed_only_to_clients_that_ask(client, stub, auth):
    floats, ints = [i / 7 for i in range(1000)], list(range(-500, 500))
    value = {"f": floats, "i": ints, "mixed": [1, 2.5] * 50, "big": [2**70] * 80}
    assert client.call("same", value) == value  # packed both ways by the Python client
    assert client.map("add", range(300), range(300)) == [2 * i for i in range(300)]
    request = pb.CallRequest(tool="same", args=values_pb2.Value(json=json.dumps([value])))
    plain = stub.Call(request, metadata=auth)  # a client that did not ask: plain JSON
    assert not plain.result.buffers and json.loads(plain.result.json) == value
    packed = stub.Call(request, metadata=(*auth, ("kernelpit-accept", "packed-lists")))
    doc = json.loads(packed.result.json)
    assert doc["f"] == {"$kp": "list", "t": "d", "i": 0} and doc["i"]["t"] == "q"
    assert doc["mixed"] == value["mixed"] and doc["big"] == value["big"]  # not packable
    assert array("d", packed.result.buffers[0]).tolist() == floats


def test_a_bad_list_marker_is_invalid_argument(stub, auth):
    for marker, buffers in [({"$kp": "list", "t": "x", "i": 0}, [b"\0" * 8]),
                            ({"$kp": "list", "t": "d", "i": 0}, [b"\0" * 7]),
                            ({"$kp": "list", "t": "d", "i": 3}, [])]:
        request = pb.CallRequest(tool="same", args=values_pb2.Value(json=json.dumps([marker]),
                                                                     buffers=buffers))
        err = rpc_error(stub.Call, request, metadata=auth)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "list marker" in err.details()


def strict_json(text):
    """Parse as JavaScript's JSON.parse would: bare NaN / Infinity are not JSON."""
    def refuse(word):
        raise AssertionError(f"{word} in Value.json: not RFC 8259 JSON")
    return json.loads(text, parse_constant=refuse)


def test_non_finite_floats_travel_as_markers_in_strict_json(client, stub, auth):
    # The defect: add(1e308, 1e308) came back as Value.json = "Infinity".
    demo = pb.CallOptions(pool="demo")
    reply = stub.Call(pb.CallRequest(tool="add", args=values_pb2.Value(json="[1e308, 1e308]"),
                                     options=demo), metadata=auth)
    assert strict_json(reply.result.json) == {"$kp": "float", "v": "Infinity"}
    assert client.options(pool="demo").call("add", 1e308, 1e308) == math.inf
    inf = {"$kp": "float", "v": "Infinity"}
    request = pb.CallRequest(tool="same", args=values_pb2.Value(json=json.dumps(
        [{"v": [inf, {"$kp": "float", "v": "-Infinity"}, {"$kp": "float", "v": "NaN"}, 1.5]}])))
    for reply in (stub.Call(request, metadata=auth).result,
                  [e.result for b in stub.CallStream(request, metadata=auth)
                   for e in b.events if e.WhichOneof("kind") == "result"][0]):
        assert strict_json(reply.json) == {"v": [inf, {"$kp": "float", "v": "-Infinity"},
                                                 {"$kp": "float", "v": "NaN"}, 1.5]}
    # Python callers get the floats back exactly, whichever way they travel
    value = client.call("same", [math.inf, -math.inf, 2.5])
    assert value == [math.inf, -math.inf, 2.5]
    assert math.isnan(client.call("same", math.nan))
    streamed = [e.value for e in client.stream("same", {"x": math.nan}) if e.kind == "result"]
    assert math.isnan(streamed[0]["x"])
    # a bare NaN in arguments is refused, saying what to send instead
    err = rpc_error(stub.Call, pb.CallRequest(tool="same", args=values_pb2.Value(json="[NaN]")),
                    metadata=auth)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert '{"$kp": "float", "v": "NaN"}' in err.details()
    still_serving(client)


def test_remote_errors_carry_every_field_of_the_embedded_exception(client, stub, auth):
    # The defect: a builtin exception's RemoteException had tool "", call_id 0 and no worker.
    err = rpc_error(stub.Call, pb.CallRequest(tool="raise_key", kwargs=values_pb2.Value(
        json='{"key": "k"}')), metadata=auth)
    remote = values_pb2.RemoteException.FromString(dict(err.trailing_metadata())["kernelpit-error-bin"])
    assert remote.tool == "raise_key" and remote.call_id > 0 and remote.HasField("worker")
    events = [e for b in stub.CallStream(pb.CallRequest(tool="raise_key"), metadata=auth)
              for e in b.events]
    assert events[-1].error.tool == "raise_key" and events[-1].error.call_id == events[-1].call_id
    assert events[-1].error.HasField("worker")
    with pytest.raises(KeyError) as info:
        client.call("raise_key", key="k")
    assert info.value.tool == "raise_key" and info.value.call_id and info.value.worker is not None
    last = list(client.stream("raise_key"))[-1].error
    assert (last.tool, type(last.call_id), type(last.worker)) == ("raise_key", int, int)


# -- bad input never hurts the service ------------------------------------------------------

def test_unknown_tool_is_not_found(client, stub, auth):
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean 'add'"):
        client.call("addd")
    err = rpc_error(stub.Call, pb.CallRequest(tool="addd"), metadata=auth)
    assert err.code() == grpc.StatusCode.NOT_FOUND and "addd" in err.details()
    with pytest.raises(kernelpit.ToolNotFound):
        list(client.stream("nope"))
    still_serving(client)


def test_bad_arguments_name_the_parameter(client, stub, auth):
    with pytest.raises(kernelpit.InvalidArguments, match="'a'"):
        client.call("add", a="x")
    req = pb.CallRequest(tool="add", kwargs=values_pb2.Value(json='{"a": 1, "zzz": 2}'))
    err = rpc_error(stub.Call, req, metadata=auth)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "zzz" in err.details()
    still_serving(client)


@pytest.mark.parametrize("field,value,says", [
    ("args", values_pb2.Value(json="[1,"), "not valid JSON"),
    ("kwargs", values_pb2.Value(json="[1, 2]"), "JSON object"),
    ("args", values_pb2.Value(json='[{"$kp": "bytes", "i": 5}]'), "no matching buffer"),
    ("args", values_pb2.Value(raw=b"x", encoding="arrow"), "not supported"),
])
def test_malformed_values_are_invalid_argument(client, stub, auth, field, value, says):
    req = pb.CallRequest(tool="add", **{field: value})
    for call in (stub.Call, lambda r, metadata: list(stub.CallStream(r, metadata=metadata))):
        err = rpc_error(call, req, metadata=auth)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert says in err.details() and field in err.details()
    still_serving(client)


def test_oversize_message_is_refused_and_the_bridge_keeps_serving(client, stub, auth):
    big = b"\x00" * (MAX_MESSAGE + 1000)
    with pytest.raises(kernelpit.InvalidArguments, match="max-message-size"):
        client.call("echo", value="x" * (MAX_MESSAGE + 1000))  # text cannot go in chunks
    assert client.call("echo", blob=big)["blob"] == big  # bytes can: uploaded and read as blobs
    req = pb.CallRequest(tool="echo", kwargs=values_pb2.Value(json="{}", buffers=[big]))
    assert rpc_error(stub.Call, req, metadata=auth).code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    still_serving(client)
    assert client.call("echo", blob=b"\x00" * (MAX_MESSAGE // 2))["blob"] == b"\x00" * (MAX_MESSAGE // 2)


def test_a_job_takes_and_returns_values_beyond_one_message_as_blobs(client):
    big = bytes(range(256)) * ((MAX_MESSAGE + 5000) // 256)
    job = client.submit("echo", blob=big)  # the argument uploaded as a blob
    assert job.result(timeout=60)["blob"] == big  # the journaled result read as one
    assert [e for e in job.events()][-1].value["blob"] == big  # and in a replay


def test_unknown_session_is_not_found(client, stub, auth):
    with pytest.raises(kernelpit.SessionNotFound, match="no session 'nope'"):
        client.options(session="nope").call("add", 1)
    with pytest.raises(kernelpit.SessionNotFound):
        client.get_session("nope")
    err = rpc_error(stub.GetSession, pb.GetSessionRequest(id="nope"), metadata=auth)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    err = rpc_error(stub.CloseSession, pb.CloseSessionRequest(id="nope"), metadata=auth)
    assert err.code() == grpc.StatusCode.NOT_FOUND
    still_serving(client)


# -- tools, sessions, workers, watch ----------------------------------------------------------

def test_list_and_describe_tools_with_schema(client):
    tools = {(t.pool, t.name): t for t in client.tools()}
    add = tools[("default", "add")]
    assert add.parameters["properties"]["a"] == {"type": "integer"}
    assert add.parameters["required"] == ["a"]
    assert ("demo", "train") in tools
    assert {t.pool for t in client.tools("demo")} == {"demo"}
    assert client.describe("train").parameters["properties"]["epochs"]["type"] == "integer"
    assert client.describe("gen").streaming
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean"):
        client.describe("trian")
    with pytest.raises(kernelpit.PoolNotFound, match="no pool named"):
        client.tools("nosuchpool")


def test_sessions_create_get_list_call_close(client):
    with client.session(ttl=60, metadata={"notebook": "a.ipynb"}) as s:
        assert s.call("remember", key="k", value=[1, 2]) == [1, 2]
        assert s.call("remember", key="k") == [1, 2]
        info = client.get_session(s.id)
        assert (info.ttl, info.metadata, info.calls, info.worker) == \
            (60, {"notebook": "a.ipynb"}, 2, s.worker)
        assert s.id in [x.id for x in client.sessions()]
        assert s.options(deadline=10).call("remember", key="k") == [1, 2]
    assert s.id not in [x.id for x in client.sessions()]
    with pytest.raises(kernelpit.SessionNotFound):
        s.call("remember", key="k")
    named = client.session(id="mine", pool="demo")
    assert named.id == "mine" and named.info.pool == "demo"
    named.close()


def test_workers_report_health(client):
    workers = client.workers()
    assert {w.pool for w in workers} == {"default", "demo"}
    for w in workers:
        assert w.pid and w.rss > 0 and w.uptime > 0 and w.connection_file
        assert w.state in ("idle", "busy")


def test_interrupt_stops_the_running_tool(client):
    worker = client.workers()[0].id
    events = client.options(worker=worker).stream("spin", seconds=30)
    assert next(e for e in events if e.kind == "started")
    client.interrupt(worker)
    last = list(events)[-1]
    assert isinstance(last, kernelpit.Error)
    assert isinstance(last.error, (kernelpit.Cancelled, KeyboardInterrupt, kernelpit.RemoteError))
    wait_until(lambda: idle(client, worker), timeout=10)
    with pytest.raises(kernelpit.WorkerNotFound):
        client.interrupt(999)


def test_restart_replaces_the_worker(client):
    demo = next(w for w in client.workers() if w.pool == "demo")
    client.restart(demo.id)
    fresh = wait_until(lambda: [w for w in client.workers() if w.pool == "demo"
                                and w.id != demo.id and w.state == "idle"], timeout=30)
    assert fresh[0].pid != demo.pid
    assert client.options(pool="demo").call("add", a=1, b=1) == 2
    with pytest.raises(kernelpit.WorkerNotFound):
        client.restart(demo.id)


def test_watch_sends_a_snapshot_then_changes(client):
    seen = []
    events = client.watch(interval=0.2)
    first = next(events)
    assert isinstance(first, Snapshot) and len(first.workers) == 3
    session = client.session(metadata={"by": "watch"})
    for e in events:
        seen.append(e)
        if isinstance(e, SessionChanged) and e.session.id == session.id:
            assert e.change == "opened" and e.session.metadata == {"by": "watch"}
            break
    session.close()
    for e in events:
        if isinstance(e, SessionChanged) and e.session.id == session.id:
            assert e.change == "closed"
            break
    worker = client.workers()[0].id
    busy = threading.Thread(target=client.options(worker=worker).call, args=("sleep", 0.5))
    busy.start()
    for e in events:
        if isinstance(e, WorkerChanged) and e.worker.id == worker and e.worker.state == "busy":
            assert e.previous_state == "idle"
            break
    busy.join()
    snapshots = 0
    for e in events:
        snapshots += isinstance(e, Snapshot)
        if snapshots == 2:
            break
    events.close()  # leaving the watch ends the stream on the bridge
    still_serving(client)


# -- cancellation ---------------------------------------------------------------------------

def test_leaving_a_stream_early_interrupts_the_tool(client):
    worker = client.workers()[0].id
    caller = client.options(worker=worker)
    for _ in range(3):  # again and again: the worker is free right after each
        t0 = time.monotonic()
        for e in caller.stream("spin", seconds=60):
            if e.kind == "started":
                break
        wait_until(lambda: idle(client, worker), timeout=10)
        assert time.monotonic() - t0 < 10
        assert caller.call("add", 1, 2) == 3


def test_disconnecting_client_cancels_its_calls(bridge, client, auth):
    worker = client.workers()[1].id
    channel = grpc.insecure_channel(bridge.address)
    stub = pb_grpc.BridgeStub(channel)
    req = pb.CallRequest(tool="spin", kwargs=values_pb2.Value(json='{"seconds": 60}'),
                         options=pb.CallOptions(worker=worker))
    stream = stub.CallStream(req, metadata=auth)
    assert next(stream).events[0].WhichOneof("kind") in ("started", "queued")
    unary = stub.Call.future(req, metadata=auth)
    wait_until(lambda: any(w.id == worker and w.state == "busy" for w in client.workers()))
    channel.close()  # the client goes away mid-stream and mid-call
    wait_until(lambda: idle(client, worker), timeout=10)
    assert client.options(worker=worker).call("add", 1, 1) == 2
    assert unary.cancelled() or unary.done()


def test_cancelled_grpc_deadline_interrupts_the_tool(bridge, client, stub, auth):
    worker = client.workers()[0].id
    req = pb.CallRequest(tool="spin", kwargs=values_pb2.Value(json='{"seconds": 60}'),
                         options=pb.CallOptions(worker=worker))
    err = rpc_error(stub.Call, req, metadata=auth, timeout=0.5)
    assert err.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    wait_until(lambda: idle(client, worker), timeout=10)


# -- auth, health, reflection, server info -------------------------------------------------------

def test_missing_or_wrong_token_is_unauthenticated(bridge, stub):
    for metadata in ((), (("authorization", "Bearer wrong"),), (("authorization", "wrong"),)):
        err = rpc_error(stub.ListTools, pb.ListToolsRequest(), metadata=metadata)
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
        assert "token" in err.details()
        err = rpc_error(lambda: list(stub.CallStream(pb.CallRequest(tool="add"), metadata=metadata)))
        assert err.code() == grpc.StatusCode.UNAUTHENTICATED
    with pytest.raises(kernelpit.Unauthenticated, match="refused the token"):
        kernelpit.connect(bridge.address, token="wrong")


def test_token_is_accepted(bridge, stub, auth):
    assert stub.ListTools(pb.ListToolsRequest(), metadata=auth).tools
    with kernelpit.connect(bridge.address, token=bridge.token) as c:
        assert c.call("add", 1) == 1


def test_health_answers_serving_without_a_token(bridge):
    with grpc.insecure_channel(bridge.address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("", "kernelpit.v1.Bridge"):
            reply = health.Check(health_pb2.HealthCheckRequest(service=service))
            assert reply.status == health_pb2.HealthCheckResponse.SERVING


def test_reflection_lists_the_services(bridge):
    with grpc.insecure_channel(bridge.address) as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        reply = next(stub.ServerReflectionInfo(iter([
            reflection_pb2.ServerReflectionRequest(list_services="")])))
        names = {s.name for s in reply.list_services_response.service}
        assert {"kernelpit.v1.Bridge", "kernelpit.v1.Jobs", "grpc.health.v1.Health"} <= names


def test_server_info(bridge, client):
    info = client.server_info()
    assert info.address == bridge.address and info.version == kernelpit.__version__
    assert list(info.pools) == ["default", "demo"] and info.run_id == bridge.manager.run_id
    assert client.run_id == bridge.manager.run_id


# -- the asyncio client ----------------------------------------------------------------------

def test_async_client_has_the_same_api(bridge):
    async def main():
        async with kernelpit.aio.connect() as pool:
            assert await pool.call("add", 1, b=2) == 3
            kinds = [e.kind async for e in pool.stream("steps", n=1)]
            assert kinds[-1] == "result" and "progress" in kinds
            assert await pool.map("add", [1, 2], [3, 4]) == [4, 6]
            async with pool.session() as s:
                await s.call("remember", key="a", value=1)
                assert await s.call("remember", key="a") == 1
            with pytest.raises(KeyError):
                await pool.call("raise_key")
            assert len(await pool.workers()) == 3
            calls = [pool.call("add", i) for i in range(50)]
            assert await asyncio.gather(*calls) == list(range(50))
        pool2 = await kernelpit.aio.connect(bridge.address, bridge.token)
        assert (await pool2.tools("demo"))[0].pool == "demo"
        await pool2.close()
    asyncio.run(main())


def test_concurrent_sync_callers_share_one_client(client):
    results = {}

    def caller(i):
        results[i] = [client.call("add", i, j) for j in range(20)]

    threads = [threading.Thread(target=caller, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == {i: [i + j for j in range(20)] for i in range(8)}


def test_ctrl_c_in_a_call_on_the_shared_stream_interrupts_its_tool(client):
    """While one thread holds the blocking fast path, another thread's call goes over the
    multiplexed stream; Ctrl-C there must cancel that call on the bridge (tool interrupted)."""
    import signal

    first, second = (w.id for w in client.workers("default"))
    holder = threading.Thread(target=client.options(worker=first).call, args=("sleep", 2.0))
    holder.start()
    wait_until(lambda: any(w.id == first and w.state == "busy" for w in client.workers()))
    main = threading.get_ident()

    def interrupt_when_busy():
        wait_until(lambda: any(w.id == second and w.state == "busy" for w in client.workers()))
        signal.pthread_kill(main, signal.SIGINT)

    threading.Thread(target=interrupt_when_busy, daemon=True).start()
    with pytest.raises(KeyboardInterrupt):
        client.options(worker=second).call("spin", 60)
    # the same worker (one slot) answers: the spinning tool was stopped
    assert client.options(worker=second, deadline=10).call("add", 3, 3) == 6
    holder.join()


def test_map_failures_name_the_item(client, stub, auth):
    with pytest.raises(KeyError) as info:
        client.map("raise_key", ["a", "b"])
    assert info.value.map_index == 0
    with pytest.raises(kernelpit.InvalidArguments, match="item 1"):
        client.map("add", [1, "x"])
    assert client.map("echo", [b"\x00", {"k": b"\x01"}]) == [
        {"value": b"\x00", "blob": b""}, {"value": {"k": b"\x01"}, "blob": b""}]
    assert client.map("add", [], []) == []
    req = pb.MapRequest(tool="add", items=values_pb2.Value(json='[1, 2]'))
    err = rpc_error(stub.Map, req, metadata=auth)
    assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and "array of arrays" in err.details()


def test_map_takes_items_or_columns_and_says_what_is_wrong_with_either(client, stub, auth):
    def rpc_map(**fields):
        req = pb.MapRequest(tool="add", **{k: values_pb2.Value(json=v) for k, v in fields.items()})
        return stub.Map(req, metadata=auth)

    assert rpc_map(items="[[1, 2], [3, 4]]").results.json == "[3,7]"
    assert rpc_map(columns="[[1, 3], [2, 4]]").results.json == "[3,7]"
    for fields, message in [
            ({"items": "[[1], [2, 3]]"}, "item 1 has 2, item 0 has 1"),
            ({"items": "[[], []]"}, "at least one argument"),
            ({"columns": "[[1, 2], [3]]"}, "same length"),
            ({"columns": "[1, 2]"}, "array of arrays"),
            ({"items": "[[1]]", "columns": "[[1]]"}, "not both")]:
        err = rpc_error(rpc_map, **fields)
        assert err.code() == grpc.StatusCode.INVALID_ARGUMENT and message in err.details(), fields
    assert client.call("same", array("d", [0.5])) == [0.5]  # an array.array is a JSON array here
    assert client.map("add", [1, 2], [10, 20]) == [11, 22]


def test_cancelling_an_async_call_interrupts_the_tool(client):
    worker = client.workers()[0].id

    async def main():
        async with kernelpit.aio.connect() as pool:
            task = asyncio.ensure_future(pool.options(worker=worker).call("spin", seconds=60))
            while not any(w.id == worker and w.state == "busy" for w in await pool.workers()):
                await asyncio.sleep(0.02)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            while not any(w.id == worker and w.state == "idle" for w in await pool.workers()):
                await asyncio.sleep(0.02)
            assert await pool.options(worker=worker).call("add", 1, 2) == 3

    asyncio.run(asyncio.wait_for(main(), 20))


def test_calls_stream_replies_by_id_and_survives_failing_calls(client, stub, auth):
    def call(tool, kwargs_json=None, **fields):
        req = pb.CallRequest(tool=tool, **fields)
        if kwargs_json is not None:
            req.kwargs.CopyFrom(values_pb2.Value(json=kwargs_json))
        return req

    batch = pb.CallBatch(calls=[
        pb.TaggedCall(id=1, request=call("add", '{"a": 1, "b": 2}')),
        pb.TaggedCall(id=2, request=call("nosuch")),
        pb.TaggedCall(id=3, request=call("add", '{"a": 1,')),
        pb.TaggedCall(id=4, request=call("raise_key", '{"key": "k"}')),
        pb.TaggedCall(id=5, request=call("c_sleep_uninterruptible", '{"seconds": 0}')),
    ])
    replies = {}
    for reply_batch in stub.Calls(iter([batch]), metadata=auth):
        for r in reply_batch.replies:
            replies[r.id] = r
    assert set(replies) == {1, 2, 3, 4, 5}
    assert replies[1].result.json == "3"
    assert replies[2].error.kind == values_pb2.ERROR_KIND_NOT_FOUND
    assert replies[3].error.kind == values_pb2.ERROR_KIND_INVALID_ARGUMENTS
    assert (replies[4].error.kind, replies[4].error.type) == (values_pb2.ERROR_KIND_TOOL, "KeyError")
    assert replies[5].WhichOneof("outcome") == "result" and not replies[5].result.json
    still_serving(client)
