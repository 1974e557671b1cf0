"""Transport security: TLS, mutual TLS, the plaintext bind refusal, named tokens and roles.

Real grpc.aio bridges on 127.0.0.1 with real kernels; certificates made here (tests/tlscerts.py).
Nothing here binds a non-loopback address: the refusal is checked to happen before binding.
"""

import json
import re
import stat
import threading
from pathlib import Path
from types import SimpleNamespace

import grpc
import psutil
import pytest

import kernelpit
import kernelpit.aio
from conftest import ADAPTERS, wait_until
from kernelpit import cli, discovery
from kernelpit.config import PoolConfig
from kernelpit.contract.errors import ERROR_KEY
from kernelpit.remote import client_portal
from kernelpit.service import config as config_file
from kernelpit.service.roles import METHOD_ROLES, required_role
from kernelpit.service.server import Bridge
from kernelpit.service.tokens import TokenError, TokenStore
from kernelpit.service.transport import INSECURE_FLAG, InsecureBind, check_bind, is_loopback
from kernelpit.sync import Portal
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2
from tlscerts import CA

POOL = [PoolConfig(name="default", adapters=["kp_tools"], workers=1, path=[ADAPTERS])]


async def _start(bridge):
    return await bridge.start()


def on_client_loop(main):
    """Run an asyncio client on the loop the blocking clients use: gRPC's asyncio layer binds
    to one event loop per process."""
    return client_portal().call(main)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    folder = tmp_path_factory.mktemp("pki")
    ca, other = CA(folder / "ca"), CA(folder / "other", "another CA")
    return SimpleNamespace(ca=ca, other=other, server=ca.issue("server", server=True),
                           client=ca.issue("client", server=False),
                           stranger=other.issue("stranger", server=False))


@pytest.fixture(scope="module")
def portal():
    p = Portal("test-security")
    yield p
    p.stop()


def serve(portal, **settings):
    bridge = Bridge(POOL, grace=2, **settings)
    portal.call(_start, bridge)
    return bridge


@pytest.fixture(scope="module")
def tls_bridge(portal, pki):
    """TLS, found through the discovery file (which then holds the CA)."""
    b = serve(portal, tls_cert=pki.server.cert, tls_key=pki.server.key)
    yield b
    portal.call(b.stop, 0)


@pytest.fixture(scope="module")
def mtls_bridge(portal, pki):
    b = serve(portal, tls_cert=pki.server.cert, tls_key=pki.server.key,
              tls_client_ca=pki.ca.pem, discovery=False)
    yield b
    portal.call(b.stop, 0)


@pytest.fixture(scope="module")
def plain(portal, tmp_path_factory):
    """Plaintext on loopback, with a token file of its own: the token tests."""
    b = serve(portal, discovery=False,
              token_file=tmp_path_factory.mktemp("tokens") / "tokens.json")
    yield b
    portal.call(b.stop, 0)


@pytest.fixture(scope="module")
def admin(plain):
    with kernelpit.connect(plain.address, plain.token) as c:
        yield c


# -- the plaintext bind refusal ------------------------------------------------------------------

def test_plaintext_bridge_refuses_a_non_loopback_host_before_anything_starts():
    before = {p.pid for p in psutil.Process().children(recursive=True)}
    with pytest.raises(InsecureBind) as info:
        Bridge(POOL, host="0.0.0.0", discovery=False)
    message = str(info.value)
    assert "TLS" in message and "--tls-cert" in message and INSECURE_FLAG in message
    assert {p.pid for p in psutil.Process().children(recursive=True)} <= before  # no kernel


def test_serve_command_refuses_the_plaintext_public_bind(capsys):
    code = cli.main(["serve", "--adapter", "kernelpit.kernels.demo", "--host", "0.0.0.0",
                     "--no-discovery"])
    err = capsys.readouterr().err
    assert code == 1 and "refusing to listen on '0.0.0.0' without TLS" in err
    assert INSECURE_FLAG in err


def test_which_hosts_count_as_loopback_and_the_override_is_loud():
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.0.0.2", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "", "10.0.0.1", "192.168.1.5"))
    assert check_bind("0.0.0.0", tls=True, insecure_bind_anywhere=False) is None
    warning = check_bind("0.0.0.0", tls=False, insecure_bind_anywhere=True)
    assert "WITHOUT TLS" in warning and INSECURE_FLAG in warning


# -- TLS -----------------------------------------------------------------------------------------

