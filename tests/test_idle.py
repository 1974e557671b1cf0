"""Idle shutdown of real ``kernelpit serve`` processes: nobody using it, it stops by itself;
a connected client (its lease) or a running call keeps it up; an unused session does not."""

import asyncio
import json
import os
import re
import signal
import subprocess
import sys
import threading

import grpc
import pytest

import kernelpit
from conftest import kernel_processes, wait_until
from kernelpit.jobs import open_store
from kernelpit.v1 import bridge_pb2 as pb
from kernelpit.v1 import bridge_pb2_grpc as pb_grpc
from kernelpit.v1 import values_pb2 as values_pb

DEMO = "kernelpit.kernels.demo"
IDLE = 1.5    # the bridges' --idle-timeout here
LEASE = 1.0   # the clients' lease ttl ($KERNELPIT_LEASE_TTL): renewed every 0.33 s
STOPS = 30.0  # how long a bridge may take to notice it is idle and stop (generous: busy CI box)


def raw_stub(info):
    """A client that holds no lease (as grpcurl or another language's client), and its auth."""
    channel = grpc.insecure_channel(info["address"])
    return channel, pb_grpc.BridgeStub(channel), (("authorization", f"Bearer {info['token']}"),)


class Bridge:
    """A ``kernelpit serve --idle-timeout`` process with its own runtime dir."""

    def __init__(self, runtime, *args):
        self.runtime = runtime
        self.env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1",
                    "KERNELPIT_LEASE_TTL": str(LEASE)}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "kernelpit", "serve", "--workers", "1", *args],
            env=self.env, stderr=subprocess.PIPE, text=True)
        self.log = []
        for line in self.proc.stderr:
            self.log.append(line)
            if "bridge serving" in line:
                break
        else:
            raise AssertionError("kernelpit serve did not start:\n" + "".join(self.log))
        self._reader = threading.Thread(target=lambda: self.log.extend(self.proc.stderr),
                                        daemon=True)
        self._reader.start()
        self.info = json.loads(self.discovery_file.read_text())

    @property
    def discovery_file(self):
        return self.runtime / "kernelpit-bridge.json"

    def connect(self):
        return kernelpit.connect(self.info["address"], self.info["token"])

    def stays_up(self, seconds):
        """True if the process is still running after ``seconds`` (it must not stop by then)."""
        try:
            self.proc.wait(seconds)
        except subprocess.TimeoutExpired:
            return True
        return False

    def stopped_idle(self):
        """Wait for the bridge to stop by itself; check it left nothing behind."""
        assert self.proc.wait(STOPS) == 0
        self._reader.join(5)
        log = "".join(self.log)
        assert "stopping: idle for" in log and "with no client" in log, log
        assert "every worker kernel is shut down" in log
        assert not self.discovery_file.exists()
        wait_until(lambda: not kernel_processes(self.info["run_id"]), timeout=20)

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()


@pytest.fixture
def bridge(tmp_path, monkeypatch):
    monkeypatch.setenv("KERNELPIT_LEASE_TTL", str(LEASE))  # clients made in this process
    made = []

    def start(*args):
        made.append(Bridge(tmp_path, "--adapter", DEMO, *args))
        return made[-1]
    yield start
    for b in made:
        b.close()


def test_an_unused_bridge_stops_by_itself_and_leaves_nothing(tmp_path, bridge):
    config = tmp_path / "bridge.toml"  # the [bridge] table of --config takes it too
    config.write_text(f"[bridge]\nidle_timeout = {IDLE}\n")
    b = bridge("--config", str(config))
    assert kernel_processes(b.info["run_id"])
    assert b.info["idle_timeout"] == IDLE
    assert f"it stops by itself after {IDLE:g} s with no calls and no connected client" \
        in "".join(b.log)
    b.stopped_idle()


def test_a_connected_client_keeps_it_up_until_closed(bridge):
    b = bridge("--idle-timeout", str(IDLE))
    client = b.connect()
    assert client.call("add", a=1, b=2) == 3
    assert b.stays_up(IDLE * 2)  # no calls for longer than the timeout: the lease holds it
    assert client.call("add", a=2, b=2) == 4
    client.close()  # gives the lease back
    b.stopped_idle()


def test_a_killed_client_stops_holding_it(bridge):
    b = bridge("--idle-timeout", str(IDLE))
    script = ("import sys, kernelpit\n"
              f"client = kernelpit.connect({b.info['address']!r}, {b.info['token']!r})\n"
              "client.call('add', a=1, b=1)\n"
              "print('connected', flush=True)\n"
              "sys.stdin.read()\n")  # holds the client until killed
    client = subprocess.Popen([sys.executable, "-c", script], env=b.env, stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, text=True)
    try:
        assert client.stdout.readline().strip() == "connected"
        assert b.stays_up(IDLE * 1.5)
        client.send_signal(signal.SIGKILL)  # no close, no lease given back: it lapses
        client.wait(10)
        b.stopped_idle()
    finally:
        client.kill()
        client.wait()


def test_a_call_longer_than_the_idle_timeout_is_not_cut(bridge):
    b = bridge("--idle-timeout", str(IDLE))
    channel, stub, auth = raw_stub(b.info)  # holds no lease: only the running call counts
    with channel:
        request = pb.CallRequest(tool="train", kwargs=values_pb.Value(
            json=json.dumps({"epochs": 2, "seconds_per_epoch": IDLE})))
        reply = stub.Call(request, metadata=auth, timeout=60)
        assert json.loads(reply.result.json) == {"epochs": 2, "loss": 0.36}
        # still serving, not draining after an idle stop (a drain would refuse this call)
        add = pb.CallRequest(tool="add", kwargs=values_pb.Value(json='{"a": 1, "b": 2}'))
        assert json.loads(stub.Call(add, metadata=auth, timeout=30).result.json) == 3
        assert "stopping" not in "".join(b.log)
        with pytest.raises(grpc.RpcError) as err:  # a lease needs a client id
            stub.RenewLease(pb.RenewLeaseRequest(ttl=5), metadata=auth)
        assert err.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "kernelpit-client-id" in err.value.details()
    b.stopped_idle()


def test_a_running_job_keeps_it_up_after_its_submitter_left(bridge):
    b = bridge("--idle-timeout", str(IDLE))
    with b.connect() as client:
        job = client.submit("train", epochs=3, seconds_per_epoch=IDLE)
        job_id = job.id
    # no client, no RPC: only the job holds the bridge up, for all of its ~3 IDLE seconds
    assert b.stays_up(IDLE * 2.5)
    assert "stopping" not in "".join(b.log)  # not even draining: it is in use
    b.stopped_idle()
    # it stopped only once the job had finished: the store says so
    path, namespace = re.search(r"job store (\S+) \(namespace (\S+)\)", "".join(b.log)).groups()

    async def state() -> str:
        store = await open_store(path, namespace=namespace)
        try:
            return (await store.get(job_id)).state
        finally:
            await store.close()
    assert asyncio.run(state()) == "succeeded"


def test_an_open_session_nobody_uses_does_not_keep_it_up(bridge):
    b = bridge("--idle-timeout", str(IDLE))
    with b.connect() as client:
        client.session(id="forgotten", ttl=3600)
    channel, stub, auth = raw_stub(b.info)
    with channel:  # the session outlives the client that opened it
        assert [s.id for s in stub.ListSessions(pb.ListSessionsRequest(), metadata=auth).sessions] \
            == ["forgotten"]
    b.stopped_idle()
