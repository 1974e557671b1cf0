"""The Ray kernel provisioner on a real local multi-node Ray cluster (tests/raycluster.py).

Every kernel here is a real ipykernel started by a real Ray actor on a node of a
real cluster (a head and two worker nodes, all on 127.0.0.1), driven through
jupyter_client exactly as JupyterLab or the pool would drive it.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import socket
import stat
import subprocess
import sys
import textwrap
from pathlib import Path

import psutil
import pytest

import raycluster  # sets Ray's environment before anything imports ray
from conftest import wait_until

ray = pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]' "
                                        "(.ci/run installs it)")

from jupyter_client.kernelspec import KernelSpec  # noqa: E402
from jupyter_client.manager import KernelManager  # noqa: E402
from jupyter_client.provisioning.factory import KernelProvisionerFactory  # noqa: E402

from kernelpit.exceptions import StartError  # noqa: E402
from kernelpit.provisioners import RayProvisioner, ResourcesUnavailable  # noqa: E402

TESTS = Path(__file__).parent
pytestmark = pytest.mark.timeout(180)


@pytest.fixture
def cluster(ray_cluster):
    """The session's Ray cluster (tests/conftest.py)."""
    return ray_cluster


def run(coro):
    return asyncio.run(coro)


def start(cluster, **config) -> KernelManager:
    """A kernel placed by the Ray provisioner per ``config``, started through jupyter_client."""
    spec = KernelSpec(**raycluster.ray_kernel_json(cluster.address, **config))
    km = KernelManager(kernel_name="ray-test", kernel_spec_manager=raycluster.SpecManager(spec))
    km.start_kernel()
    assert isinstance(km.provisioner, RayProvisioner)
    return km


def process(pid: int) -> psutil.Process:
    """The kernel's process, captured while it runs (its create time guards against pid reuse)."""
    proc = psutil.Process(pid)
    assert proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    return proc


def gone(proc: psutil.Process) -> bool:
    try:
        return not proc.is_running() or proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return True


def execute(km: KernelManager, code: str) -> tuple[dict, str]:
    """Run a cell through a BlockingKernelClient; its reply content and its stdout."""
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        out: list[str] = []

        def hook(msg):
            if msg["msg_type"] == "stream":
                out.append(msg["content"]["text"])

        reply = kc.execute_interactive(code, timeout=60, output_hook=hook)
        return reply["content"], "".join(out)
    finally:
        kc.stop_channels()


def actor_exists(name: str) -> bool:
    """A live actor of that name (Ray no longer finds a dead actor by name)."""
    try:
        ray.get_actor(name, namespace=raycluster.NAMESPACE)
    except ValueError:
        return False
    return True


# -- placement, code, usage -----------------------------------------------------------------

def test_kernel_runs_on_the_node_its_resources_choose_and_reports_usage(cluster):
    km = start(cluster, resources={"CPU": 1, "node_b": 1})
    prov = km.provisioner
    try:
        assert prov.node["node_id"] == cluster.node_id("node_b")
        assert prov.host == "127.0.0.1"
        kernel = process(prov.pid)
        assert kernel.ppid() == prov.node["actor_pid"]  # started by its actor, on its node

        # the connection file is on the controller only, private, and names the node's ports
        info = json.loads(Path(km.connection_file).read_text())
        assert stat.S_IMODE(os.stat(km.connection_file).st_mode) == 0o600
        assert info["ip"] == "127.0.0.1" and info["key"] == km.session.key.decode()
        assert {info[p] for p in ("shell_port", "iopub_port", "hb_port")} <= {
            c.laddr.port for c in kernel.net_connections("tcp") if c.status == "LISTEN"}

        reply, out = execute(km, "import os; print(os.getpid())")
        assert reply["status"] == "ok" and int(out) == prov.pid

        before = run(prov.usage())
        assert before["alive"] and before["rss"] > 20 * 2**20
        execute(km, "sum(i * i for i in range(3_000_000))")
        after = run(prov.usage())
        assert after["cpu_seconds"] > before["cpu_seconds"]
    finally:
        km.shutdown_kernel()
    assert gone(kernel)
    assert not km.has_kernel
    # the actor is ended and its resources are back
    wait_until(lambda: ray.available_resources().get("node_b") == 8, timeout=30)


def test_resources_that_no_node_has_fail_at_once(cluster):
    spec = KernelSpec(**raycluster.ray_kernel_json(cluster.address,
                                                   resources={"CPU": 1, "tpu_pod": 1}))
    km = KernelManager(kernel_name="ray-test", kernel_spec_manager=raycluster.SpecManager(spec))
    with pytest.raises(ResourcesUnavailable) as err:
        km.start_kernel()
    message = str(err.value)
    assert "tpu_pod" in message and cluster.node_id("node_a")[:12] in message
    assert "ray start" in message


