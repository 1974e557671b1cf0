"""Launching worker kernels through jupyter_client.

A worker is an ordinary ipykernel started by ``AsyncKernelManager`` and its
(local) provisioner; the only difference from a notebook kernel is the
module it runs: ``python -m kernelpit.kernels`` starts the same IPKernelApp
plus the Kernelpit agent.  A named kernelspec is accepted when its argv
launches ipykernel; its ``-m ipykernel_launcher`` is swapped for ours.
"""

from __future__ import annotations

import hashlib
import os
import sys
from pathlib import Path
from typing import IO, TYPE_CHECKING

from jupyter_client.kernelspec import KernelSpec, KernelSpecManager, NoSuchKernel
from jupyter_client.manager import AsyncKernelManager

from ..config import PoolConfig
from ..exceptions import StartError
from .registry import controller_identity, default_path as registry_path

if TYPE_CHECKING:
    from .placement import Placement

AGENT_MODULE = "kernelpit.kernels"
THREAD_LIMIT_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
                     "NUMEXPR_NUM_THREADS", "VECLIB_MAXIMUM_THREADS")


class _OneSpec(KernelSpecManager):
    """A kernelspec manager that knows exactly one spec: the worker's."""

    def __init__(self, spec: KernelSpec, **kw: object) -> None:
        super().__init__(**kw)
        self._spec = spec

    def get_kernel_spec(self, kernel_name: str, *args: object, **kw: object) -> KernelSpec:
        return self._spec


def worker_spec(config: PoolConfig, run_dir: Path,
                placement: "Placement | None" = None) -> KernelSpec:
    """The kernelspec a pool's workers are launched with: with a provisioner (Ray placement),
    its ``kernel_provisioner`` metadata and the TCP channel's settings in its env; with
    ``spawn="fork"``, the fork provisioner's (a provisioner's pool never forks)."""
    env: dict[str, str] = {}
    if config.kernelspec:
        try:
            base = KernelSpecManager().get_kernel_spec(config.kernelspec)
        except NoSuchKernel:
            names = ", ".join(sorted(KernelSpecManager().find_kernel_specs())) or "none"
            raise StartError(f"pool '{config.name}': no kernelspec named '{config.kernelspec}' "
                             f"(installed: {names}); see `jupyter kernelspec list`") from None
        argv = list(base.argv)
        for i, arg in enumerate(argv[:-1]):
            if arg == "-m" and argv[i + 1] in ("ipykernel_launcher", "ipykernel"):
                argv[i + 1] = AGENT_MODULE
                break
        else:
            raise StartError(f"pool '{config.name}': kernelspec '{config.kernelspec}' does not "
                             f"launch ipykernel (argv: {base.argv}); Kernelpit workers are ipykernels")
        env = dict(base.env or {})
    else:
        python = config.python or sys.executable
        argv = [python, "-m", AGENT_MODULE, "-f", "{connection_file}"]
    # Workers keep no IPython history on disk: it costs start time, and many kernels sharing
    # ~/.ipython's history.sqlite contend for its lock.
    argv.append("--HistoryManager.hist_file=:memory:")
    metadata = fork_metadata(config, run_dir) if config.forks else {}
    if placement is not None and config.provisioner:
        metadata = {"kernel_provisioner": placement.kernel_provisioner(config)}
        env.update(placement.env(config))
    return KernelSpec(argv=argv, env=env, display_name=f"Kernelpit worker ({config.name})",
                      language="python", interrupt_mode="signal", metadata=metadata)


# -- spawn="fork": the same launch, through the fork provisioner (provisioners/fork.py) ----------

def zygote_socket(spec: KernelSpec) -> str | None:
    """The zygote socket of a pool whose workers are forked; None when they are exec'd."""
    stanza = (spec.metadata or {}).get("kernel_provisioner", {})
    if stanza.get("provisioner_name") == "kernelpit-fork-provisioner":
        return stanza["config"]["zygote"]
    return None


def fork_metadata(config: PoolConfig, run_dir: Path) -> dict[str, object]:
    name = hashlib.sha1(config.name.encode()).hexdigest()[:10]
    return {"kernel_provisioner": {"provisioner_name": "kernelpit-fork-provisioner",
                                   "config": {"zygote": str(run_dir / f"zygote-{name}.sock")}}}


