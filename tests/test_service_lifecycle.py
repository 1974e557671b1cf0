"""``kernelpit serve`` as a process: discovery file, stale files, auth flags, SIGTERM drain."""

import json
import os
import signal
import stat
import subprocess
import sys
import threading
import time

import pytest

import kernelpit
from conftest import kernel_processes, wait_until

DEMO = "kernelpit.kernels.demo"


class Served:
    """A ``kernelpit serve`` child process with its own Jupyter runtime dir."""

    def __init__(self, runtime, *args):
        self.runtime = runtime
        self.env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), "PYTHONUNBUFFERED": "1"}
        self.proc = subprocess.Popen([sys.executable, "-m", "kernelpit", "serve", *args],
                                     env=self.env, stderr=subprocess.PIPE, text=True)
        self.log = []
        for line in self.proc.stderr:  # wait for the line that says it serves
            self.log.append(line)
            if "bridge serving" in line:
                break
        else:
            raise AssertionError("kernelpit serve did not start:\n" + "".join(self.log))
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self):
        for line in self.proc.stderr:
            self.log.append(line)

    @property
    def discovery_file(self):
        return self.runtime / "kernelpit-bridge.json"

    @property
    def info(self):
        return json.loads(self.discovery_file.read_text())

    def connect(self):
        return kernelpit.connect(self.info["address"], self.info["token"])

    def cli(self, *args, timeout=60):
        return subprocess.run([sys.executable, "-m", "kernelpit", *args], env=self.env,
                              capture_output=True, text=True, timeout=timeout)

    def stop(self):
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._reader.join(5)
        return self.proc.returncode


def dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def write_stale(runtime):
    path = runtime / "kernelpit-bridge.json"
    path.write_text(json.dumps({"address": "127.0.0.1:1", "pid": dead_pid(), "token": "old"}))
    return path


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("runtime")
    write_stale(runtime)  # left behind by a bridge that died: must be replaced
    s = Served(runtime, "--adapter", DEMO, "--workers", "1")
    yield s
    s.stop()


def test_discovery_file_is_private_and_describes_the_bridge(served):
    mode = stat.S_IMODE(served.discovery_file.stat().st_mode)
    assert mode == 0o600
    info = served.info
    assert info["pid"] == served.proc.pid and info["token"] and info["address"].startswith("127.0.0.1:")


def test_connect_without_arguments_finds_the_bridge(served, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(served.runtime))
    with kernelpit.connect() as pool:
        assert pool.call("add", a=1, b=2) == 3
        assert pool.address == served.info["address"]


def test_stale_discovery_file_was_replaced(served):
    assert served.info["address"] != "127.0.0.1:1" and served.info["token"] != "old"


