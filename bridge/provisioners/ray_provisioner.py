"""``kernelpit-ray-provisioner``: a jupyter_client kernel provisioner that places kernels on Ray.

Each kernel gets its own Ray actor (:class:`~.host.KernelHost`) on a node chosen
by resources (or pinned by node id).  The actor starts the kernel there with TCP
ports on that node's address and answers for it; this provisioner, in the
controller's process, only talks to the actor.  A kernelspec selects it with::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "kernelpit-ray-provisioner",
        "config": {"resources": {"CPU": 1, "my_label": 1}, "ray_address": "auto"}}}

What dies with what: the kernel with its actor (``PR_SET_PDEATHSIG``, see
:mod:`.host`), the actor with this process (a non-detached actor is owned by the
process that created it), and both with their node.
"""

from __future__ import annotations

import asyncio
import os
import secrets
import signal
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.provisioner_base import KernelProvisionerBase
from traitlets import Dict, Float, Unicode

from ..exceptions import StartError
from . import cluster
from .cluster import ResourcesUnavailable
from .host import KernelHost

WAIT_POLL = 0.1  # seconds between polls while waiting for the kernel to exit (as LocalProvisioner)
_actor_class: Any = None


def host_actor_class() -> Any:
    """``KernelHost`` as a Ray actor class (made once per process)."""
    global _actor_class
    if _actor_class is None:
        _actor_class = cluster.ray_module().remote(KernelHost)
    return _actor_class


