"""Where a pool's workers run: this machine, or wherever a kernel provisioner puts them.

A :class:`~kernelpit.config.PoolConfig` names a jupyter_client kernel provisioner
(``provisioner="name"``, ``provisioner_config={...}``); ``placement="ray"`` is the
same thing for ``kernelpit-ray-provisioner`` with the pool's ``resources``.  A
provisioner that is a ``LocalProvisioner`` starts processes on this machine: its
workers are local (pid, Unix socket, shared memory).  Any other places kernels
elsewhere: its workers get the signed TCP channel as well, and choose on their node
(``kernelpit.kernels.placement``).

:class:`Placement` is one run's side of it: the Ray session (joined once per process,
never shut down here), the controller's Ray node id, and the TCP listener.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import Any

from ..config import RAY_PROVISIONER, PoolConfig
from ..exceptions import StartError

DEFAULT_NAMESPACE = "kernelpit"


GROUP = "jupyter_client.kernel_provisioners"


def provisioner_class(config: PoolConfig) -> type | None:
    """The provisioner class a pool names (None: jupyter_client's local default)."""
    if not config.provisioner:
        return None
    from importlib.metadata import entry_points

    found = entry_points(group=GROUP, name=config.provisioner)
    if not found:
        names = ", ".join(sorted({ep.name for ep in entry_points(group=GROUP)})) or "none"
        raise StartError(f"pool '{config.name}': no kernel provisioner named "
                         f"'{config.provisioner}' is installed (installed: {names}); a "
                         f"provisioner registers under the '{GROUP}' entry point group")
    return next(iter(found)).load()


def is_remote(config: PoolConfig) -> bool:
    """True when the pool's provisioner may place kernels off this machine."""
    cls = provisioner_class(config)
    if cls is None:
        return False
    from jupyter_client.provisioning.local_provisioner import LocalProvisioner

    return not issubclass(cls, LocalProvisioner)


@dataclass
class Placement:
    """One run's placement facts, made by :meth:`prepare` before any worker starts."""

    ray_address: str | None = None     # as given (process-wide); None: "auto"
    namespace: str = DEFAULT_NAMESPACE
    controller_node: str | None = None  # this process's Ray node id (hex), when Ray is joined
    controller_host: str = "127.0.0.1"  # the address workers on other nodes dial
    tcp_endpoint: str | None = None
    key: bytes | None = None
    shm_dir: str | None = None  # offered to remote kernels; only those on this node keep it

    @classmethod
    async def prepare(cls, configs: list[PoolConfig], ray_address: str | None,
                      channel: Any, shm_dir: str | None = None) -> "Placement":
        """Join Ray when a pool is Ray-placed (fails with RayUnavailable, naming the address
        and how to start Ray), and open the signed TCP listener when any pool is remote."""
        placement = cls(ray_address=ray_address, shm_dir=shm_dir)
        if any(c.provisioner == RAY_PROVISIONER for c in configs):
            from ..provisioners import cluster

            namespace = next((c.provisioner_config.get("namespace") for c in configs
                              if c.provisioner == RAY_PROVISIONER
                              and c.provisioner_config.get("namespace")), DEFAULT_NAMESPACE)
            ray = await asyncio.to_thread(cluster.connect, ray_address or cluster.DEFAULT_ADDRESS,
                                          namespace)
            placement.namespace = namespace
            placement.controller_node = ray.get_runtime_context().get_node_id()
            placement.controller_host = ray.util.get_node_ip_address()
        if any(is_remote(c) for c in configs):
            placement.tcp_endpoint = await channel.listen_tcp(placement.controller_host)
            placement.key = channel.key
        return placement

    def kernel_provisioner(self, config: PoolConfig) -> dict[str, Any] | None:
        """The ``kernel_provisioner`` stanza of a pool's kernelspec metadata (None: local)."""
        if not config.provisioner:
            return None
        settings = dict(config.provisioner_config)
        if config.provisioner == RAY_PROVISIONER:
            settings.setdefault("resources", dict(config.resources))
            settings.setdefault("ray_address", self.ray_address or "auto")
            settings.setdefault("namespace", self.namespace)
            settings.setdefault("strategy", "SPREAD")
            settings.setdefault("launch_timeout", config.start_timeout)
        return {"provisioner_name": config.provisioner, "config": settings}

    def env(self, config: PoolConfig) -> dict[str, str]:
        """What a remote pool's kernels need to choose and reach their channel."""
        if self.tcp_endpoint is None or self.key is None or not is_remote(config):
            return {}
        env = {"KERNELPIT_TCP_ENDPOINT": self.tcp_endpoint,
               "KERNELPIT_CHANNEL_KEY": self.key.hex()}
        if self.controller_node:
            env["KERNELPIT_CONTROLLER_NODE"] = self.controller_node
        if self.shm_dir:  # results of kernels on this node (kernels/placement.py decides)
            env["KERNELPIT_SHM_DIR"] = self.shm_dir
        return env
