"""The bridge: a ``grpc.aio`` server and the pool it serves, in one process.

::

    bridge = Bridge(configs)          # list of PoolConfig
    await bridge.start()              # kernels ready, port bound, discovery file written
    await bridge.wait()               # until stop() / the Shutdown RPC / a signal / idle_timeout
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import time
from pathlib import Path
from typing import Any

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from .. import __version__
from ..config import PoolConfig, SchedulerConfig, parse_size
from ..local import LocalBackend
from ..pool import PoolManager
from ..v1 import bridge_pb2 as pb
from ..v1 import bridge_pb2_grpc as pb_grpc
from ..v1 import values_pb2 as values_pb
from . import auth as auth_module
from .. import discovery as discovery_module
from . import transport
from . import reflection
from ..contract.framing import chunk_size, unframe
from ..contract.values import Codec
from .blob_lane import BlobLane
from .blobs import DEFAULT_TTL, BlobStore
from .idle import IdleMonitor
from .local_transport import LocalServer, Registrations, socket_path
from .servicer import BridgeServicer
from .tokens import FILENAME as TOKEN_FILENAME
from .tokens import TokenStore
from .metrics import BridgeMetrics

log = logging.getLogger("kernelpit.service")

DEFAULT_MAX_MESSAGE = 64 * 2**20
DEFAULT_GRACE = 30.0
SERVICE = pb.DESCRIPTOR.services_by_name["Bridge"].full_name


class Bridge:
    """Serves a pool of worker kernels over gRPC.

    ``token``: the owner's admin token (the discovery file's); None makes one up.
    ``auth=False`` serves without a token (anyone who can reach the port can run tools).
    ``token_file``: where the other named tokens are kept (default: beside the discovery
    file; in memory only without one); see :mod:`.tokens`.
    ``discovery``: where to write the discovery file (default: the Jupyter runtime
    dir), or False for none.
    ``idle_timeout``: stop by itself after this many seconds with no RPC and no client
    holding a lease (see :mod:`.idle`); None or 0: serve until stopped.
    ``tls_cert``, ``tls_key`` (PEM files): serve TLS only; ``tls_client_ca``: also require
    client certificates signed by that CA; ``tls_ca``: the CA local clients should verify
    the bridge with (written to the discovery file; default: the certificate chain itself).
    Without TLS only a loopback ``host`` is accepted, unless ``insecure_bind_anywhere``
    (see :mod:`.transport`); the check is made here, before anything starts.
    ``ray_address``: the Ray cluster that Ray-placed pools join (docs/scale-out.md).
    ``local``: also serve on a Unix socket in the run's private directory, for clients on
    this machine run by this user (the local transport, :mod:`.local_transport`; its
    address, ``unix:PATH``, is ``local_address`` and goes in the discovery file).
    ``metrics_address``: serve Prometheus ``/metrics`` there (HOST:PORT; see
    docs/observability.md), plaintext on loopback only; ``metrics_ssl_context`` (an
    ``ssl.SSLContext``, made from the bridge's TLS settings) serves it over HTTPS anywhere.
    ``scheduler``: how tenants (token names; each client of the owner's token) share the
    workers: fair or fifo, weights, quotas (:class:`~kernelpit.config.SchedulerConfig`).
    ``store``: the job store (a SQLite path or a ``postgresql://`` URL; ``True``: the
    default SQLite file in the Jupyter data dir) that turns on the ``kernelpit.v1.Jobs``
    service; None: no jobs (``kernelpit serve`` passes the default).  It is opened before
    any kernel starts, so a bad store fails the start with the store's message.
    ``job_ttl``: seconds finished jobs are kept; ``blob_dir``: where large job values go
    (PostgreSQL: a folder every bridge on the database reaches); ``job_lease``: seconds a
    dead bridge's jobs wait before a peer (or the next start) takes them over.
    """

    def __init__(self, configs: list[PoolConfig], *, host: str = "127.0.0.1", port: int = 0,
                 token: str | None = None, auth: bool = True, grace: float = DEFAULT_GRACE,
                 max_message_size: int | str = DEFAULT_MAX_MESSAGE,
                 discovery: Path | str | bool | None = None,
                 blob_ttl: float = DEFAULT_TTL, idle_timeout: float | None = None,
                 tls_cert: Path | str | None = None, tls_key: Path | str | None = None,
                 tls_client_ca: Path | str | None = None, tls_ca: Path | str | None = None,
                 insecure_bind_anywhere: bool = False,
                 token_file: Path | str | None = None,
                 metrics_address: str | None = None, metrics_ssl_context: Any = None,
                 scheduler: SchedulerConfig | None = None,
                 store: str | bool | None = None, job_ttl: float | None = 7 * 86400.0,
                 blob_dir: str | None = None, job_lease: float = 10.0,
                 ray_address: str | None = None, local: bool = True,
                 blob_lane: bool = True) -> None:
        self.tls = transport.ServerTLS.load(tls_cert, tls_key, tls_client_ca, tls_ca)
        self.warnings = [w for w in (
            transport.check_bind(host, self.tls is not None, insecure_bind_anywhere),
            None if auth else "authentication is OFF (--no-auth): anyone who can reach the port "
            "can run tools as this user") if w]
        self.manager = PoolManager(configs, scheduler, ray_address, passes_on=True)
        self._closing = asyncio.Event()
        self.backend = LocalBackend(self.manager, self._closing)
        self.host = host
        self.port = port
        self.token = (token or auth_module.new_token()) if auth else None
        self.grace = grace
        self.max_message_size = parse_size(max_message_size) or DEFAULT_MAX_MESSAGE
        self.discovery_path: Path | None = (None if discovery is False else
                                            discovery_module.default_path()
                                            if discovery in (None, True) else Path(discovery))
        self.tokens: TokenStore | None = None
        if self.token is not None:
            store_path = (Path(token_file) if token_file is not None else None
                          if self.discovery_path is None else
                          self.discovery_path.with_name(TOKEN_FILENAME))
            self.tokens = TokenStore(store_path, on_owner_rotated=self._owner_rotated)
            self.tokens.set_owner(self.token)
            tokens = self.tokens  # token names are metric labels of their own (tenants)
            self.manager.tenants.named = lambda: [t.name for t in tokens.list()]
        else:
            self.manager.tenants.named = lambda: [auth_module.ANONYMOUS]
        self.blob_ttl = blob_ttl
        self.idle = IdleMonitor(idle_timeout, lambda seconds: self.request_stop())
        self.blobs: BlobStore | None = None  # large values waiting to be read or used
        self.address = ""
        self.started = 0.0
        self._server: grpc.aio.Server | None = None
        self._local: LocalServer | None = None
        self._serve_local = local
        self._serve_blob_lane = blob_lane  # its TCP port is plaintext: not beside TLS
        self._lane: BlobLane | None = None
        self._health = health.aio.HealthServicer()
        self._stop_requested = asyncio.Event()
        self._stop_grace: float | None = None
        self._stopped = False
        if metrics_ssl_context is None and self.tls is not None and metrics_address is not None:
            metrics_ssl_context = transport.https_context(tls_cert, tls_key)  # same certificate
        self.metrics = BridgeMetrics(self.manager, metrics_address, metrics_ssl_context)
        self.store = None if store in (None, False) else store
        self.job_settings = dict(job_ttl=job_ttl, lease=job_lease)
        self.blob_dir = blob_dir
        self.runner: Any = None  # kernelpit.jobs.JobRunner, from start() to stop()

    async def start(self) -> "Bridge":
        """Start the kernels, then bind and serve; returns when clients can connect."""
        if self.discovery_path is not None:
            other = discovery_module.read(self.discovery_path)
            if other is not None and other.get("pid") != os.getpid():
                raise FileExistsError(
                    f"a bridge is already running at {other['address']} (pid {other['pid']}, "
                    f"discovery file {self.discovery_path}); stop it with `kernelpit stop`, or "
                    "start this one with --no-discovery")
        # the store first: a bad one fails `serve` before any kernel starts
        store = None if self.store is None else await self.backend.open_job_store(
            None if self.store is True else self.store, self.blob_dir)
        try:
            await self.manager.start()
        except BaseException:
            if store is not None:
                await store.close()
            raise
        try:
            if store is not None:
                self.runner = await self.backend.start_jobs(store, **self.job_settings)
                self.runner.activity = self.idle  # a bridge holding a job is in use
                if self.metrics.registry is not None:
                    from ..telemetry.metrics import for_registry
                    for_registry(self.metrics.registry).add_jobs(self.runner)
            await self._serve()
            if self.metrics.registry is not None:
                from ..telemetry.metrics import for_registry
                for_registry(self.metrics.registry).add_blobs(self.blobs, self._lane)
            self.metrics.serve()
        except BaseException:
            await self.backend.stop_jobs()
            await self.manager.close()
            raise
        self.started = time.time()
        for warning in self.warnings:
            log.warning("kernelpit: WARNING: %s", warning)  # also in ServerInfo.warnings
        if self.discovery_path is not None:
            try:
                self._write_discovery()
            except BaseException:
                await self.stop(0)
                raise
        self.idle.start()
        return self

    def _write_discovery(self) -> None:
        assert self.discovery_path is not None
        tls = None if self.tls is None else {"ca": self.tls.trust.decode(),
                                             "client_certificates": self.tls.client_ca is not None}
        discovery_module.write(self.address, self.token, self.discovery_path,
                               local=self._local.path if self._local is not None else None,
                               version=__version__, run_id=self.manager.run_id,
                               pools=list(self.manager.groups),
                               idle_timeout=self.idle.timeout or 0, tls=tls)

    def _owner_rotated(self, secret: str) -> None:
        """``kernelpit token rotate owner``: clients that read the discovery file find it there."""
        self.token = secret
        if self.discovery_path is not None and self.started:
            self._write_discovery()

    async def _serve(self) -> None:
        # auth first: a refused RPC does not count as use
        token_auth = auth_module.TokenAuth(self.tokens) if self.tokens else None
        interceptors: list[Any] = [token_auth] if token_auth is not None else []
        if self.idle.timeout is not None:
            interceptors.append(self.idle.interceptor)
        server = grpc.aio.server(interceptors=interceptors, options=[
            ("grpc.max_receive_message_length", self.max_message_size),
            ("grpc.max_send_message_length", -1),
            ("grpc.so_reuseport", 0),
        ])
        self.blobs = BlobStore(self.manager.shm_dir, self.blob_ttl)
        self.blobs.start()
        servicer = BridgeServicer(self.backend, self._info, self.request_stop, self.blobs,
                                  self.max_message_size, leases=self.idle, tokens=self.tokens)
        if self._serve_local and self.manager.run_dir is not None:
            # the same handlers behind the same interceptors, on a second transport
            self._local = LocalServer(socket_path(str(self.manager.run_dir)), interceptors,
                                      self.manager.transport, self.max_message_size)
            registry: Any = Registrations(server, self._local)
        else:
            registry = server
        add_servicer(servicer, registry)
        services = [SERVICE, health.SERVICE_NAME]
        if self.runner is not None:
            from ..jobs.service import SERVICE as JOBS_SERVICE
            from ..jobs.service import add_jobs_service
            # large values as blobs, as in the Bridge service (same store, same limits)
            add_jobs_service(registry, self.runner,
                             requests=Codec(fetch=self.blobs.take, untrusted=True),
                             results=Codec(park=self.blobs.put,
                                           limit=chunk_size(self.max_message_size)))
            services.insert(1, JOBS_SERVICE)
        health_pb2_grpc.add_HealthServicer_to_server(self._health, registry)
        reflection.enable(tuple(services), registry)  # as v1 and v1alpha
        try:
            where = f"{self.host}:{self.port}"
            port = (server.add_insecure_port(where) if self.tls is None else
                    server.add_secure_port(where, self.tls.credentials()))
        except RuntimeError as exc:
            raise OSError(f"cannot listen on {self.host}:{self.port} ({exc}); the port may be in "
                          "use: pick another with --port, or --port 0 for any free one") from None
        await server.start()
        self._server = server
        if self._serve_blob_lane:  # first: the local transport's greeting names it
            await self._start_lane(token_auth)
        if self._local is not None:
            await self._local.start()
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.address = f"{host}:{port}"
        await self._health.set("", health_pb2.HealthCheckResponse.SERVING)
        await self._health.set(SERVICE, health_pb2.HealthCheckResponse.SERVING)

    async def _start_lane(self, token_auth: Any) -> None:
        """The blob lane: on a TCP port beside a plaintext gRPC port, and on a Unix socket
        beside the local transport (named in its greeting).  Where it cannot listen, clients
        read blobs with ReadBlob."""
        lane = BlobLane(self.blobs, token_auth, self.idle if self.idle.timeout is not None
                        else None)
        if self.tls is None:  # plaintext: not beside a gRPC port that serves TLS
            try:
                await lane.start(self.host)
            except OSError as exc:
                log.warning("kernelpit: the blob lane cannot listen on %s (%s); clients read "
                            "large results over gRPC", self.host, exc)
        if self._local is not None:
            try:
                self._local.lane = await lane.start_unix(os.path.dirname(self._local.path))
            except OSError as exc:
                log.warning("kernelpit: the blob lane cannot listen beside the local transport "
                            "(%s); its clients read large results with ReadBlob", exc)
        if lane.port or lane.path:
            self._lane = lane

    @property
    def local_address(self) -> str | None:
        """``unix:PATH``: the local transport's socket (None when it is off)."""
        return None if self._local is None else "unix:" + self._local.path

    def _info(self) -> pb.ServerInfo:
        return pb.ServerInfo(version=__version__, run_id=self.manager.run_id, pid=os.getpid(),
                             pools=list(self.manager.groups), started=self.started,
                             address=self.address, max_message_size=self.max_message_size,
                             blob_ttl=self.blob_ttl, warnings=self.warnings,
                             blob_lane_port=self._lane.port if self._lane is not None else 0,
                             security=pb.TransportSecurity(
                                 tls=self.tls is not None, auth=self.tokens is not None,
                                 client_certificates=bool(self.tls and self.tls.client_ca)))

    def request_stop(self, grace: float | None = None) -> None:
        """Ask :meth:`wait` to stop the bridge (the Shutdown RPC and signals call this)."""
        self._stop_grace = grace
        self._stop_requested.set()

    def abort_drain(self) -> None:
        """Cut a running drain short: cancel the calls still in flight now."""
        if self._stopped and self._server is not None:
            asyncio.ensure_future(self._server.stop(0))
        if self._stopped and self._local is not None:
            asyncio.ensure_future(self._local.stop(0))

    async def stop_requested(self) -> float:
        """Wait until a stop is requested; returns the grace period asked for."""
        await self._stop_requested.wait()
        return self.grace if self._stop_grace is None else self._stop_grace

    @property
    def calls_in_flight(self) -> int:
        return len(self.manager.calls)

    async def wait(self) -> None:
        """Serve until a stop is requested, then stop."""
        await self.stop(await self.stop_requested())

    async def stop(self, grace: float | None = None) -> None:
        """Stop accepting RPCs, let in-flight calls finish within ``grace`` s, stop every kernel."""
        if self._stopped:
            return
        self._stopped = True
        grace = self.grace if grace is None else grace
        self._closing.set()  # ends Watch streams, which would otherwise hold the drain open
        await self.idle.close()
        with contextlib.suppress(Exception):
            await self._health.enter_graceful_shutdown()
        try:
            # running jobs first get the grace to finish (their watchers still served), then
            # the rest of it goes to the calls in flight; jobs still running are left to the
            # next start on the store (re-run when idempotent, else lost)
            begun = time.monotonic()
            await self.backend.stop_jobs(grace)
            rest = max(0.0, grace - (time.monotonic() - begun))
            await asyncio.gather(*(s.stop(rest) for s in (self._server, self._local)
                                   if s is not None))
        finally:
            if self._lane is not None:
                await self._lane.stop()
            if self.blobs is not None:
                self.blobs.close()
            self.metrics.close()
            await self.manager.close()
            if self.tokens is not None:
                with contextlib.suppress(OSError):
                    self.tokens.save()  # keeps each token's last use
            if self.discovery_path is not None:
                discovery_module.remove(self.discovery_path)

    async def __aenter__(self) -> "Bridge":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.stop(0)



def add_servicer(servicer: BridgeServicer, server: Any) -> None:
    """Register the Bridge handlers, with blob chunks framed by hand.

    The generated registration serializes every BlobChunk with protobuf (two
    extra copies of each chunk); ReadBlob instead yields serialized chunks and
    WriteBlob gets each chunk's data as a memoryview of the received message.
    """
    class Capture:
        handlers: dict[str, Any] = {}

        def add_generic_rpc_handlers(self, handlers: Any) -> None:
            pass

        def add_registered_method_handlers(self, name: str, handlers: dict[str, Any]) -> None:
            self.handlers = dict(handlers)

    capture = Capture()
    pb_grpc.add_BridgeServicer_to_server(servicer, capture)
    handlers = capture.handlers
    handlers["ReadBlob"] = grpc.unary_stream_rpc_method_handler(
        servicer.ReadBlob, request_deserializer=pb.ReadBlobRequest.FromString,
        response_serializer=None)
    handlers["WriteBlob"] = grpc.stream_unary_rpc_method_handler(
        servicer.WriteBlob, request_deserializer=unframe,
        response_serializer=values_pb.BlobRef.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE, handlers),))
    server.add_registered_method_handlers(SERVICE, handlers)
