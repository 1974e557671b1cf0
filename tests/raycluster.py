"""A real local multi-node Ray cluster for the tests, and kernels placed on it.

One head and two worker nodes (``node_a``, ``node_b``: custom resources of their
own), every node on 127.0.0.1 with a small object store, in a private temp dir
so that nothing is shared with another Ray on this machine.  The cluster's
processes are children of the test process; :func:`running_ray_processes`
finds any left behind.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from dataclasses import dataclass, field
from typing import Any

import psutil
from jupyter_client.kernelspec import KernelSpec, KernelSpecManager

OBJECT_STORE = 80 * 2**20
NODE_CPUS = 2
RAY_ENV = {"RAY_USAGE_STATS_ENABLED": "0", "RAY_DISABLE_DOCKER_CPU_WARNING": "1",
           # Ray turns "127.0.0.1" into this machine's outward address when it connects
           # (resolve_ip_for_localhost); this keeps every Ray address, drivers' too, on loopback
           "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           # a raylet waits for its node's agent (a Python process) this long before it gives
           # up; on a loaded 2-core machine that start can take well over Ray's 30 s default
           "RAY_agent_register_timeout_ms": "180000", "RAY_raylet_start_wait_time_s": "180",
           # a removed node is declared dead after ~3 s instead of ~15 s
           "RAY_health_check_period_ms": "1000", "RAY_health_check_timeout_ms": "1000",
           "RAY_health_check_failure_threshold": "3",
           # one Ray worker process at a time is plenty on a shared 2-core machine
           "RAY_num_prestart_python_workers": "0"}
NAMESPACE = "kernelpit-tests"
os.environ.update(RAY_ENV)  # before anything imports ray: it reads some of them at import


@dataclass
class RayCluster:
    cluster: Any
    address: str
    temp_dir: str
    nodes: dict[str, Any] = field(default_factory=dict)  # name -> ray._private.node.Node

    def node_id(self, name: str) -> str:
        return self.nodes[name].node_id

    def add_node(self, name: str, cpus: int = NODE_CPUS,
                 resources: dict[str, float] | None = None) -> Any:
        node = self.cluster.add_node(num_cpus=cpus, resources={name: 8, **(resources or {})},
                                     node_ip_address="127.0.0.1",
                                     object_store_memory=OBJECT_STORE)
        self.cluster.wait_for_nodes()
        self.nodes[name] = node
        return node


def start_cluster(attempts: int = 2) -> RayCluster:
    """A head and two nodes; a start that fails (Ray's node start-up wait can run out on a
    busy 2-core machine) is cleaned up and tried once more."""
    for attempt in range(attempts):
        try:
            return _start_once()
        except Exception:
            if attempt == attempts - 1:
                raise


def _start_once() -> RayCluster:
    from ray.cluster_utils import Cluster

    temp_dir = tempfile.mkdtemp(prefix="kpray-", dir="/tmp")  # short: Ray puts sockets in it
    # RAY_TMPDIR keeps sessions, sockets and the "current cluster" file away from any other
    # Ray on this machine (and makes address="auto" in this process find this cluster)
    os.environ.update(RAY_ENV, RAY_TMPDIR=temp_dir)
    _hide_slow_import(os.path.join(temp_dir, "pyshim"))
    cluster = None
    try:
        cluster = Cluster(initialize_head=True, head_node_args={
            "num_cpus": 1, "node_ip_address": "127.0.0.1", "object_store_memory": OBJECT_STORE,
            "resources": {"head": 8}, "include_dashboard": False})
        made = RayCluster(cluster, cluster.address, temp_dir, {"head": cluster.head_node})
        made.add_node("node_a")
        made.add_node("node_b", resources={"worker": 8})  # "worker": what a spread pool asks for
        return made
    except BaseException:
        if cluster is not None:
            cluster.shutdown()
        _forget(temp_dir)
        raise


def stop_cluster(made: RayCluster) -> None:
    import ray

    if ray.is_initialized():
        ray.shutdown()  # this test process started it (through the provisioner): ours to end
    made.cluster.shutdown()
    # Ray's agents write port files and sockets into the directory until they are gone:
    # remove it after them, or it comes back (at most 30 s)
    psutil.wait_procs(running_ray_processes(), timeout=30)
    _forget(made.temp_dir)


def _forget(temp_dir: str) -> None:
    """Remove a cluster's directory and give this process its environment back."""
    shutil.rmtree(temp_dir, ignore_errors=True)
    for var in (*RAY_ENV, "RAY_TMPDIR"):
        os.environ.pop(var, None)
    if _SAVED_PYTHONPATH is None:
        os.environ.pop("PYTHONPATH", None)
    else:
        os.environ["PYTHONPATH"] = _SAVED_PYTHONPATH


_SAVED_PYTHONPATH = os.environ.get("PYTHONPATH")


def _hide_slow_import(shim: str) -> None:
    """Make ``import rfc3987_syntax`` fail in the cluster's processes (and in its kernels).

    jsonschema, which Ray imports at start-up (runtime_env schemas), imports
    rfc3987_syntax when it is installed (jupyterlab's test dependencies pull it in), and
    that compiles a Lark grammar at import: about 3.5 s of CPU in *every* Ray process,
    node agents and actor workers alike (``import ray``: 4.4 s here, 0.75 s without it).
    On a shared 2-core machine that starved the node agents past the raylet's fixed
    start-up wait and the cluster never came up.  Without the module jsonschema just
    skips the IRI format check, which nothing here uses.
    """
    os.makedirs(shim, exist_ok=True)
    with open(os.path.join(shim, "rfc3987_syntax.py"), "w") as f:
        f.write('raise ImportError("hidden from the test Ray cluster: see tests/raycluster.py")\n')
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [shim, _SAVED_PYTHONPATH]))


def running_ray_processes() -> list[psutil.Process]:
    """Ray's processes (gcs_server, raylets, agents, workers "ray::...") started under this
    test process; other children (a JupyterLab, a database of another session fixture) are
    not counted."""
    found = []
    for proc in psutil.Process().children(recursive=True):
        try:
            text = " ".join(proc.cmdline())
            if proc.status() != psutil.STATUS_ZOMBIE and any(
                    mark in text for mark in ("raylet", "gcs_server", "ray::", "/ray/")):
                found.append(proc)
        except psutil.Error:
            continue
    return found


class SpecManager(KernelSpecManager):
    """Knows exactly one kernelspec: a plain ipykernel placed by the Ray provisioner."""

    def __init__(self, spec: KernelSpec, **kw: Any) -> None:
        super().__init__(**kw)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str, *args: Any, **kw: Any) -> KernelSpec:
        return self._spec


def ray_kernel_json(address: str, **config: Any) -> dict[str, Any]:
    """kernel.json of a plain Python kernel that the Ray provisioner places per ``config``."""
    return {"argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
            "display_name": "Python 3 (Ray)", "language": "python", "interrupt_mode": "signal",
            "metadata": {"kernel_provisioner": {
                "provisioner_name": "kernelpit-ray-provisioner",
                "config": {"ray_address": address, "namespace": NAMESPACE, **config}}}}
