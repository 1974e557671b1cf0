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

import threading
from typing import Any

from ..caller import AsyncHandle
from ..exceptions import (BridgeError, BridgeNotFound, DeadlineExceeded, PermissionDenied,
                          Unauthenticated)
from ..info import TokenInfo
from ..sync import Handle, Portal, blocking
from ..v1 import bridge_pb2 as pb
from .backend import RemoteBackend
from .target import HOW_TO_START, Pem, resolve


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
    def transport(self) -> str:
        """How this client reaches the bridge: ``"local"`` (its Unix socket) or ``"grpc"``."""
        return self._backend.target.transport

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
            if isinstance(exc, (Unauthenticated, PermissionDenied)):
                raise
            tls_failure = self._backend.target.explain(str(exc))
            if tls_failure is not None:
                raise BridgeError(tls_failure) from None
            raise BridgeNotFound(f"no Kernelpit bridge answers at {self.address} ({exc}). "
                                 f"{HOW_TO_START}") from None
        except DeadlineExceeded:
            raise BridgeNotFound(f"no Kernelpit bridge answered at {self.address} within "
                                 f"{timeout:g} s. {HOW_TO_START}") from None

    async def server_info(self) -> pb.ServerInfo:
        """The bridge's version, run id, pid, pools, address and limits."""
        return await self._backend.server_info()

    # -- tokens (role admin): `kernelpit token add|list|revoke|rotate` ---------------------------
    async def add_token(self, name: str, role: str = "call") -> TokenInfo:
        """A new named token with ``role`` (read, call or admin); its ``secret`` is shown
        only here."""
        return await self._backend.add_token(name, role)

    async def list_tokens(self) -> list[TokenInfo]:
        """The bridge's tokens: names, roles, when made and last used (never the secrets)."""
        return await self._backend.list_tokens()

    async def revoke_token(self, name: str) -> TokenInfo:
        """Refuse ``name``'s secret from the next RPC on (streams open now stay open)."""
        return await self._backend.revoke_token(name)

    async def rotate_token(self, name: str) -> TokenInfo:
        """A new secret for ``name`` (same role); the old one is refused from now on."""
        return await self._backend.rotate_token(name)

    async def __aenter__(self) -> "AsyncClient":
        return self


async def connect_async(address: str | None = None, token: str | None = None, *,
                        timeout: float = 5.0, tls_ca: Pem = None, tls_cert: Pem = None,
                        tls_key: Pem = None, transport: str = "auto") -> AsyncClient:
    """Connect to a bridge (default: the one in the discovery file) and check it answers."""
    target = resolve(address, token, tls_ca=tls_ca, tls_cert=tls_cert, tls_key=tls_key,
                     transport=transport)
    client = AsyncClient(RemoteBackend(target))
    try:
        await client.check(timeout)
    except BaseException:
        await client.close()
        raise
    client._close_at_loop_end(f"a client of the bridge at {client.address}")
    return client


class Connecting:
    """What ``kernelpit.aio.connect()`` returns: await it, or use it with ``async with``."""

    def __init__(self, address: str | None, token: str | None, timeout: float,
                 transport: str = "auto", **tls: Pem) -> None:
        self._args = (address, token)
        self._kwargs = dict(timeout=timeout, transport=transport, **tls)
        self._client: AsyncClient | None = None

    def __await__(self) -> Any:
        return connect_async(*self._args, **self._kwargs).__await__()

    async def __aenter__(self) -> AsyncClient:
        self._client = await connect_async(*self._args, **self._kwargs)
        return self._client

    async def __aexit__(self, *exc: Any) -> None:
        if self._client is not None:
            await self._client.close()


class ClientPortal(Portal):
    """A Portal that runs tool calls from the calling thread, without a coroutine on the loop.

    A blocking gRPC call needs no event loop, so when no other thread is in a
    call, ``call`` makes a blocking unary ``Call`` right here (no hand-off to the loop
    thread, the biggest share of a no-op call's latency).  Calls made while another is
    in flight share the multiplexed stream, which scales with many threads: the thread
    hands its request to the stream's writer on the loop and waits for its reply on a
    lock (no task and no Condition per call).  The calling logic stays in
    :class:`RemoteBackend`.
    """

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        caller = self.tool_call(fn)
        if caller is not None:
            backend = caller._backend
            if isinstance(backend, RemoteBackend):
                if not backend.solo.acquire(blocking=False):
                    self._check_usable()  # not from the loop's own thread, nor once it is closed
                    return backend.call_blocking(args[0], args[1:], kwargs, caller._options,
                                                 self.loop)
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
                 timeout: float = 5.0, tls_ca: Pem = None, tls_cert: Pem = None,
                 tls_key: Pem = None, transport: str = "auto") -> None:
        portal = client_portal()
        target = portal.call(connect_async, address, token, timeout=timeout, tls_ca=tls_ca,
                             tls_cert=tls_cert, tls_key=tls_key, transport=transport)
        super().__init__(portal, target)

    @property
    def address(self) -> str:
        return self._async.address

    @property
    def transport(self) -> str:
        return self._async.transport

    @property
    def run_id(self) -> str:
        return self._async.run_id

    server_info = blocking(AsyncClient.server_info)
    add_token = blocking(AsyncClient.add_token)
    list_tokens = blocking(AsyncClient.list_tokens)
    revoke_token = blocking(AsyncClient.revoke_token)
    rotate_token = blocking(AsyncClient.rotate_token)

    def __enter__(self) -> "Client":
        return self


def connect(address: str | None = None, token: str | None = None, *, timeout: float = 5.0,
            tls_ca: Pem = None, tls_cert: Pem = None, tls_key: Pem = None,
            transport: str = "auto") -> Client:
    """A blocking client of a running bridge; see :class:`Client`.  ``tls_ca`` (the CA that
    signed the bridge's certificate), ``tls_cert`` and ``tls_key`` (this client's, for
    mutual TLS): see :mod:`kernelpit.remote.target`.  ``transport``: ``"auto"`` (the
    bridge's Unix socket when it runs on this machine as this user, else gRPC),
    ``"grpc"``, or ``"local"`` (fails when the bridge is elsewhere)."""
    return Client(address, token, timeout=timeout, tls_ca=tls_ca, tls_cert=tls_cert,
                  tls_key=tls_key, transport=transport)