def test_resources_held_by_other_kernels_are_waited_for_up_to_launch_timeout(cluster):
    holder = start(cluster, resources={"CPU": 1, "node_a": 8})  # all of node_a's label
    try:
        spec = KernelSpec(**raycluster.ray_kernel_json(
            cluster.address, resources={"CPU": 1, "node_a": 1}, launch_timeout=3))
        km = KernelManager(kernel_name="ray-test",
                           kernel_spec_manager=raycluster.SpecManager(spec))
        with pytest.raises(ResourcesUnavailable) as err:
            km.start_kernel()
        assert "after 3 s" in str(err.value) and "node_a" in str(err.value)
    finally:
        holder.shutdown_kernel(now=True)
    # the waiting actor was removed: the label is whole again once the holder is gone
    wait_until(lambda: ray.available_resources().get("node_a") == 8, timeout=30)


def test_a_kernel_that_fails_to_start_says_why_with_its_output(cluster):
    spec = KernelSpec(**{**raycluster.ray_kernel_json(cluster.address),
                         "argv": ["python", "-c", "import sys; print('no kernel here'); "
                                  "sys.exit(3)", "{connection_file}"]})
    km = KernelManager(kernel_name="ray-test", kernel_spec_manager=raycluster.SpecManager(spec))
    with pytest.raises(StartError) as err:
        km.start_kernel()
    assert "exited with code 3" in str(err.value) and "no kernel here" in str(err.value)


# -- the kernel dies with its actor, the actor with its owner --------------------------------

def test_sigkill_of_the_actor_leaves_no_kernel(cluster):
    km = start(cluster, resources={"CPU": 1}, node_id=cluster.node_id("node_a"))
    prov = km.provisioner
    assert prov.node["node_id"] == cluster.node_id("node_a")
    kernel = process(prov.pid)
    os.kill(prov.node["actor_pid"], signal.SIGKILL)
    wait_until(lambda: gone(kernel), timeout=30)
    wait_until(lambda: not km.is_alive(), timeout=30)
    assert run(prov.poll()) == -signal.SIGKILL
    assert prov.lost_reason
    km.shutdown_kernel(now=True)  # a lost kernel still shuts down cleanly
    assert not km.has_kernel


def test_a_removed_node_takes_its_kernels_with_it(cluster):
    node = cluster.add_node("node_c")
    kms = [start(cluster, resources={"CPU": 1, "node_c": 1}) for _ in range(2)]
    kernels = [process(km.provisioner.pid) for km in kms]
    assert {km.provisioner.node["node_id"] for km in kms} == {node.node_id}
    cluster.cluster.remove_node(node, allow_graceful=False)
    for kernel in kernels:
        wait_until(lambda: gone(kernel), timeout=60)
    for km in kms:
        wait_until(lambda: not km.is_alive(), timeout=60)
        assert km.provisioner.lost_reason
        km.shutdown_kernel(now=True)


DRIVER = textwrap.dedent("""
    import json, sys, time
    sys.path.insert(0, {tests!r})
    import raycluster
    from jupyter_client.kernelspec import KernelSpec
    from jupyter_client.manager import KernelManager
    spec = KernelSpec(**raycluster.ray_kernel_json({address!r},
                                                   resources={{"CPU": 1, "node_a": 1}}))
    km = KernelManager(kernel_name="ray-test", kernel_spec_manager=raycluster.SpecManager(spec),
                       connection_file={connection_file!r})  # its litter stays in the test's tmp
    km.start_kernel()
    print("started", json.dumps({{**km.provisioner.node, "actor": km.provisioner.actor_name}}),
          flush=True)
    time.sleep(600)
""")


