"""Remote clients: the embedded pool's API, served by a bridge over gRPC.

::

    import kernelpit

    with kernelpit.connect() as pool:          # finds the running bridge (kernelpit serve)
        pool.call("add", a=1, b=2)
        for ev in pool.stream("train", epochs=3):
            print(ev.kind)

:class:`RemoteBackend` is the :class:`~kernelpit.backend.Backend` of a bridge,
over a ``grpc.aio`` channel.  :class:`AsyncClient` is the same asyncio API as
``kernelpit.aio.Pool`` on top of it (plus what only a bridge has: ``address``,
``server_info()``); :class:`Client` is its blocking twin, driven by a
:class:`~kernelpit.sync.Portal`.
"""

from __future__ import annotations

import os
import threading
from typing import Any

from .. import discovery
from ..caller import AsyncCaller, AsyncHandle
from ..exceptions import BridgeError, BridgeNotFound, DeadlineExceeded, Unauthenticated
from ..sync import Handle, Portal, blocking
from ..v1 import bridge_pb2 as pb
from .backend import RemoteBackend

HOW_TO_START = ("Start one with `kernelpit serve --adapter MODULE` (e.g. --adapter "
                "kernelpit.kernels.demo), or pass connect(address=..., token=...)")


def resolve(address: str | None, token: str | None) -> tuple[str, str | None]:
    """The address and token to use: given ones, else the discovery file's."""
    if address is None:
        path = discovery.default_path()
        info = discovery.read(path)
        if info is None:
            why = ("its discovery file is stale (the process is gone)" if path.exists()
                   else f"there is no discovery file {path}")
            raise BridgeNotFound(f"no Kernelpit bridge was found: {why}. {HOW_TO_START}")
        return info["address"], token if token is not None else info.get("token")
    if token is None:
        token = os.environ.get("KERNELPIT_TOKEN")
    if token is None:
        info = discovery.read()
        if info is not None and info.get("address") == address:
            token = info.get("token")
    return address, token


class AsyncClient(AsyncHandle):
    """A bridge, used from asyncio: the methods of :class:`kernelpit.aio.Pool`, plus
    ``address`` and ``server_info()``."""

    _backend: RemoteBackend

    def __init__(self, backend: RemoteBackend) -> None:
        super().__init__(backend)
        self.info: pb.ServerInfo | None = None

    @property
    def address(self) -> str:
        return self._backend.address

    @property
    def run_id(self) -> str:
        """The bridge's pool run id (as ``Pool.run_id``)."""
        return self.info.run_id if self.info is not None else ""

    async def check(self, timeout: float = 5.0) -> pb.ServerInfo:
        """Ask the bridge who it is; raises BridgeNotFound when nothing answers."""
        try:
            self.info = await self._backend.server_info(timeout)
            self._backend.lease.start()
            return self.info
        except BridgeError as exc:
            if isinstance(exc, Unauthenticated):
                raise
            raise BridgeNotFound(f"no Kernelpit bridge answers at {self.address} ({exc}). "
                                 f"{HOW_TO_START}") from None
        except DeadlineExceeded:
            raise BridgeNotFound(f"no Kernelpit bridge answered at {self.address} within "
                                 f"{timeout:g} s. {HOW_TO_START}") from None

    async def server_info(self) -> pb.ServerInfo:
        """The bridge's version, run id, pid, pools, address and limits."""
        return await self._backend.server_info()

    async def __aenter__(self) -> "AsyncClient":
        return self


async def connect_async(address: str | None = None, token: str | None = None, *,
                        timeout: float = 5.0) -> AsyncClient:
    """Connect to a bridge (default: the one in the discovery file) and check it answers."""
    address, token = resolve(address, token)
    client = AsyncClient(RemoteBackend(address, token))
    try:
        await client.check(timeout)
    except BaseException:
        await client.close()
        raise
    return client


class Connecting:
    """What ``kernelpit.aio.connect()`` returns: await it, or use it with ``async with``."""

    def __init__(self, address: str | None, token: str | None, timeout: float) -> None:
        self._args = (address, token)
        self._timeout = timeout
        self._client: AsyncClient | None = None

    def __await__(self) -> Any:
        return connect_async(*self._args, timeout=self._timeout).__await__()

    async def __aenter__(self) -> AsyncClient:
        self._client = await connect_async(*self._args, timeout=self._timeout)
        return self._client

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.close()


class ClientPortal(Portal):
    """A Portal that runs a lone tool call right on the calling thread.

    A blocking gRPC call needs no event loop, so when no other thread is in a
    call, ``call`` skips the hand-off to the loop thread (the biggest share of
    a no-op call's latency).  Calls made while another is in flight go through
    the loop and share the multiplexed stream, which scales with many threads.
    The calling logic stays in :class:`RemoteBackend`.
    """

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        if getattr(fn, "__func__", None) is AsyncCaller.call:
            caller: AsyncCaller = fn.__self__
            backend = caller._backend
            if isinstance(backend, RemoteBackend) and backend.solo.acquire(blocking=False):
                try:
                    return backend.call_blocking(args[0], args[1:], kwargs, caller._options)
                finally:
                    backend.solo.release()
        return super().call(fn, *args, **kwargs)

    def stop(self) -> None:
        """Keep the loop: it is shared by every blocking client of this process (gRPC's
        asyncio layer stays bound to one loop, and a closed one would break it)."""


_shared: ClientPortal | None = None
_shared_lock = threading.Lock()


def client_portal() -> ClientPortal:
    """The one loop thread that drives every blocking client in this process."""
    global _shared
    with _shared_lock:
        if _shared is None:
            _shared = ClientPortal("kernelpit-client")
        return _shared


class Client(Handle):
    """A bridge, used from blocking code: the methods of :class:`kernelpit.Pool`, plus
    ``address`` and ``server_info()``."""

    _async: AsyncClient

    def __init__(self, address: str | None = None, token: str | None = None, *,
                 timeout: float = 5.0) -> None:
        portal = client_portal()
        target = portal.call(connect_async, address, token, timeout=timeout)
        super().__init__(portal, target)

    @property
    def address(self) -> str:
        return self._async.address

    @property
    def run_id(self) -> str:
        return self._async.run_id

    server_info = blocking(AsyncClient.server_info)

    def __enter__(self) -> "Client":
        return self


def connect(address: str | None = None, token: str | None = None, *, timeout: float = 5.0) -> Client:
    """A blocking client of a running bridge; see :class:`Client`."""
    return Client(address, token, timeout=timeout)
