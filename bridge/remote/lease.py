"""A remote client's lease: how a bridge knows a client is still connected.

A bridge with an idle timeout (``kernelpit serve --idle-timeout``, the default of
``%kp start``) stops once nobody has used it for that long; gRPC gives it no
connection events, so a client says it is there by renewing a lease
(``RenewLease``) every ttl/3 seconds on its event loop.  A client that ends
(``close``) gives the lease back at once; one that dies without closing is
forgotten ttl seconds after its last renewal.  A bridge that restarts or is
briefly unreachable is retried quietly at the next renewal.

``$KERNELPIT_LEASE_TTL`` sets the ttl asked for (seconds, default 30); tests use
a short one.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import uuid
from typing import Any

import grpc

from ..v1 import bridge_pb2 as pb

log = logging.getLogger("kernelpit.remote")

DEFAULT_TTL = 30.0
TTL_ENV = "KERNELPIT_LEASE_TTL"
RELEASE_TIMEOUT = 1.0  # closing a client waits at most this long to give the lease back


def new_client_id() -> str:
    """A client id, made once per connection (a random hex string)."""
    return uuid.uuid4().hex


def requested_ttl() -> float:
    """The lease ttl to ask for: ``$KERNELPIT_LEASE_TTL``, else 30 s."""
    text = os.environ.get(TTL_ENV)
    if not text:
        return DEFAULT_TTL
    try:
        ttl = float(text)
    except ValueError:
        ttl = -1.0
    if not ttl > 0:
        raise ValueError(f"${TTL_ENV} must be a number of seconds > 0, got {text!r}")
    return ttl


class Lease:
    """Renews ``client_id``'s lease on the bridge behind ``stub`` until :meth:`stop`."""

    def __init__(self, stub: Any, metadata: Any, client_id: str, ttl: float | None = None) -> None:
        self.client_id = client_id
        self.ttl = ttl if ttl is not None else requested_ttl()
        self.idle_timeout: float | None = None  # the bridge's, once it answered (0: none)
        self._stub = stub
        self.metadata = metadata
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Start renewing on the running loop (again after a stop; once while running)."""
        if self._task is None or self._task.done():
            self._task = asyncio.get_running_loop().create_task(
                self._renew(), name=f"kernelpit-lease-{self.client_id[:8]}")

    async def _renew(self) -> None:
        period = self.ttl / 3
        while True:
            try:
                reply = await self._stub.RenewLease(
                    pb.RenewLeaseRequest(client_id=self.client_id, ttl=self.ttl),
                    metadata=self.metadata, timeout=period)
            except grpc.aio.AioRpcError as exc:
                if exc.code() == grpc.StatusCode.UNIMPLEMENTED:
                    log.debug("the bridge has no RenewLease (an older one): no lease kept")
                    return
                # unreachable or restarting: try again at the next renewal, quietly
                log.debug("renewing the lease failed (%s); retrying in %.1f s", exc.code(), period)
            else:
                self.idle_timeout = reply.idle_timeout
                period = (reply.ttl or self.ttl) / 3
            await asyncio.sleep(period)

    async def stop(self) -> None:
        """Stop renewing and give the lease back, so an idle bridge need not wait out the ttl."""
        task, self._task = self._task, None
        if task is None:
            return
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
        with contextlib.suppress(grpc.aio.AioRpcError, grpc.aio.UsageError, asyncio.TimeoutError):
            await self._stub.RenewLease(pb.RenewLeaseRequest(client_id=self.client_id, ttl=0),
                                        metadata=self.metadata, timeout=RELEASE_TIMEOUT)