def test_tls_end_to_end_with_the_ca_given(tls_bridge, pki):
    with kernelpit.connect(tls_bridge.address, tls_bridge.token, tls_ca=pki.ca.pem) as c:
        assert c.call("add", 2, b=3) == 5
        assert [e.kind for e in c.stream("steps", n=2)][-1] == "result"
        info = c.server_info()
        assert info.security.tls and not info.security.client_certificates
        assert not info.warnings
        assert info.blob_lane_port == 0  # the plaintext blob lane is not opened beside TLS


def test_a_tls_bridges_local_clients_read_streamed_results_on_the_lanes_unix_socket(tls_bridge):
    lane = tls_bridge._lane
    assert lane.port == 0 and lane.path  # no plaintext TCP port; the private socket only
    before = lane.served
    with kernelpit.connect(tls_bridge.local_address, tls_bridge.token, transport="local") as c:
        got = c.call("float_columns", 1_000_000)  # 8 MB columns: a streamed result
        assert got == {f"c{j}": [i * 0.5 + j for i in range(1_000_000)] for j in range(3)}
    wait_until(lambda: lane.served == before + 1)


def test_tls_through_the_discovery_file(tls_bridge):
    with kernelpit.connect() as c:  # address, token and the CA to trust from the discovery file
        assert c.address == tls_bridge.address and c.call("add", 1, b=1) == 2


def test_tls_with_the_asyncio_client(tls_bridge, pki):
    async def main():
        async with kernelpit.aio.connect(tls_bridge.address, tls_bridge.token,
                                         tls_ca=pki.ca.pem.read_bytes()) as c:
            return await c.call("add", 20, b=22)
    assert on_client_loop(main) == 42


def test_a_plaintext_client_is_refused_by_a_tls_bridge(tls_bridge, mtls_bridge):
    channel = grpc.insecure_channel(tls_bridge.address)
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.BridgeStub(channel).GetServerInfo(
            pb.ServerInfoRequest(), metadata=(("authorization", f"Bearer {tls_bridge.token}"),),
            timeout=5)
    channel.close()
    assert info.value.code() == grpc.StatusCode.UNAVAILABLE
    with pytest.raises(kernelpit.BridgeError, match="it serves TLS. Pass tls_ca="):
        kernelpit.connect(mtls_bridge.address, mtls_bridge.token)  # nothing says TLS: plaintext


def test_a_client_that_does_not_trust_the_bridges_ca_is_refused(tls_bridge, pki):
    with pytest.raises(kernelpit.BridgeError, match="does not verify") as info:
        kernelpit.connect(tls_bridge.address, tls_bridge.token, tls_ca=pki.other.pem)
    assert not isinstance(info.value, kernelpit.BridgeNotFound)  # the bridge is there


def test_a_tls_client_of_a_plaintext_bridge_is_told_so(plain, pki):
    with pytest.raises(kernelpit.BridgeError, match="does not speak TLS"):
        kernelpit.connect(plain.address, plain.token, tls_ca=pki.ca.pem)


def test_mutual_tls_refuses_clients_without_a_certificate_its_ca_signed(mtls_bridge, pki):
    address, token = mtls_bridge.address, mtls_bridge.token
    with pytest.raises(kernelpit.BridgeError, match="requires a client certificate"):
        kernelpit.connect(address, token, tls_ca=pki.ca.pem)
    with pytest.raises(kernelpit.BridgeError, match="did not sign this client's certificate"):
        kernelpit.connect(address, token, tls_ca=pki.ca.pem, tls_cert=pki.stranger.cert,
                          tls_key=pki.stranger.key)
    with kernelpit.connect(address, token, tls_ca=pki.ca.pem, tls_cert=pki.client.cert,
                           tls_key=pki.client.key) as c:
        assert c.call("add", 1, b=2) == 3  # the blocking fast path's own channel
        assert c.server_info().security.client_certificates


def test_cli_takes_the_tls_options(mtls_bridge, pki, capsys):
    code = cli.main(["tools", "--address", mtls_bridge.address, "--token", mtls_bridge.token,
                     "--tls-ca", str(pki.ca.pem), "--tls-cert", str(pki.client.cert),
                     "--tls-key", str(pki.client.key)])
    assert code == 0 and "steps" in capsys.readouterr().out
    code = cli.main(["tools", "--address", mtls_bridge.address, "--token", mtls_bridge.token,
                     "--tls-ca", str(pki.ca.pem)])
    assert code == 1 and "requires a client certificate" in capsys.readouterr().err


# -- roles ---------------------------------------------------------------------------------------

