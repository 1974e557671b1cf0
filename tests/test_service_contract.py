"""The kernelpit.v1 contract without a server: stubs up to date, values, the status mapping."""

import grpc
import pytest

import kernelpit
from kernelpit import events as ev
from kernelpit import exceptions as kx
from kernelpit.contract import convert, errors
from kernelpit.service import codegen
from kernelpit.contract.values import BadValue, from_value, to_value
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import values_pb2


def test_committed_stubs_match_the_proto_files():
    assert codegen.stale() == [], "run `python -m kernelpit.service.codegen` and commit bridge/v1/"


def test_stale_check_notices_a_changed_stub(tmp_path):
    fresh = tmp_path / "v1"
    codegen.generate(fresh)
    assert codegen.stale(fresh) == []
    (fresh / "values_pb2.py").write_text("# edited by hand\n")
    assert codegen.stale(fresh) == ["values_pb2.py"]


@pytest.mark.parametrize("value", [
    None, 0, -1.5, "h\u00e9llo", True, [1, [2, None]], {"a": {"b": [1, 2]}},
    b"\x00\xff" * 10, {"raw": b"\x00", "list": [b"a", {"deep": b"b"}], "n": 1},
])
def test_values_round_trip(value):
    assert from_value(to_value(value)) == value


def test_nested_bytes_travel_as_buffers_not_base64():
    v = to_value({"blob": b"\x01" * 100})
    assert len(v.buffers) == 1 and '"$kp":"bytes"' in v.json
    assert to_value(b"xyz").raw == b"xyz"


@pytest.mark.parametrize("value,match", [
    (values_pb2.Value(json="[1,"), "not valid JSON"),
    (values_pb2.Value(json='{"$kp":"bytes","i":3}'), "no matching buffer"),
    (values_pb2.Value(raw=b"x", encoding="arrow"), "not supported"),
])
def test_malformed_values_are_named(value, match):
    with pytest.raises(BadValue, match=match):
        from_value(value, "args")


def test_unsendable_value_says_which_type():
    with pytest.raises(BadValue, match="builtins.set cannot be sent"):
        to_value({1, 2})


@pytest.mark.parametrize("exc,code", [
    (kx.ToolNotFound("no tool named 'x'", tool="x"), grpc.StatusCode.NOT_FOUND),
    (kx.SessionNotFound("no session 's'"), grpc.StatusCode.NOT_FOUND),
    (kx.WorkerNotFound("no worker 9"), grpc.StatusCode.NOT_FOUND),
    (kx.InvalidArguments("parameter 'a' ..."), grpc.StatusCode.INVALID_ARGUMENT),
    (kx.QueueFull("full"), grpc.StatusCode.RESOURCE_EXHAUSTED),
    (kx.DeadlineExceeded("late"), grpc.StatusCode.DEADLINE_EXCEEDED),
    (kx.Cancelled("stop"), grpc.StatusCode.CANCELLED),
    (kx.WorkerCrashed("died", exit_code=-9, signal="SIGKILL", worker=3), grpc.StatusCode.ABORTED),
    (kx.SessionLost("gone"), grpc.StatusCode.FAILED_PRECONDITION),
    (kx.PoolClosed("closed"), grpc.StatusCode.UNAVAILABLE),
    (kx.RemoteError("m", remote_type="CustomError", remote_module="mod"), grpc.StatusCode.UNKNOWN),
])
def test_exceptions_map_to_one_status_and_back_to_the_same_class(exc, code):
    got_code, details, trailing = errors.to_status(exc)
    assert got_code == code and details
    back = errors.from_proto(values_pb2.RemoteException.FromString(trailing[0][1]))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    if isinstance(exc, kx.WorkerCrashed):
        assert (back.exit_code, back.signal, back.worker) == (-9, "SIGKILL", 3)
    if isinstance(exc, kx.RemoteError):
        assert (back.remote_type, back.remote_module) == ("CustomError", "mod")


