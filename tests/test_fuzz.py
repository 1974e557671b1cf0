"""Fuzz the bridge's gRPC API: every request gets a status, the service never crashes.

Random bytes as requests to every unary method, and well-formed requests whose
fields hold random values: unknown tools, huge strings, deep or malformed JSON,
absurd deadlines and ids. After each batch the bridge must still serve a call.
"""

import json
import math

import grpc
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ADAPTERS
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2

# Shutdown would (rightly) stop the bridge, and RestartWorker restarts real kernels: both
# are exercised by the service tests; everything else is fuzzed here.
UNARY = ["Call", "Map", "ListTools", "DescribeTool", "CreateSession", "GetSession",
         "ListSessions", "CloseSession", "ListWorkers", "InterruptWorker", "GetServerInfo"]
FUZZ = settings(max_examples=40, deadline=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture])


@pytest.fixture(scope="module")
def bridge():
    portal = Portal("fuzz-bridge")
    b = Bridge([PoolConfig(name="default", adapters=["kp_tools"], workers=1, path=[ADAPTERS])],
               max_message_size=1 << 20, grace=5)
    portal.call(b.start)
    yield b
    portal.call(b.stop, 0)
    portal.stop()


@pytest.fixture(scope="module")
def channel(bridge):
    ch = grpc.insecure_channel(bridge.address, options=[("grpc.max_send_message_length", 8 << 20)])
    yield ch
    ch.close()


@pytest.fixture(scope="module")
def stub(channel):
    return pb_grpc.BridgeStub(channel)


@pytest.fixture(scope="module")
def meta(bridge):
    return (("authorization", f"Bearer {bridge.token}"),)


def answered(fn, *args, **kwargs):
    """Run an RPC; return its status code (OK or the error), failing on a dead server."""
    try:
        fn(*args, **kwargs)
    except grpc.RpcError as err:
        assert err.code() not in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.INTERNAL), (
            err.code(), err.details())
        assert err.details(), "an error status must say what went wrong"
        return err.code()
    return grpc.StatusCode.OK


def still_serving(stub, meta):
    reply = stub.Call(pb.CallRequest(tool="add", kwargs=values_pb2.Value(json='{"a": 1, "b": 2}')),
                      metadata=meta, timeout=30)
    assert json.loads(reply.result.json) == 3


@FUZZ
@given(method=st.sampled_from(UNARY), payload=st.binary(max_size=2048))
def test_random_bytes_to_every_method_get_a_status(channel, stub, meta, method, payload):
    rpc = channel.unary_unary(f"/kernelpit.v1.Bridge/{method}")
    answered(rpc, payload, metadata=meta, timeout=30)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=50),
    lambda inner: st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=10), inner, max_size=5),
    max_leaves=30)


@FUZZ
@given(tool=st.sampled_from(["add", "echo", "gen", "spin"]) | st.text(max_size=300),
       args=st.one_of(st.none(), st.text(max_size=200),
                      json_values.map(json.dumps),
                      st.integers(1, 5000).map(lambda d: "[" * d + "]" * d)),
       kwargs=st.one_of(st.none(), st.text(max_size=200),
                        st.dictionaries(st.text(max_size=20), json_values, max_size=4).map(json.dumps)),
       deadline=st.none() | st.floats(allow_nan=True, allow_infinity=True),
       session=st.none() | st.text(max_size=100),
       worker=st.none() | st.integers(-2**63, 2**63 - 1),
       raw=st.none() | st.binary(max_size=100))
def test_calls_with_random_field_values_get_a_status(stub, meta, tool, args, kwargs, deadline,
                                                   session, worker, raw):
    if deadline is not None and (math.isnan(deadline) or deadline > 5):
        deadline = None if not math.isnan(deadline) else deadline  # never wait long on a real tool
    if tool == "spin":
        deadline = 0.05
    request = pb.CallRequest(tool=tool, options=pb.CallOptions(
        deadline=deadline, session=session, worker=worker))
    if args is not None:
        request.args.CopyFrom(values_pb2.Value(json=args))
    if kwargs is not None:
        request.kwargs.CopyFrom(values_pb2.Value(json=kwargs))
    if raw is not None:
        request.kwargs.CopyFrom(values_pb2.Value(raw=raw))
    answered(stub.Call, request, metadata=meta, timeout=30)


@FUZZ
@given(size=st.integers(1 << 19, 3 << 20), where=st.sampled_from(["tool", "json", "session"]))
def test_huge_strings_get_a_status(stub, meta, size, where):
    big = "x" * size
    request = pb.CallRequest(tool="echo")
    if where == "tool":
        request.tool = big
    elif where == "json":
        request.kwargs.CopyFrom(values_pb2.Value(json=json.dumps({"value": big})))
    else:
        request.options.session = big
    code = answered(stub.Call, request, metadata=meta, timeout=30)
    if size > 1 << 20:
        assert code == grpc.StatusCode.RESOURCE_EXHAUSTED


@FUZZ
@given(name=st.text(max_size=500), ttl=st.none() | st.floats(allow_nan=True, allow_infinity=True),
       metadata=st.dictionaries(st.text(max_size=50), st.text(max_size=200), max_size=10))
def test_sessions_with_random_fields_get_a_status(stub, meta, name, ttl, metadata):
    try:
        session = stub.CreateSession(pb.CreateSessionRequest(id=name, ttl=ttl, metadata=metadata),
                                     metadata=meta, timeout=30)
    except grpc.RpcError as err:
        assert err.code() in (grpc.StatusCode.INVALID_ARGUMENT, grpc.StatusCode.ALREADY_EXISTS,
                              grpc.StatusCode.NOT_FOUND), (err.code(), err.details())
    else:
        try:
            stub.CloseSession(pb.CloseSessionRequest(id=session.id), metadata=meta, timeout=30)
        except grpc.RpcError as err:  # a ttl this short may have expired it already
            assert err.code() == grpc.StatusCode.NOT_FOUND and ttl is not None and ttl < 1, \
                (err.code(), err.details())
    answered(stub.GetSession, pb.GetSessionRequest(id=name), metadata=meta, timeout=30)
    answered(stub.CloseSession, pb.CloseSessionRequest(id=name), metadata=meta, timeout=30)


def test_the_bridge_still_serves_after_the_fuzzing(stub, meta):
    still_serving(stub, meta)