def test_stale_discovery_file_is_ignored_by_clients(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    write_stale(tmp_path)
    with pytest.raises(kernelpit.BridgeNotFound, match="stale.*kernelpit serve --adapter"):
        kernelpit.connect()


def test_connecting_to_nothing_says_how_to_start_a_bridge(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    with pytest.raises(kernelpit.BridgeNotFound, match="no Kernelpit bridge was found.*kernelpit serve"):
        kernelpit.connect()
    with pytest.raises(kernelpit.BridgeNotFound, match="no Kernelpit bridge answers at 127.0.0.1:9"):
        kernelpit.connect("127.0.0.1:9", token="x")

    async def main():
        await kernelpit.aio.connect()

    import asyncio
    with pytest.raises(kernelpit.BridgeNotFound):
        asyncio.run(main())


def test_a_second_bridge_does_not_replace_a_live_one(served):
    result = served.cli("serve", "--adapter", DEMO, "--workers", "1", timeout=60)
    assert result.returncode == 1
    assert "already running" in result.stderr and "kernelpit stop" in result.stderr
    assert served.info["pid"] == served.proc.pid


def test_serve_without_anything_to_serve_says_what_to_give(served):
    result = served.cli("serve")
    assert result.returncode == 2 and "--adapter MODULE" in result.stderr


def test_sigterm_drains_in_flight_calls_and_stops_every_kernel(tmp_path):
    s = Served(tmp_path, "--adapter", DEMO, "--workers", "2", "--no-auth", "--grace", "20")
    try:
        assert any("authentication is OFF" in line for line in s.log)
        run_id = s.info["run_id"]
        assert s.info["token"] is None
        assert len(kernel_processes(run_id)) == 2
        client = kernelpit.connect(s.info["address"])  # no token needed with --no-auth
        started = threading.Event()
        events = []

        def run():
            for e in client.stream("train", epochs=4, seconds_per_epoch=0.25):
                events.append(e)
                if e.kind == "started":
                    started.set()

        caller = threading.Thread(target=run)
        caller.start()
        assert started.wait(10)
        assert client.map("add", [1, 2], [3, 4]) == [4, 6]
        # A call while another blocking call is in flight goes over the multiplexed stream,
        # which then stays open (idle) until the client closes.
        other = threading.Thread(target=client.call, args=("train", 1, 0.3))
        other.start()
        wait_until(lambda: all(w.state == "busy" for w in client.workers()))
        assert client.call("add", 1, 2) == 3
        other.join()
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        caller.join(30)
        assert events[-1].kind == "result" and events[-1].value["epochs"] == 4
        assert s.proc.wait(30) == 0
        assert time.monotonic() - t0 < 10  # open idle streams do not hold up the drain (grace 20)
        assert kernel_processes(run_id) == []
        assert not s.discovery_file.exists()
        assert any("stopped" in line for line in s.log)
        client.close()
    finally:
        s.stop()


def test_config_file_errors_are_explained(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[pools.default]\nadapters = ['x']\nworkerz = 2\n")
    result = subprocess.run([sys.executable, "-m", "kernelpit", "serve", "--config", str(bad)],
                            capture_output=True, text=True, timeout=60,
                            env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    assert result.returncode == 1
    assert "[pools.default]" in result.stderr and "workerz" in result.stderr


def test_a_second_sigterm_cuts_the_drain_short(tmp_path):
    s = Served(tmp_path, "--adapter", DEMO, "--workers", "1", "--grace", "60")
    try:
        run_id = s.info["run_id"]
        client = s.connect()
        outcome = []

        def run():
            try:
                outcome.append(client.call("spin", seconds=60))
            except Exception as exc:  # noqa: BLE001
                outcome.append(exc)

        caller = threading.Thread(target=run)
        caller.start()
        wait_until(lambda: client.workers()[0].state == "busy")
        s.proc.send_signal(signal.SIGTERM)
        wait_until(lambda: any("stopping" in line for line in s.log))
        t0 = time.monotonic()
        s.proc.send_signal(signal.SIGTERM)
        assert s.proc.wait(30) == 0
        assert time.monotonic() - t0 < 15  # not the 60 s grace
        caller.join(10)
        assert isinstance(outcome[0], kernelpit.KernelpitError)
        assert kernel_processes(run_id) == []
        client.close()
    finally:
        s.stop()


def test_sigterm_lets_running_jobs_finish_within_the_grace(tmp_path):
    store = tmp_path / "jobs.sqlite"
    s = Served(tmp_path, "--adapter", DEMO, "--workers", "1", "--grace", "20",
               "--store", str(store))
    try:
        with s.connect() as client:
            job = client.submit("train", epochs=4, seconds_per_epoch=0.5)
            wait_until(lambda: job.state == "running")
        s.proc.send_signal(signal.SIGTERM)  # nobody connected: only the job is in flight
        assert s.proc.wait(30) == 0
        assert any("stopping" in line for line in s.log)
    finally:
        s.stop()
    s = Served(tmp_path, "--adapter", DEMO, "--workers", "1", "--store", str(store))
    try:
        with s.connect() as client:
            info = client.job(job.id).info()  # finished by the first bridge, once
            assert (info.state, info.attempt) == ("succeeded", 1)
            assert client.job(job.id).result() == {"epochs": 4, "loss": 0.1296}
    finally:
        s.stop()