def test_builtin_exceptions_stay_builtins_with_their_args():
    exc = KeyError("missing")
    exc.remote_traceback = "Traceback ...\nKeyError: 'missing'\n"
    back = errors.from_proto(errors.to_proto(exc))
    assert type(back) is KeyError and back.args == ("missing",)
    assert back.remote_traceback.startswith("Traceback")
    assert isinstance(back.__cause__, kx.RemoteTraceback)


def test_events_round_trip():
    for e in [ev.Queued(position=2), ev.Started(worker=1), ev.Progress(done=1, total=3, message="m"),
              ev.Progress(done=4), ev.Stdout(text="o"), ev.Stderr(text="e"),
              ev.Display(data={"text/html": "<b>x</b>"}, metadata={"k": 1}),
              ev.Partial(value=[1]), ev.Result(value={"x": b"y"}), ev.Result(value=None)]:
        e.call_id = 7
        assert convert.event_from_proto(convert.event_to_proto(e)) == e
    err = convert.event_from_proto(convert.event_to_proto(ev.Error(error=kx.Cancelled("c"))))
    assert isinstance(err.error, kx.Cancelled)


def test_call_options_travel_in_the_request():
    opts = kernelpit.CallOptions(deadline=2.5, session="s1", pool="p", worker=0, idempotent=False)
    req = convert.call_request("t", (1,), {"k": "v"}, opts)
    args, kwargs, back = convert.call_from_request(pb.CallRequest.FromString(req.SerializeToString()))
    assert (args, kwargs, back) == ([1], {"k": "v"}, opts)
    assert convert.call_from_request(pb.CallRequest(tool="t")) == ([], {}, kernelpit.CallOptions())


def test_reflection_answers_as_v1_and_v1alpha():
    """Current tools (grpcurl, Postman) ask for grpc.reflection.v1, older ones for v1alpha:
    both list the services and describe the contract, without a token."""
    from google.protobuf import descriptor_pb2
    from grpc_reflection.v1alpha import reflection_pb2 as v1alpha

    from kernelpit.config import PoolConfig
    from kernelpit.service import reflection
    from kernelpit.service.server import Bridge
    from kernelpit.sync import Portal

    v1_request, v1_response = reflection.v1_messages()
    assert v1_request.DESCRIPTOR.full_name == "grpc.reflection.v1.ServerReflectionRequest"
    portal = Portal("test-reflection")
    bridge = Bridge([PoolConfig(name="default", adapters=["kernelpit.kernels.demo"], workers=1)],
                    discovery=False)
    try:
        portal.call(bridge.start)
        with grpc.insecure_channel(bridge.address) as channel:
            for version, request, response in (("v1", v1_request, v1_response),
                                               ("v1alpha", v1alpha.ServerReflectionRequest,
                                                v1alpha.ServerReflectionResponse)):
                ask = channel.stream_stream(
                    f"/grpc.reflection.{version}.ServerReflection/ServerReflectionInfo",
                    request_serializer=request.SerializeToString,
                    response_deserializer=response.FromString)
                listed, bridge_file, own_file = ask(iter([
                    request(list_services=""),
                    request(file_containing_symbol="kernelpit.v1.Bridge"),
                    request(file_containing_symbol=f"grpc.reflection.{version}.ServerReflection"),
                ]), timeout=10)
                names = {s.name for s in listed.list_services_response.service}
                assert {"kernelpit.v1.Bridge", "grpc.health.v1.Health",
                        "grpc.reflection.v1.ServerReflection",
                        "grpc.reflection.v1alpha.ServerReflection"} <= names, version
                files = [descriptor_pb2.FileDescriptorProto.FromString(b) for b in
                         bridge_file.file_descriptor_response.file_descriptor_proto]
                service = [s for f in files for s in f.service if s.name == "Bridge"]
                assert service and "RenewLease" in [m.name for m in service[0].method], version
                own = descriptor_pb2.FileDescriptorProto.FromString(
                    own_file.file_descriptor_response.file_descriptor_proto[0])
                assert own.package == f"grpc.reflection.{version}", version
                assert own.service[0].method[0].input_type == \
                    f".grpc.reflection.{version}.ServerReflectionRequest"
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()
