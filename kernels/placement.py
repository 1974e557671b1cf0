"""Which way a worker kernel reaches its pool: the Unix socket and shared memory, or signed TCP.

The pool cannot know before a launch where a provisioner will put the kernel, so a
worker placed by a provisioner (Ray) gets both ways in its environment and chooses
here, on its node:

``KERNELPIT_ENDPOINT``         the pool's Unix socket (``unix://...``) on the controller's machine
``KERNELPIT_TCP_ENDPOINT``     the pool's signed TCP listener (``tcp://host:port``)
``KERNELPIT_CHANNEL_KEY``      the run key (hex) that signs the TCP channel
``KERNELPIT_CONTROLLER_NODE``  the Ray node id of the controller
``KERNELPIT_NODE_ID``          the Ray node id of this kernel (set by its host actor)

A kernel on the controller's node takes the Unix socket and shared memory; any other
takes TCP and sends large values inline in signed parts.  The decision is by Ray node
id, never by host name or address: nodes may share a host (and ``/dev/shm``), as in
the tests, and a kernel on another node must still take the network path.  A kernel
of a provisioner that reports no node takes TCP.  Only the standard library is used.
"""

from __future__ import annotations

import os
from collections.abc import MutableMapping


def on_controller_node(env: MutableMapping[str, str]) -> bool:
    """True when this kernel may use the controller's Unix socket and shared memory."""
    if not env.get("KERNELPIT_TCP_ENDPOINT"):
        return True  # a local worker: only the Unix socket was offered
    node, controller = env.get("KERNELPIT_NODE_ID"), env.get("KERNELPIT_CONTROLLER_NODE")
    return bool(node and controller and node == controller and env.get("KERNELPIT_ENDPOINT"))


def choose(env: MutableMapping[str, str] = os.environ) -> str:
    """The endpoint this kernel connects to; off the controller's node, also drops the
    shared-memory directory from ``env`` (values then travel inline, in signed parts)."""
    if on_controller_node(env):
        return env.get("KERNELPIT_ENDPOINT", "")
    env.pop("KERNELPIT_SHM_DIR", None)
    return env["KERNELPIT_TCP_ENDPOINT"]


def run_key(env: MutableMapping[str, str] = os.environ) -> bytes | None:
    """The run key signing the TCP channel, or None when none was given."""
    key = env.get("KERNELPIT_CHANNEL_KEY")
    return bytes.fromhex(key) if key else None
