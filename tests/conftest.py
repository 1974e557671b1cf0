import contextlib
import linecache
import os
import signal
import sys
import time
from pathlib import Path

import psutil
import pytest

ADAPTERS = str(Path(__file__).parent / "adapters")


@pytest.fixture(autouse=True, scope="session")
def _private_runtime_dir(tmp_path_factory):
    """Keep connection and discovery files of the tests out of the user's runtime dir, and
    the default job store of the bridges they start (`kernelpit serve`) out of the user's
    data dir."""
    runtime = tmp_path_factory.mktemp("jupyter-runtime")
    data = tmp_path_factory.mktemp("jupyter-data")
    old = {k: os.environ.get(k) for k in ("JUPYTER_RUNTIME_DIR", "JUPYTER_DATA_DIR")}
    os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
    os.environ["JUPYTER_DATA_DIR"] = str(data)
    yield runtime
    for key, value in old.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value


@pytest.fixture(scope="session")
def ray_cluster():
    """One local multi-node Ray cluster (tests/raycluster.py) shared by every Ray test module;
    started on first use only (about 15 s), so a run without Ray tests never starts it."""
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' "
                                      "(.ci/run installs it)")
    import raycluster

    made = raycluster.start_cluster()
    yield made
    raycluster.stop_cluster(made)
    wait_until(lambda: not raycluster.running_ray_processes(), timeout=30)


@pytest.fixture(scope="module")
def stub(bridge):
    """A raw gRPC stub on the test module's ``bridge`` fixture: a client of the proto alone."""
    import grpc
    from kernelpit.v1 import bridge_pb2_grpc as pb_grpc

    channel = grpc.insecure_channel(bridge.address)
    yield pb_grpc.BridgeStub(channel)
    channel.close()


@pytest.fixture
def auth(bridge):
    """The call metadata that carries the token of the test module's ``bridge``."""
    return (("authorization", f"Bearer {bridge.token}"),)


def kernel_processes(run_id: str | None = None) -> list[psutil.Process]:
    """Live worker kernel processes: of one run anywhere, or (no run id) children of this process."""
    found = []
    procs = psutil.process_iter() if run_id else psutil.Process().children(recursive=True)
    for proc in procs:
        try:
            cmd = proc.cmdline()
            if proc.status() == psutil.STATUS_ZOMBIE or "kernelpit.kernels" not in cmd:
                continue
            if run_id is None or proc.environ().get("KERNELPIT_RUN_ID") == run_id:
                found.append(proc)
        except psutil.Error:
            continue
    return found


@contextlib.contextmanager
def ctrl_c_at(function: str, line_containing: str | None = None):
    """Raise KeyboardInterrupt once in this thread, exactly where a Ctrl-C could land: when
    a function of that name is entered, or when it reaches its line containing the text
    (a signal can come at any bytecode; a trace function makes the moment exact)."""
    def interrupt():
        sys.settrace(None)
        raise KeyboardInterrupt

    def in_function(frame, event, arg):
        if event == "line" and line_containing in linecache.getline(frame.f_code.co_filename,
                                                                     frame.f_lineno):
            interrupt()
        return in_function

    def trace(frame, event, arg):
        if event == "call" and frame.f_code.co_name == function:
            if line_containing is None:
                interrupt()
            return in_function
        return None

    sys.settrace(trace)
    try:
        yield
    finally:
        sys.settrace(None)


@pytest.fixture
def keyboard_interrupts():
    """SIGINT raises KeyboardInterrupt in the main thread, as for a user at a terminal, even
    when the test run was started with SIGINT ignored (a background job of a shell without
    job control: Python then keeps it ignored, and a SIGINT would be lost)."""
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)


def wait_until(predicate, timeout: float = 20.0, interval: float = 0.02):
    """Poll ``predicate`` until it is truthy; fail the test at ``timeout``."""
    end = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > end:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(interval)
