"""Idle shutdown: a bridge that nobody uses for ``timeout`` seconds stops itself.

gRPC tells a server nothing about connections, so "in use" is what the server
can see plus what clients say:

* an RPC of ``kernelpit.v1.Bridge`` or ``kernelpit.v1.Jobs`` counts for as long as
  it is open (a call, a ``CallStream``, a ``Watch``, the multiplexed ``Calls``
  stream, a ``WatchJob``); health probes, reflection and ``RenewLease`` itself do not;
* a durable job the bridge holds (queued or running) counts like an open RPC, from
  when it is taken on to when it ends (the job runner's ``activity`` hook calls
  :meth:`IdleMonitor.enter` / :meth:`IdleMonitor.exit`), so a bridge never idles out
  with a job running;
* a client says it is connected by holding a lease (``RenewLease``), which it
  renews every ttl/3 s (:mod:`kernelpit.remote.lease`); a lease not renewed lapses
  ttl s after its last renewal.

The bridge is idle once no RPC is open and no lease is live; ``timeout`` s
after that (counted from the later of the last RPC's end and the last lease's
end) :class:`IdleMonitor` calls ``on_idle``.  A session nobody calls holds
nothing: only its use (RPCs) does.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable

import grpc

from ..contract.metadata import CLIENT_ID_KEY
from ..v1 import bridge_pb2 as pb

MAX_LEASE_TTL = 600.0
# health probes and reflection keep nothing alive
COUNTED_PREFIXES = ("/kernelpit.v1.Bridge/", "/kernelpit.v1.Jobs/")
NOT_COUNTED = "/kernelpit.v1.Bridge/RenewLease"  # a lease counts for as long as it lasts


class IdleMonitor:
    """Counts open RPCs and live leases; calls ``on_idle(seconds idle)`` once, when idle that long.

    ``timeout`` None (or 0): the bridge never stops by itself; leases are still
    granted, so a client need not know which kind of bridge it talks to.
    """

    def __init__(self, timeout: float | None, on_idle: Callable[[float], None],
                 clock: Callable[[], float] = time.monotonic) -> None:
        if timeout is not None and timeout < 0:
            raise ValueError(f"idle_timeout must be seconds >= 0 (0: never), got {timeout:g}")
        self.timeout = timeout or None
        self.idle_for: float | None = None  # set when on_idle was called
        self._on_idle = on_idle
        self._clock = clock
        self._open = 0                       # RPCs in progress
        self._last = clock()                 # when the bridge was last in use
        self._leases: dict[str, float] = {}  # client id -> expiry (clock time)
        self._task: asyncio.Task[None] | None = None
        self.interceptor = ActivityInterceptor(self)

    # -- what counts as use --------------------------------------------------------------------
    def enter(self) -> None:
        self._open += 1

    def exit(self) -> None:
        self._open -= 1
        if not self._open:
            self._last = self._clock()

    def renew(self, request: pb.RenewLeaseRequest,
              metadata: Iterable[tuple[str, Any]] | None) -> pb.RenewLeaseResponse:
        """The RenewLease RPC: (re)start ``client_id``'s lease for ``ttl`` s, or end it (ttl 0)."""
        client = request.client_id or dict(metadata or ()).get(CLIENT_ID_KEY, "")
        if not client:
            raise ValueError(f"RenewLease needs a client_id (or the call metadata "
                             f"'{CLIENT_ID_KEY}'): any string that stays the same for this client")
        if not request.ttl >= 0:  # also NaN
            raise ValueError(f"RenewLease ttl must be seconds >= 0 (0 ends the lease), "
                             f"got {request.ttl}")
        now = self._clock()
        ttl = min(request.ttl, MAX_LEASE_TTL)
        if ttl:
            self._leases[client] = now + ttl
        elif self._leases.pop(client, None) is not None:
            self._last = max(self._last, now)
        return pb.RenewLeaseResponse(idle_timeout=self.timeout or 0.0, ttl=ttl)

    def _expire(self, now: float) -> None:
        for client, expiry in list(self._leases.items()):
            if expiry <= now:
                del self._leases[client]
                self._last = max(self._last, expiry)

    # -- the timer -----------------------------------------------------------------------------
    def start(self) -> None:
        """Start counting idle time from now (call once the bridge serves)."""
        self._last = self._clock()
        if self.timeout is not None and self._task is None:
            self._task = asyncio.create_task(self._watch(self.timeout), name="kernelpit-idle")

    async def _watch(self, timeout: float) -> None:
        # Sleeps until the earliest moment the bridge could be idle long enough, then looks
        # again: use in between only moves that moment, so the hot path never wakes this task.
        while True:
            now = self._clock()
            self._expire(now)
            if self._open:
                wake = now + timeout
            elif self._leases:
                wake = min(self._leases.values()) + timeout
            elif now - self._last >= timeout:
                self.idle_for = now - self._last
                self._on_idle(self.idle_for)
                return
            else:
                wake = self._last + timeout
            await asyncio.sleep(max(wake - now, 0.01))

    async def close(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None


class ActivityInterceptor(grpc.aio.ServerInterceptor):
    """Holds the monitor's count up for as long as each Bridge RPC runs (streams included)."""

    def __init__(self, monitor: IdleMonitor) -> None:
        self._monitor = monitor
        self._wrapped: dict[str, Any] = {}  # method -> counting handler (made once per method)

    async def intercept_service(self, continuation: Callable[[Any], Awaitable[Any]],
                                details: grpc.HandlerCallDetails) -> Any:
        handler = await continuation(details)
        if (handler is None or not details.method.startswith(COUNTED_PREFIXES)
                or details.method == NOT_COUNTED):
            return handler
        wrapped = self._wrapped.get(details.method)
        if wrapped is None or wrapped[0] is not handler:
            wrapped = self._wrapped[details.method] = (handler, self._counting(handler))
        return wrapped[1]

    def _counting(self, handler: Any) -> Any:
        monitor = self._monitor
        kind, behavior = next((k, b) for k in ("unary_unary", "unary_stream", "stream_unary",
                                               "stream_stream")
                              if (b := getattr(handler, k)) is not None)

        if inspect.isasyncgenfunction(behavior):
            async def counted_stream(request: Any, context: Any) -> AsyncIterator[Any]:
                monitor.enter()
                try:
                    async for message in behavior(request, context):
                        yield message
                finally:
                    monitor.exit()
            counted: Any = counted_stream
        else:
            async def counted_unary(request: Any, context: Any) -> Any:
                monitor.enter()
                try:
                    return await behavior(request, context)
                finally:
                    monitor.exit()
            counted = counted_unary
        make = getattr(grpc, f"{kind}_rpc_method_handler")
        return make(counted, request_deserializer=handler.request_deserializer,
                    response_serializer=handler.response_serializer)
