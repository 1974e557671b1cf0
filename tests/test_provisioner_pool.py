"""``Pool(provisioner=...)``: any installed jupyter_client provisioner launches the workers
(one mechanism; ``placement="ray"`` is its shorthand), and Ray that cannot be reached
fails ``Pool()`` and ``kernelpit serve`` with the address and how to start Ray."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import psutil
import pytest

import kernelpit
from conftest import ADAPTERS
from kernelpit.config import PoolConfig, fork_supported
from kernelpit.exceptions import StartError

TESTS = Path(__file__).parent
ENTRY_POINTS = """[jupyter_client.kernel_provisioners]
kernelpit-test-provisioner = provisioner_plugin:TaggingProvisioner
"""


@pytest.fixture
def installed_provisioner(tmp_path, monkeypatch):
    """tests/provisioner_plugin.py registered as an installed distribution's entry point."""
    dist = tmp_path / "kernelpit_test_provisioner-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: kernelpit-test-provisioner\n"
                                   "Version: 0.1\n")
    (dist / "entry_points.txt").write_text(ENTRY_POINTS)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.syspath_prepend(str(TESTS))
    return "kernelpit-test-provisioner"


def test_a_pool_launches_its_workers_through_a_named_provisioner(installed_provisioner,
                                                                monkeypatch):
    # a provisioner's pool always execs: its provisioner starts the kernel, never the zygote,
    # even where KERNELPIT_SPAWN=fork makes forking every other pool's default
    monkeypatch.setenv("KERNELPIT_SPAWN", "fork")
    with kernelpit.Pool(adapters=["kp_ray"], workers=1, path=[ADAPTERS],
                        provisioner=installed_provisioner,
                        provisioner_config={"tag": "from-the-config"}) as pool:
        assert pool.call("env", name="KP_PROVISIONER_TAG") == "from-the-config"
        (worker,) = pool.workers()
        assert worker.node is None  # a local provisioner's workers are local
        # started by the provisioner itself (a child of this process), not forked by a zygote
        assert psutil.Process(worker.pid).ppid() == os.getpid()
        assert pool.call("where")["channel"] == "unix"


def test_an_unknown_provisioner_is_named_with_the_installed_ones():
    with pytest.raises(StartError) as err:
        kernelpit.Pool(adapters=["kp_ray"], workers=1, path=[ADAPTERS],
                       provisioner="no-such-provisioner")
    assert "no-such-provisioner" in str(err.value)
    assert "kernelpit-ray-provisioner" in str(err.value)  # among the installed ones


def test_placement_settings_are_checked():
    assert PoolConfig(placement="ray").provisioner == "kernelpit-ray-provisioner"
    assert PoolConfig(provisioner="kernelpit-ray-provisioner").placement == "ray"
    with pytest.raises(ValueError, match="placement must be one of"):
        PoolConfig(placement="k8s")
    with pytest.raises(ValueError, match="need placement='ray'"):
        PoolConfig(resources={"CPU": 1})
    with pytest.raises(ValueError, match="resources must map"):
        PoolConfig(placement="ray", resources={"CPU": "one"})
    with pytest.raises(ValueError, match="not both"):
        PoolConfig(placement="ray", provisioner="other")


@pytest.mark.parametrize("settings", [{"placement": "ray"}, {"provisioner": "anything"}])
def test_a_pool_with_a_provisioner_never_forks(settings, monkeypatch):
    """Issue 16: Ray-placed pools (and any provisioner's) exec, whatever asks for fork."""
    monkeypatch.setenv("KERNELPIT_SPAWN", "fork")
    assert PoolConfig().forks == fork_supported()  # the environment does ask for fork
    for spawn in ({}, {"spawn": "fork"}):
        config = PoolConfig(**settings, **spawn)
        assert (config.spawn, config.forks) == ("exec", False)


def test_ray_that_cannot_be_reached_fails_pool_and_serve_with_the_address(tmp_path):
    pytest.importorskip("ray", reason="Ray is not installed: pip install -e '.[ray]'")
    env = {**__import__("os").environ, "RAY_ADDRESS": "", "JUPYTER_RUNTIME_DIR": str(tmp_path)}
    code = ("import kernelpit\n"
            "kernelpit.Pool(adapters=['kp_ray'], workers=1, path=[%r], placement='ray', "
            "ray_address='127.0.0.1:9')\n" % ADAPTERS)
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=120, env=env)
    assert run.returncode != 0
    assert "RayUnavailable" in run.stderr and "127.0.0.1:9" in run.stderr
    assert "ray start --head" in run.stderr

    serve = subprocess.run([sys.executable, "-m", "kernelpit", "serve", "--adapter", "kp_ray",
                            "--path", ADAPTERS, "--placement", "ray", "--ray-address",
                            "127.0.0.1:9", "--resources", '{"CPU": 1}', "--no-discovery"],
                           capture_output=True, text=True, timeout=120, env=env)
    assert serve.returncode != 0
    assert "127.0.0.1:9" in serve.stderr and "ray start --head" in serve.stderr


def test_a_workers_node_and_host_cross_the_grpc_contract():
    from kernelpit.contract.convert import worker_from_proto, worker_to_proto
    from kernelpit.info import WorkerInfo

    placed = WorkerInfo(id=3, pool="gpu", state="idle", pid=77, node="ab" * 28, host="10.0.0.5")
    assert worker_from_proto(worker_to_proto(placed)) == placed
    local = WorkerInfo(id=4, pool="default", state="idle", pid=78)
    back = worker_from_proto(worker_to_proto(local))
    assert (back.node, back.host) == (None, None) and back == local
