"""Joining a Ray cluster and turning Kernelpit's resource requests into Ray placement.

One process joins one Ray cluster: if Ray is already initialized (by the user, a
notebook, or an earlier kernel) it is used as it is, whatever address it was
given; otherwise :func:`connect` calls ``ray.init(address=..., namespace=...)``.
Nothing here ever calls ``ray.shutdown()``: Ray sessions outlive kernels, and the
one a user started is theirs.  Actors are made non-detached, so Ray ends them when
this process (their owner) ends, by exit or by ``kill -9``.
"""

from __future__ import annotations

import socket
import threading
from typing import Any

from ..exceptions import StartError

DEFAULT_ADDRESS = "auto"
DEFAULT_NAMESPACE = "kernelpit"
PROBE_TIMEOUT = 5.0  # seconds to reach the head's GCS port before giving up
_init_lock = threading.Lock()


class RayUnavailable(StartError):
    """Ray is not installed, or its cluster cannot be reached; the message says what to do."""


class ResourcesUnavailable(StartError):
    """No node of the cluster has (or frees, in time) the resources a kernel asks for."""


def ray_module() -> Any:
    try:
        import ray
    except ImportError:
        raise RayUnavailable("Ray is not installed in this environment: "
                             "pip install 'kernelpit[ray]' (on the controller and on every "
                             "node of the cluster)") from None
    return ray


def connect(address: str | None = DEFAULT_ADDRESS, namespace: str = DEFAULT_NAMESPACE) -> Any:
    """The ``ray`` module, initialized: joins the cluster at ``address`` unless Ray already is.

    ``address`` is what ``ray.init`` takes: ``"auto"`` (the cluster started on this
    machine, or ``RAY_ADDRESS``), or ``"host:port"`` of the head's GCS.
    """
    ray = ray_module()
    with _init_lock:
        if ray.is_initialized():
            return ray
        try:
            _probe(ray, address or DEFAULT_ADDRESS)
            ray.init(address=address or DEFAULT_ADDRESS, namespace=namespace,
                     log_to_driver=False, configure_logging=False)
        except (ConnectionError, RuntimeError, TimeoutError, ValueError) as exc:
            why = str(exc).rstrip(".")
            raise RayUnavailable(
                f"could not join the Ray cluster at {address or DEFAULT_ADDRESS!r}: {why}. "
                f"Start one with `ray start --head` (then use 'auto' on that machine, or "
                f"'HEAD_IP:6379' elsewhere), or set ray_address to a running cluster's "
                f"address (`ray status` on the head prints it)") from exc
    return ray


def _probe(ray: Any, address: str) -> None:
    """Fail fast when nothing listens at the cluster's address.

    ``ray.init`` on an address where no GCS answers retries for minutes; a TCP connect
    to the resolved address (``auto`` resolved as Ray does it) fails in seconds.
    Ray Client addresses (``ray://``) are left to Ray.
    """
    if address.startswith("ray://"):
        return
    resolve = getattr(ray._private.services, "canonicalize_bootstrap_address_or_die", None)
    target = resolve(address) if resolve is not None else address
    host, _, port = target.rpartition(":")
    try:
        socket.create_connection((host.strip("[]"), int(port)), PROBE_TIMEOUT).close()
    except (OSError, ValueError) as exc:
        raise ConnectionError(f"nothing answers at {target} ({exc})") from None


def actor_options(resources: dict[str, float], node_id: str | None = None,
                  strategy: str = "DEFAULT") -> dict[str, Any]:
    """``Actor.options(...)`` for a kernel asking for ``resources`` (and, optionally, a node).

    ``CPU`` (default 1), ``GPU`` and ``memory`` (bytes) map to Ray's own arguments; any
    other key is a custom resource (a node label such as ``{"my_label": 1}``).  With
    ``node_id`` the kernel goes on that node or nowhere; else ``strategy`` is Ray's
    scheduling strategy (``"SPREAD"``: over the nodes that have the resources, as a pool
    asks for, so that one lost node takes as few of its workers as it can).
    """
    rest = {k: float(v) for k, v in resources.items()}
    options: dict[str, Any] = {"num_cpus": rest.pop("CPU", 1.0), "num_gpus": rest.pop("GPU", 0.0)}
    if "memory" in rest:
        options["memory"] = rest.pop("memory")
    options["resources"] = {k: v for k, v in rest.items() if v}
    if node_id:
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        options["scheduling_strategy"] = NodeAffinitySchedulingStrategy(node_id=node_id, soft=False)
    elif strategy != "DEFAULT":
        options["scheduling_strategy"] = strategy
    return options


def requested(resources: dict[str, float]) -> dict[str, float]:
    """The resources a kernel takes on its node, in ``ray.nodes()`` terms (CPU defaults to 1)."""
    need = {"CPU": 1.0, **{k: float(v) for k, v in resources.items()}}
    return {k: v for k, v in need.items() if v}


def check_feasible(ray: Any, resources: dict[str, float], node_id: str | None = None) -> None:
    """Fail at once when no live node could ever hold this kernel (rather than wait forever)."""
    need = requested(resources)
    nodes = [n for n in ray.nodes() if n.get("Alive")]
    fits = [n for n in nodes if (not node_id or n["NodeID"] == node_id)
            and all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items())]
    if fits:
        return
    where = f"node {node_id}" if node_id else "no node"
    listing = "; ".join(f"{n['NodeID'][:12]} ({n.get('NodeManagerAddress')}): "
                        f"{_brief(n.get('Resources', {}))}" for n in nodes) or "no live nodes"
    raise ResourcesUnavailable(
        f"{where} of the Ray cluster has the resources a kernel asks for, {need} "
        f"(nodes: {listing}). Ask for resources a node has, or add a node that has them, "
        f"e.g. `ray start --address HEAD:6379 --resources '{{\"my_label\": 4}}'`")


def _brief(resources: dict[str, float]) -> dict[str, float]:
    """A node's resources without Ray's per-node bookkeeping entries."""
    return {k: v for k, v in resources.items()
            if not k.startswith(("node:", "accelerator_type:")) and k != "object_store_memory"}


def free_resources(ray: Any) -> dict[str, float]:
    """What the cluster has free now (for the message of a launch that timed out)."""
    return _brief(ray.available_resources())


def node_lost(ray: Any, node_id: str | None) -> str | None:
    """Why node ``node_id`` is gone, or None while it looks alive.

    An actor whose node was removed fails its calls as soon as its process is gone, seconds
    before Ray's health checks declare the node dead; its raylet not answering on its port
    tells the two cases apart at once (an actor killed alone leaves its raylet running).
    """
    if not node_id:
        return None
    for node in ray.nodes():
        if node["NodeID"] != node_id:
            continue
        if not node.get("Alive"):
            return "Ray declared the node dead"
        address = (node.get("NodeManagerAddress"), node.get("NodeManagerPort"))
        try:
            socket.create_connection(address, 1.0).close()
        except (OSError, TypeError, ValueError):
            return f"its raylet at {address[0]}:{address[1]} does not answer"
        return None
    return "the node is no longer in the cluster"