def test_kill_9_of_the_controller_leaves_no_kernel(cluster, tmp_path):
    driver = subprocess.Popen(
        [sys.executable, "-c", DRIVER.format(tests=str(TESTS), address=cluster.address,
                                             connection_file=str(tmp_path / "kernel.json"))],
        stdout=subprocess.PIPE, text=True)
    try:
        # Ray may print the cluster's news to a driver first (the node an earlier test
        # removed being marked dead): only the driver's own line counts
        line = next((x for x in driver.stdout if x.startswith("started ")), "")
        assert line, "the driver exited before its kernel started"
        started = json.loads(line.removeprefix("started "))
        kernel = process(started["pid"])
        assert started["node_id"] == cluster.node_id("node_a")
        driver.send_signal(signal.SIGKILL)
        driver.wait(10)
        wait_until(lambda: gone(kernel), timeout=60)
        wait_until(lambda: not actor_exists(started["actor"]), timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


# -- reattach, interrupt, the plain-kernelspec path ------------------------------------------

def test_a_new_kernel_manager_reattaches_through_provisioner_info(cluster):
    first = start(cluster, resources={"CPU": 1, "node_a": 1})
    kernel = process(first.provisioner.pid)
    execute(first, "state = 41")
    info = run(first.provisioner.get_provisioner_info())
    assert info["ray"]["actor"] and info["ray"]["namespace"] == raycluster.NAMESPACE

    second = KernelManager(kernel_name="ray-test", kernel_spec_manager=first.kernel_spec_manager)
    second.provisioner = KernelProvisionerFactory.instance().create_provisioner_instance(
        info["kernel_id"], second.kernel_spec, parent=second)
    run(second.provisioner.load_provisioner_info(info))
    second.load_connection_info(info["connection_info"])
    assert second.is_alive()
    assert second.provisioner.node["node_id"] == cluster.node_id("node_a")
    reply, out = execute(second, "print(state + 1)")
    assert out.strip() == "42"
    second.shutdown_kernel()
    assert gone(kernel)
    assert not first.is_alive()  # the old manager sees it gone too (its actor is)


def test_a_kernelspec_naming_the_provisioner_runs_a_notebook_kernel_on_the_cluster(
        cluster, tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "python3-ray"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps(raycluster.ray_kernel_json(
        cluster.address, resources={"CPU": 1, "node_b": 1})))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))

    km = KernelManager(kernel_name="python3-ray")
    assert km.kernel_spec.metadata["kernel_provisioner"]["provisioner_name"] == \
        "kernelpit-ray-provisioner"
    km.start_kernel()
    kernel = process(km.provisioner.pid)
    assert km.provisioner.node["node_id"] == cluster.node_id("node_b")
    kc = km.client()
    kc.start_channels()
    try:
        kc.wait_for_ready(timeout=60)
        msg_id = kc.execute("import time; print('sleeping', flush=True); time.sleep(120)")
        # wait until the cell's own code runs: a SIGINT in the moment between execute_input
        # and the cell starting is swallowed by ipykernel ("KeyboardInterrupt caught in
        # kernel") and the request never gets a reply, with local kernels too
        while True:
            msg = kc.get_iopub_msg(timeout=30)
            if (msg["parent_header"].get("msg_id") == msg_id and msg["msg_type"] == "stream"
                    and "sleeping" in msg["content"]["text"]):
                break
        km.interrupt_kernel()
        reply = kc.get_shell_msg(timeout=30)
        assert reply["parent_header"]["msg_id"] == msg_id
        assert reply["content"]["status"] == "error"
        assert reply["content"]["ename"] == "KeyboardInterrupt"
        # the kernel survived its interrupt (ipykernel aborts requests that arrive just after
        # an error, stop_on_error: those come back "aborted", and the next one runs)
        statuses = []
        while not statuses or statuses[-1] == "aborted" and len(statuses) < 20:
            statuses.append(kc.execute_interactive("1 + 1", timeout=30)["content"]["status"])
        assert statuses[-1] == "ok", statuses
    finally:
        kc.stop_channels()
        km.shutdown_kernel()
    assert gone(kernel)


# -- without a cluster ------------------------------------------------------------------------

def test_an_unreachable_cluster_is_named_with_how_to_start_one(tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens here once closed
    address = f"127.0.0.1:{port}"
    script = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(TESTS)!r})
        import raycluster
        from jupyter_client.kernelspec import KernelSpec
        from jupyter_client.manager import KernelManager
        spec = KernelSpec(**raycluster.ray_kernel_json({address!r}))
        km = KernelManager(kernel_name="x", kernel_spec_manager=raycluster.SpecManager(spec))
        km.start_kernel()
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode != 0
    last = done.stderr.strip().splitlines()[-1]
    assert "RayUnavailable" in last and address in last and "ray start --head" in last


def test_the_kernel_process_dies_with_the_process_that_started_it():
    """PR_SET_PDEATHSIG, without Ray: a kill -9 of the starting process ends its kernel.

    The starting thread blocks SIGINT, as a Ray worker's threads do; the kernel must not
    inherit that, or it could never be interrupted.
    """
    script = textwrap.dedent("""
        import concurrent.futures, signal, sys, time
        from kernelpit.provisioners.host import spawn_tied

        def spawn():
            signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
            return spawn_tied([sys.executable, "-c", "import time; time.sleep(600)"], {}, "/",
                              sys.stderr.buffer)

        forker = concurrent.futures.ThreadPoolExecutor(1)  # as the actor does: not the main thread
        child = forker.submit(spawn).result()
        print(child.pid, flush=True)
        time.sleep(600)
    """)
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        child = process(int(parent.stdout.readline()))
        assert os.getpgid(child.pid) == child.pid  # leads its own process group
        status = Path(f"/proc/{child.pid}/status").read_text()
        mask = next(ln for ln in status.splitlines() if ln.startswith("SigBlk")).split()[1]
        blocked = int(mask, 16)
        assert not blocked & (1 << (signal.SIGINT - 1))
        parent.send_signal(signal.SIGKILL)
        parent.wait(10)
        wait_until(lambda: gone(child), timeout=10)
    finally:
        if parent.poll() is None:
            parent.kill()
            parent.wait()