async def prestart(config: PoolConfig, run_dir: Path, run_id: str) -> KernelSpec | None:
    """Start the zygote of a pool whose workers fork (``PoolConfig.forks``) now, before the
    rest of the pool's start: its preload is the longest part of a start, and the reaper's
    scan, the channel and the workers' managers can run on the other core meanwhile.  The
    first launch finds it ready or waits for it (``Zygotes.ready``).  Returns the spec whose
    zygote was started (for :func:`release`), None for a pool that does not fork.

    The zygote gets the pool's environment, not a worker's: no worker id, no channel (a
    child gets its own full environment with each fork).  A zygote that fails to start is
    left to the first launch, which starts it again and reports why."""
    if not config.forks:
        return None
    spec = worker_spec(config, run_dir)
    path = zygote_socket(spec)
    if path is None:
        return None
    from ..provisioners.fork import zygotes
    env = worker_env(config, 0, "", run_id)
    del env["KERNELPIT_ENDPOINT"]
    try:
        await zygotes.ready(path, env, config.cwd, list(spec.argv))
    except Exception:  # noqa: BLE001 - the first launch tries again and reports it
        pass
    return spec


async def reload_code(spec: KernelSpec) -> None:
    """The next worker launched runs the adapters' code as it is on disk now."""
    path = zygote_socket(spec)
    if path is not None:
        from ..provisioners.fork import zygotes
        zygotes.rebuild(path)


async def release(spec: KernelSpec) -> None:
    """The pool closed: end its zygote (after its workers)."""
    path = zygote_socket(spec)
    if path is not None:
        from ..provisioners.fork import zygotes
        await zygotes.close(path)


def worker_env(config: PoolConfig, worker_id: int, endpoint: str, run_id: str) -> dict[str, str]:
    env = dict(os.environ)
    if config.thread_limits:
        for var in THREAD_LIMIT_VARS:
            env.setdefault(var, "1")
    # one malloc arena: the heap whose freed memory a worker keeps for its next call, and
    # gives back when idle (kernels/heap.py); a thread's own arena would unmap it at once
    env.setdefault("MALLOC_ARENA_MAX", "1")
    paths = [*config.path, os.getcwd()]
    if env.get("PYTHONPATH"):
        paths.append(env["PYTHONPATH"])
    env.update(config.env)
    env.update({
        "PYTHONPATH": os.pathsep.join(paths),
        "KERNELPIT_ENDPOINT": endpoint,
        "KERNELPIT_WORKER": str(worker_id),
        "KERNELPIT_ADAPTERS": ",".join(config.adapters),
        "KERNELPIT_CONCURRENCY": str(config.concurrency),
        "KERNELPIT_RUN_ID": run_id,
        "KERNELPIT_POOL": config.name,
    })
    # -- orphan-proof process management (registry.py, reaper.py, kernels/lifeline.py) --
    controller_pid, controller_start = controller_identity()
    env.update({"KERNELPIT_CONTROLLER_PID": str(controller_pid),
                "KERNELPIT_CONTROLLER_START": repr(controller_start),
                "KERNELPIT_REGISTRY": str(registry_path())})
    return env


# A unix socket path must fit in sockaddr_un.sun_path (108 bytes on Linux, 104 on macOS).
_MAX_IPC_PATH = 100


def channel_addresses(socket_prefix: str) -> dict[str, str]:
    """How a worker kernel's own channels (shell, iopub, stdin, control, heartbeat) listen.

    On ``ipc://`` sockets under ``socket_prefix`` (in the run's private directory) when the
    platform has them and the path fits: no TCP port is chosen, so nothing else on the
    machine can take a kernel's port between jupyter_client picking it and the kernel
    binding it (a race that made one of 8 kernels starting together fail with "Address
    already in use" while other services opened ports).  Otherwise loopback TCP.
    """
    if os.name == "posix" and len(socket_prefix) + 8 <= _MAX_IPC_PATH:
        return {"transport": "ipc", "ip": socket_prefix}
    return {"transport": "tcp", "ip": "127.0.0.1"}


def channel_url(info: dict[str, object], channel: str) -> str:
    """The ZMQ address of one of a kernel's channels, from its connection info."""
    port = info[f"{channel}_port"]
    if info["transport"] == "tcp":
        return f"tcp://{info['ip']}:{port}"
    return f"{info['transport']}://{info['ip']}-{port}"


async def launch(spec: KernelSpec, env: dict[str, str], cwd: str | None, log: IO[bytes],
                 connection_file: str, socket_prefix: str,
                 remote: bool = False) -> AsyncKernelManager:
    """Start one kernel process; returns its manager (readiness is the caller's business).

    ``remote``: the spec's provisioner places it off this machine, so its channels are TCP
    (the provisioner sets the address; the kernel binds the ports on its node)."""
    km = AsyncKernelManager(kernel_name="kernelpit-worker", kernel_spec_manager=_OneSpec(spec),
                            connection_file=connection_file,
                            **({"transport": "tcp", "ip": "127.0.0.1"} if remote
                               else channel_addresses(socket_prefix)))
    km.shutdown_wait_time = 1.0
    await km.start_kernel(env=env, cwd=cwd or os.getcwd(), stdout=log, stderr=log)
    return km