class RayProvisioner(KernelProvisionerBase):  # type: ignore[misc]
    """Starts each kernel in its own Ray actor on a node of a Ray cluster."""

    resources = Dict({"CPU": 1}, config=True,
                     help="Ray resources per kernel: CPU (default 1), GPU, memory (bytes) and "
                          "custom node resources, e.g. {'CPU': 1, 'my_label': 1}.")
    node_id = Unicode(None, allow_none=True, config=True,
                      help="Put the kernel on this Ray node (hex id) or fail.")
    ray_address = Unicode(cluster.DEFAULT_ADDRESS, config=True,
                          help="Cluster to join when Ray is not initialized yet: 'auto' or "
                               "'host:port' of the head.")
    namespace = Unicode(cluster.DEFAULT_NAMESPACE, config=True,
                        help="Ray namespace of the kernels' actors.")
    strategy = Unicode("DEFAULT", config=True,
                       help="Ray scheduling strategy when no node_id is given: 'DEFAULT', or "
                            "'SPREAD' over the nodes that have the resources (what pools use).")
    launch_timeout = Float(60.0, config=True,
                           help="Seconds to wait for a node with free resources and for the "
                                "kernel to bind its ports.")

    #: the actor's name, once launched (or loaded); None before and after
    actor_name: str | None = None
    #: where the kernel runs: node_id (hex), host (address), hostname, pid, pgid, actor_pid
    node: dict[str, Any] = {}
    #: why the actor is gone, when it died under the kernel (node lost, actor killed)
    lost_reason: str | None = None
    _handle: Any = None
    _exit_code: int | None = None
    _waited = False

    # -- where the kernel runs -----------------------------------------------------------
    @property
    def has_process(self) -> bool:
        """True from launch (or load) until :meth:`wait` has seen the kernel end."""
        return self.actor_name is not None and not self._waited

    @property
    def pid(self) -> int | None:
        """The kernel's pid *on its node* (not a local process: never signal it from here)."""
        return self.node.get("pid")

    @property
    def host(self) -> str | None:
        return self.node.get("host")

    # -- start -----------------------------------------------------------------------------
    async def pre_launch(self, **kwargs: Any) -> dict[str, Any]:
        """Build the kernel's command and environment; no port is chosen here.

        The command is the kernelspec's argv with ``{connection_file}`` left for the
        node to fill.  Of the environment, only what differs from this process's own
        (the kernelspec's ``env`` and whatever the caller passed) crosses to the node;
        the node's own environment is the base there, so PATH and friends fit that node.
        """
        extra = kwargs.pop("extra_arguments", [])
        kwargs = await super().pre_launch(**kwargs)
        env = kwargs["env"]
        kwargs["env"] = {k: v for k, v in env.items() if os.environ.get(k) != v}
        kwargs["cmd"] = list(self.kernel_spec.argv) + list(extra)
        return kwargs

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        """Create the host actor on a node with the resources, start the kernel, return its ports.

        The HMAC key is the kernel manager's session key, made here on the controller and
        handed to the actor.  Fails at once with :class:`ResourcesUnavailable` when no
        live node could ever hold the kernel, and after ``launch_timeout`` when none frees
        the resources; the actor is removed in both cases.
        """
        ray = cluster.connect(self.ray_address, self.namespace)
        cluster.check_feasible(ray, dict(self.resources), self.node_id)
        km = self.parent
        session = km.session if km is not None else None
        key = session.key.decode() if session is not None else secrets.token_hex(32)
        scheme = session.signature_scheme if session is not None else "hmac-sha256"
        name = f"kernelpit-kernel-{self.kernel_id}-{secrets.token_hex(3)}"
        handle = host_actor_class().options(
            name=name, namespace=self.namespace, lifetime=None, max_restarts=0,
            max_task_retries=0, max_concurrency=4,  # wait_exit stays pending beside the rest
            **cluster.actor_options(dict(self.resources), self.node_id, self.strategy),
        ).remote()
        self.actor_name, self._handle, self._exit_code, self._waited = name, handle, None, False
        self.lost_reason = None
        start = handle.start.remote(cmd, kwargs.get("env", {}), kwargs.get("cwd"),
                                    {"key": key, "signature_scheme": scheme,
                                     "kernel_name": getattr(km, "kernel_name", ""),
                                     "resource_dir": getattr(self.kernel_spec, "resource_dir", "")},
                                    self.launch_timeout)
        try:
            started = await asyncio.wait_for(asyncio.wrap_future(start.future()),
                                             self.launch_timeout + 5)
        except asyncio.TimeoutError:
            self._forget(ray)
            raise ResourcesUnavailable(
                f"kernel {self.kernel_id} was not running after {self.launch_timeout:g} s: no "
                f"Ray node freed the resources it asks for, "
                f"{cluster.requested(dict(self.resources))} (free now: "
                f"{cluster.free_resources(ray)}), or the node was too slow to start it; stop "
                f"other kernels, add nodes, or raise launch_timeout") from None
        except ray.exceptions.RayTaskError as exc:  # the kernel exited or never bound its ports
            self._forget(ray)
            raise StartError(f"kernel {self.kernel_id}: {exc.cause or exc}") from None
        except BaseException:
            self._forget(ray)
            raise
        self.node = {k: v for k, v in started.items() if k != "connection"}
        self.connection_info = {**started["connection"], "key": key.encode(),
                                "signature_scheme": scheme,
                                "kernel_name": getattr(km, "kernel_name", "")}
        return self.connection_info

    # -- lifecycle, through the actor ------------------------------------------------------
    async def poll(self) -> int | None:
        """The kernel's exit code, or None while it runs; asks the actor.

        If the actor itself is gone (killed, its node lost), the kernel went with it:
        the code is ``-SIGKILL`` and :attr:`lost_reason` says what Ray reported.
        """
        if self._exit_code is not None or self.actor_name is None:
            return self._exit_code if self._exit_code is not None else 0
        code = await self._ask("poll")
        if code is not None:
            self._exit_code = code
        return self._exit_code

    async def exited(self) -> int:
        """Return when the kernel has ended: its exit code, or ``-SIGKILL`` with
        :attr:`lost_reason` set when its actor or its node is lost.  One actor call that
        stays pending (no polling); cancel it to stop watching."""
        if self._exit_code is None and self.actor_name is not None:
            code = await self._ask("wait_exit")
            if code is not None and self._exit_code is None:
                self._exit_code = code
        return self._exit_code if self._exit_code is not None else -signal.SIGKILL

    async def wait(self) -> int | None:
        """Wait until the kernel has ended (callers bound it with a timeout, as for local ones)."""
        while (code := await self.poll()) is None:
            await asyncio.sleep(WAIT_POLL)
        self._waited = True
        return code

    async def send_signal(self, signum: int) -> None:
        """Have the actor signal the kernel's process group on its node (SIGINT interrupts)."""
        if self._exit_code is None:
            await self._ask("signal", signum)

    async def kill(self, restart: bool = False) -> None:
        """SIGKILL to the kernel's process group, sent by the actor."""
        await self.send_signal(signal.SIGKILL)

    async def terminate(self, restart: bool = False) -> None:
        """SIGTERM to the kernel's process group, sent by the actor."""
        await self.send_signal(signal.SIGTERM)

    async def cleanup(self, restart: bool = False) -> None:
        """Have the actor kill and reap the kernel and delete its files, then end the actor.

        Ending the actor returns its resources to the cluster; on a restart the next
        :meth:`launch_kernel` makes a new one (possibly on another node).
        """
        if self.actor_name is None:
            return
        ray = cluster.ray_module()
        if self.lost_reason is None:  # a lost actor took its kernel and files with it
            code = await self._ask("cleanup")
            if self._exit_code is None and code is not None:
                self._exit_code = code
        self._forget(ray)

    async def shutdown_requested(self, restart: bool = False) -> None:
        """Nothing to prepare: the shutdown request travels to the kernel over ZMQ."""

    # -- what the node reports ---------------------------------------------------------------
    async def usage(self) -> dict[str, Any]:
        """RSS (bytes, kernel and children) and CPU of the kernel, sampled by the actor on its node.

        ``{"rss": int, "cpu_percent": float, "cpu_seconds": float, "alive": bool}``.
        """
        if self.actor_name is None or self.lost_reason is not None:
            return {"rss": 0, "cpu_percent": 0.0, "cpu_seconds": 0.0, "alive": False}
        return await self._ask("usage") or {"rss": 0, "cpu_percent": 0.0, "cpu_seconds": 0.0,
                                            "alive": False}

    async def log_tail(self) -> str:
        """The end of the kernel's stdout/stderr, kept on its node."""
        return await self._ask("log_tail") or ""

    # -- reattaching -------------------------------------------------------------------------
    async def get_provisioner_info(self) -> dict[str, Any]:
        """What a new kernel manager needs to take this kernel over: its actor and its node."""
        info = await super().get_provisioner_info()
        info["ray"] = {"actor": self.actor_name, "namespace": self.namespace,
                       "address": self.ray_address, "node": dict(self.node)}
        return info

    async def load_provisioner_info(self, provisioner_info: dict) -> None:
        """Take over a running kernel from :meth:`get_provisioner_info` of another manager.

        The actor is looked up by name in its namespace on first use; this process must
        be able to join the same cluster.
        """
        await super().load_provisioner_info(provisioner_info)
        ray_info = provisioner_info["ray"]
        self.actor_name, self.namespace = ray_info["actor"], ray_info["namespace"]
        self.ray_address = ray_info.get("address") or self.ray_address
        self.node = dict(ray_info.get("node") or {})
        self._handle, self._exit_code, self._waited, self.lost_reason = None, None, False, None

    def get_shutdown_wait_time(self, recommended: float = 5.0) -> float:
        return recommended

    def get_stable_start_time(self, recommended: float = 10.0) -> float:
        """A start includes placing an actor (a new Ray worker process) before the kernel's own."""
        return recommended + 10.0

    # -- helpers -----------------------------------------------------------------------------
    def _actor(self, ray: Any) -> Any:
        if self._handle is None:
            self._handle = ray.get_actor(self.actor_name, namespace=self.namespace)
        return self._handle

    async def _ask(self, method: str, *args: Any) -> Any:
        """Call one of the actor's methods; a dead actor marks the kernel dead (``-SIGKILL``)."""
        ray = cluster.connect(self.ray_address, self.namespace)
        try:
            ref = getattr(self._actor(ray), method).remote(*args)
            return await asyncio.wrap_future(ref.future())
        except (ray.exceptions.RayActorError, ValueError) as exc:  # ValueError: no such actor
            why = _reason(exc)
            if "node" not in why.lower():
                gone = await asyncio.to_thread(cluster.node_lost, ray, self.node.get("node_id"))
                if gone:
                    why = (f"node {self.node['node_id']} ({self.node.get('host')}) was lost: "
                           f"{gone}; {why}")
            self.lost_reason = why
            self._exit_code = -signal.SIGKILL
            self.log.warning("kernel %s: its Ray actor %s is gone: %s", self.kernel_id,
                             self.actor_name, self.lost_reason)
            return None

    def _forget(self, ray: Any) -> None:
        """End the actor (if still there) and drop the handle; its resources return to Ray."""
        handle, self._handle = self._handle, None
        if handle is not None:
            try:
                ray.kill(handle, no_restart=True)
            except Exception as exc:  # noqa: BLE001  (already gone)
                self.log.debug("killing actor %s: %s", self.actor_name, exc)
        self.actor_name = None


def _reason(exc: BaseException) -> str:
    """Ray's account of an actor's death in one line (node lost, killed, owner died...)."""
    text = str(exc).strip()
    for line in text.splitlines():
        if "node" in line.lower() and ("died" in line.lower() or "dead" in line.lower()
                                       or "removed" in line.lower()):
            return line.strip()
    return text.splitlines()[0] if text else type(exc).__name__