def test_every_rpc_of_the_contract_has_a_role_and_docs_list_the_same():
    services = [pb.DESCRIPTOR.services_by_name["Bridge"]]
    methods = {f"/{s.full_name}/{m.name}" for s in services for m in s.methods}
    assert methods <= set(METHOD_ROLES), f"RPCs without a role: {methods - set(METHOD_ROLES)}"
    assert required_role("/kernelpit.v1.Jobs/SubmitJob") == "call"
    assert required_role("/kernelpit.v1.Jobs/ListJobs") == "read"
    assert required_role("/kernelpit.v1.Whatever/New") == "admin"  # unknown: admin only
    docs = (Path(__file__).parent.parent / "docs" / "service.md").read_text()
    listed = {f"/kernelpit.v1.{svc}/{rpc}": role for svc, rpc, role in
              re.findall(r"^\| `(\w+)/(\w+)` \| (read|call|admin) \|", docs, re.M)}
    assert listed == METHOD_ROLES


def test_a_read_token_lists_and_watches_but_cannot_call(plain, admin):
    reader = admin.add_token("reader", "read")
    assert reader.role == "read" and reader.secret
    with kernelpit.connect(plain.address, reader.secret) as c:
        assert {t.name for t in c.tools()} >= {"add", "steps"}
        assert c.workers() and c.sessions() == []
        assert next(iter(c.watch())).kind == "snapshot"
        info = c.server_info()
        assert (info.security.token_name, info.security.role) == ("reader", "read")
        with pytest.raises(kernelpit.PermissionDenied, match="needs role call") as denied:
            c.call("add", 1, b=2)
        assert isinstance(denied.value, kernelpit.BridgeError)
        with pytest.raises(kernelpit.PermissionDenied):
            list(c.stream("steps", n=1))
        with pytest.raises(kernelpit.PermissionDenied):
            c.add_token("sneaky", "admin")
        with pytest.raises(kernelpit.PermissionDenied, match="needs role admin"):
            c.shutdown()  # (closes this handle, as a shutdown does)
    # what other languages see: the status code and the structured error's kind
    channel = grpc.insecure_channel(plain.address)
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.BridgeStub(channel).Call(pb.CallRequest(tool="add"),
                                         metadata=(("authorization", f"Bearer {reader.secret}"),))
    channel.close()
    assert info.value.code() == grpc.StatusCode.PERMISSION_DENIED
    err = values_pb2.RemoteException.FromString(dict(info.value.trailing_metadata())[ERROR_KEY])
    assert err.kind == values_pb2.ERROR_KIND_PERMISSION_DENIED and err.type == "PermissionDenied"


def test_a_read_token_is_refused_on_the_multiplexed_calls_stream(plain, admin):
    reader = admin.add_token("async-reader", "read")

    async def main():
        async with kernelpit.aio.connect(plain.address, reader.secret) as c:
            await c.call("add", 1, b=2)
    with pytest.raises(kernelpit.PermissionDenied, match="needs role call"):
        on_client_loop(main)


def test_a_call_token_runs_tools_but_controls_nothing(plain, admin):
    caller = admin.add_token("caller", "call")
    with kernelpit.connect(plain.address, caller.secret) as c:
        assert c.call("add", 1, b=2) == 3
        with c.session() as s:
            assert s.call("add", 2) == 2
        worker = c.workers()[0].id
        for control in (lambda: c.restart(worker), lambda: c.untaint("add"), c.list_tokens):
            with pytest.raises(kernelpit.PermissionDenied, match="needs role admin"):
                control()


# -- token management ----------------------------------------------------------------------------

def test_rotation_refuses_the_old_secret_and_in_flight_work_finishes(plain, admin, tmp_path):
    old = admin.add_token("ci", "call").secret
    gate, streamed = tmp_path / "gate", tmp_path / "streamed"
    with kernelpit.connect(plain.address, old) as c:
        results = {}
        thread = threading.Thread(target=lambda: results.update(
            call=c.call("wait_file", str(gate), timeout=30)))
        thread.start()
        wait_until(lambda: any(w.current_call for w in admin.workers()))
        stream = iter(c.stream("wait_file", str(streamed), timeout=30))
        assert next(stream).kind == "queued"   # the stream is open (waits for the busy worker)
        new = admin.rotate_token("ci")
        assert new.secret and new.secret != old and new.role == "call"
        with pytest.raises(kernelpit.Unauthenticated):
            c.tools()                          # a new RPC with the old secret
        with pytest.raises(kernelpit.Unauthenticated):
            kernelpit.connect(plain.address, old)
        gate.touch()
        thread.join(30)
        assert results["call"] == "released"   # in flight when rotated: finished
        streamed.touch()
        assert [e for e in stream if e.kind == "result"][0].value == "released"
    with kernelpit.connect(plain.address, new.secret) as c:
        assert c.call("add", 4, b=5) == 9


def test_revoke_list_and_the_token_file(plain, admin):
    temp = admin.add_token("temp", "read")
    with kernelpit.connect(plain.address, temp.secret) as c:
        assert c.tools()
        admin.revoke_token("temp")
        with pytest.raises(kernelpit.Unauthenticated, match="revoked or rotated"):
            c.tools()
    listed = {t.name: t for t in admin.list_tokens()}
    assert "temp" not in listed and listed["owner"].role == "admin"
    assert listed["reader"].last_used is not None and all(t.secret is None for t in listed.values())
    with pytest.raises(kernelpit.InvalidArguments, match="rotate owner"):
        admin.revoke_token("owner")
    with pytest.raises(kernelpit.InvalidArguments, match="exists already"):
        admin.add_token("reader", "read")
    with pytest.raises(kernelpit.InvalidArguments, match="unknown role"):
        admin.add_token("x", "root")
    path = plain.tokens.path
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = json.loads(path.read_text())
    names = {t["name"] for t in stored["tokens"]}
    assert "reader" in names and "temp" not in names and "owner" not in names
    assert plain.token not in path.read_text()   # hashes only


def test_token_store_survives_a_restart_and_refuses_a_file_others_can_write(tmp_path):
    path = tmp_path / "tokens.json"
    token, secret = TokenStore(path).add("ci", "call")
    again = TokenStore(path)
    assert again.authenticate(secret).name == "ci" and again.authenticate(secret + "x") is None
    path.chmod(0o666)
    with pytest.raises(TokenError, match="chmod 600"):
        TokenStore(path)


def test_token_cli(plain, capsys):
    where = ["--address", plain.address, "--token", plain.token]
    assert cli.main(["token", "add", "cli-made", "--role", "read", *where]) == 0
    out = capsys.readouterr()
    secret = out.out.strip()
    assert secret and "shown only now" in out.err
    with kernelpit.connect(plain.address, secret) as c:
        assert c.server_info().security.token_name == "cli-made"
    assert cli.main(["token", "list", *where]) == 0
    rows = [line.split() for line in capsys.readouterr().out.splitlines()]
    assert ["cli-made", "read"] in [row[:2] for row in rows] and secret not in str(rows)
    assert cli.main(["token", "rotate", "cli-made", *where]) == 0
    rotated = capsys.readouterr().out.strip()
    assert rotated and rotated != secret
    assert cli.main(["token", "add", "nope", "--role", "read", "--address", plain.address,
                     "--token", rotated]) == 1
    assert "needs role admin" in capsys.readouterr().err
    assert cli.main(["token", "revoke", "cli-made", *where]) == 0
    assert "revoked" in capsys.readouterr().err
    with pytest.raises(kernelpit.Unauthenticated):
        kernelpit.connect(plain.address, rotated)


def test_a_client_of_the_discovery_file_follows_a_rotated_owner_token(tls_bridge):
    """Runs last on the TLS bridge: it changes its owner token."""
    with kernelpit.connect() as c, kernelpit.connect() as other:
        before = tls_bridge.token
        rotated = other.rotate_token("owner")
        assert tls_bridge.token == rotated.secret != before
        assert discovery.read()["token"] == rotated.secret
        assert c.call("add", 1, b=1) == 2          # the blocking fast path: re-read, retried
        assert c.tools()                            # a unary RPC
        with pytest.raises(kernelpit.Unauthenticated):
            kernelpit.connect(tls_bridge.address, before)


def test_config_file_tls_paths_are_relative_to_it(tmp_path):
    path = tmp_path / "kp.toml"
    path.write_text('[bridge]\ntls_cert = "certs/server.pem"\ntls_key = "/abs/server.key"\n'
                    '[pools.default]\nadapters = ["kernelpit.kernels.demo"]\n')
    _, bridge = config_file.load(path)
    assert bridge["tls_cert"] == str(tmp_path / "certs" / "server.pem")
    assert bridge["tls_key"] == "/abs/server.key"


def test_metrics_of_a_tls_bridge_are_served_over_https_with_its_certificate(portal, pki):
    import ssl
    import urllib.request
    bridge = serve(portal, tls_cert=pki.server.cert, tls_key=pki.server.key, discovery=False,
                   metrics_address="127.0.0.1:0")
    try:
        url = bridge.metrics.url
        assert url.startswith("https://")
        trusted = ssl.create_default_context(cafile=str(pki.ca.pem))
        with urllib.request.urlopen(url, context=trusted, timeout=10) as reply:
            assert b"kernelpit_workers" in reply.read()
        with pytest.raises(OSError):  # a plaintext scrape gets no metrics (reset or refused)
            urllib.request.urlopen(url.replace("https://", "http://"), timeout=10).read()
    finally:
        portal.call(bridge.stop, 0)
