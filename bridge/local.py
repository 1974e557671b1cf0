"""The embedded pool: worker kernels owned by this process.

:class:`LocalBackend` is the :class:`~kernelpit.backend.Backend` over a
:class:`~kernelpit.pool.PoolManager`; the gRPC service serves the same object,
so a bridge answers exactly as an embedded pool does.  :class:`AsyncPool` is the
asyncio API over it (``kernelpit.aio.Pool``), :class:`Pool` its blocking twin
(``kernelpit.Pool``).  (The client of a bridge is built the same way in
:mod:`kernelpit.remote`, and never imports this module: a client process does not
load the pool machinery.)
"""

from __future__ import annotations

import asyncio
import difflib
import threading
from typing import Any, AsyncIterator, Awaitable

from .backend import Backend
from .caller import AsyncHandle
from .config import PoolConfig, SchedulerConfig
from .events import Event
from .exceptions import JobsDisabled, ToolNotFound
from .info import SessionInfo, ToolInfo, WorkerInfo
from .jobs.model import JobEvent, JobInfo
from .options import CallOptions
from .pool import PoolManager
from .sync import Handle, Portal
from .telemetry import tracing
from .telemetry.events import TelemetryEvent
from .watch import WatchEvent, WatchHub


def build_configs(adapters: Any, workers: int | None, pools: dict[str, Any] | None,
                  settings: dict[str, Any]) -> list[PoolConfig]:
    """The named pools a ``Pool(...)`` call describes: the default one and ``pools=``."""
    configs: list[PoolConfig] = []
    if adapters or not pools:
        data = dict(settings)
        if workers is not None:
            data["workers"] = workers
        configs.append(PoolConfig(name=data.pop("name", "default"), adapters=adapters or [], **data))
    elif settings or workers is not None:
        raise TypeError("pool settings without adapters: put them in the pools={...} entries")
    for name, spec in (pools or {}).items():
        if isinstance(spec, PoolConfig):
            spec.name = name
            configs.append(spec)
        else:
            configs.append(PoolConfig.from_dict(name, dict(spec)))
    return configs


class LocalBackend(Backend):
    """A :class:`PoolManager`'s pool, as a Backend.  Calls go straight to the manager."""

    def __init__(self, manager: PoolManager, closing: asyncio.Event | None = None) -> None:
        self.manager = manager
        #: set when the pool (or the bridge serving it) stops: ends every watch stream
        self.closing = closing or asyncio.Event()
        self._hub: WatchHub | None = None
        self._closer: asyncio.Future[None] | None = None
        #: the job runner (kernelpit.jobs.JobRunner) when the pool keeps a job store
        self.runner: Any = None

    async def open_job_store(self, target: Any = None, blob_dir: str | None = None) -> Any:
        """Open the job store at ``target`` (a path or URL; None: the default SQLite file),
        namespaced by the pools' names and adapters.  Called before the manager starts, so a
        bad store fails at once (StoreError naming it and what to do)."""
        from .jobs import namespace_of, open_store

        return await open_store(target, namespace=namespace_of(self.manager.configs),
                                blob_dir=blob_dir)

    async def start_jobs(self, store: Any, **runner_settings: Any) -> Any:
        """Run jobs on the opened ``store`` (after the manager started); returns the
        :class:`~kernelpit.jobs.JobRunner`.  The store is closed if the runner cannot start."""
        from .jobs import JobRunner

        try:
            self.runner = await JobRunner(self.manager, store, **runner_settings).start()
        except BaseException:
            await store.close()
            raise
        return self.runner

    async def stop_jobs(self, grace: float = 0.0) -> None:
        """Stop the runner (running jobs get ``grace`` seconds, then are left to the next
        start on the store) and close its store."""
        runner, self.runner = self.runner, None
        if runner is not None:
            try:
                await runner.stop(grace)
            finally:
                await runner.store.close()

    def _jobs(self) -> Any:
        if self.runner is None:
            raise JobsDisabled(
                "this pool keeps no job store, so it cannot run durable jobs; pass one: "
                "kernelpit.Pool(..., store='jobs.sqlite') (a SQLite path, or a "
                "postgresql:// URL), or use a bridge (`kernelpit serve` keeps one by default)")
        return self.runner

    # -- durable jobs ---------------------------------------------------------------------------
    async def submit(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions,
                     key: str | None = None) -> JobInfo:
        return await self._jobs().submit(tool, args, kwargs, options, key=key)

    async def job(self, job_id: str) -> JobInfo:
        return await self._jobs().get(job_id)

    async def jobs(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        return await self._jobs().list(state, tool, limit, before)

    def job_events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        return self._jobs().events(job_id, after)

    async def job_result(self, job_id: str, timeout: float | None = None) -> Any:
        return await self._jobs().result(job_id, timeout)

    async def cancel_job(self, job_id: str) -> JobInfo:
        return await self._jobs().cancel(job_id)

    async def delete_job(self, job_id: str) -> None:
        await self._jobs().delete(job_id)

    # -- calls: the manager's own coroutines, handed over as they are (no extra frame on the
    # hot path: these are plain functions that return them) -----------------------------------
    def call(self, tool: str, args: Any, kwargs: dict[str, Any],  # type: ignore[override]
             options: CallOptions) -> Awaitable[Any]:
        return self.manager.call(tool, args, kwargs, options)

    def stream(self, tool: str, args: Any, kwargs: dict[str, Any],
               options: CallOptions) -> AsyncIterator[Event]:
        return self.manager.stream(tool, args, kwargs, options)

    def map(self, tool: str, columns: list[list[Any]], options: CallOptions,  # type: ignore[override]
            chunksize: int | None) -> Awaitable[list[Any]]:
        return self.manager.map(tool, columns, options, chunksize)

    # -- sessions -------------------------------------------------------------------------------
    async def open_session(self, pool: str | None, ttl: float | None, metadata: dict[str, str],
                           session_id: str | None = None) -> SessionInfo:
        return await self.manager.open_session(pool, ttl, metadata, session_id)

    async def close_session(self, session_id: str) -> SessionInfo:
        return await self.manager.close_session(session_id)

    async def get_session(self, session_id: str) -> SessionInfo:
        return self.manager.get_session(session_id)

    async def sessions(self) -> list[SessionInfo]:
        return self.manager.list_sessions()

    # -- introspection ----------------------------------------------------------------------------
    async def tools(self, pool: str | None = None) -> list[ToolInfo]:
        return self.manager.tools(pool)

    async def describe(self, name: str, pool: str | None = None) -> ToolInfo:
        tools = self.manager.tools(pool)
        for tool in tools:
            if tool.name == name:
                return tool
        close = difflib.get_close_matches(name, [t.name for t in tools], n=3)
        hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
        raise ToolNotFound(f"no tool named '{name}'{hint}", tool=name)

    async def workers(self, pool: str | None = None) -> list[WorkerInfo]:
        return [w for w in self.manager.workers() if pool is None or w.pool == pool]

    def worker_states(self) -> dict[int, str]:
        """Every worker's state, without sampling its process (cheap enough for 10 Hz)."""
        return {w.id: w.state for g in self.manager.groups.values() for w in g.workers.values()}

    def subscribe(self, kinds: list[str] | None = None) -> AsyncIterator[TelemetryEvent]:
        subscription = self.manager.telemetry.subscribe(kinds)
        subscription.on_start = self._end_subscriptions_on_close
        return subscription

    def _end_subscriptions_on_close(self) -> None:
        """Subscriptions end when the pool (or the bridge serving it) starts to stop, not
        only when its manager has closed: a bridge's drain must not wait for them."""
        if self._closer is None:
            async def close_bus() -> None:
                await self.closing.wait()
                self.manager.telemetry.close()
            self._closer = asyncio.ensure_future(close_bus())

    def watch(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        if self._hub is None:
            self._hub = WatchHub(self.worker_states, self.manager.workers,
                                 self.manager.list_sessions, self.closing,
                                 self.manager.tenant_loads)
        return self._hub.subscribe(interval)

    # -- control ------------------------------------------------------------------------------------
    async def interrupt(self, worker_id: int) -> None:
        await self.manager.interrupt(worker_id)

    async def restart(self, worker_id: int) -> None:
        await self.manager.restart(worker_id)

    async def recycle(self, worker_id: int) -> None:
        await self.manager.recycle(worker_id)

    async def reload(self, pool: str | None = None) -> int:
        return await self.manager.reload(pool)

    async def untaint(self, tool: str, pool: str | None = None) -> bool:
        return self.manager.untaint(tool, pool)

    async def drain(self, grace: float) -> None:
        """Wait up to ``grace`` seconds for the calls in flight to end."""
        pending = [c.future for c in list(self.manager.calls.values())]
        if pending and grace > 0:
            await asyncio.wait(pending, timeout=grace)

    async def shutdown(self, grace: float | None = None) -> None:
        await self.stop_jobs(grace or 0.0)
        await self.drain(grace or 0.0)
        await self.close()

    async def close(self) -> None:
        self.closing.set()
        await self.stop_jobs()
        await self.manager.close()


class AsyncPool(AsyncHandle):
    """A pool of worker kernels, used from asyncio::

        async with kernelpit.aio.Pool(adapters=["mytools"], workers=2) as pool:
            await pool.call("add", a=1, b=2)

    Takes the same arguments as :class:`kernelpit.Pool`.
    """

    _backend: LocalBackend

    def __init__(self, adapters: Any = (), workers: int | None = None, *,
                 pools: dict[str, Any] | None = None, metrics: Any = False,
                 scheduler: SchedulerConfig | None = None, store: Any = None,
                 job_ttl: float | None = 7 * 86400.0, ray_address: str | None = None,
                 **settings: Any) -> None:
        manager = PoolManager(build_configs(adapters, workers, pools, settings), scheduler,
                              ray_address)
        self._metrics = None
        if metrics:
            from .telemetry.metrics import attach
            self._metrics = attach(manager, metrics)
        self._store = None if store is None else str(store)
        self._job_ttl = job_ttl
        super().__init__(LocalBackend(manager))

    @property
    def run_id(self) -> str:
        return self._backend.manager.run_id

    async def start(self) -> "AsyncPool":
        """Start every worker concurrently; returns when all are ready (or raises StartError)."""
        backend = self._backend
        if not backend.manager.started:
            # a bad store fails here, before any kernel starts
            store = None if self._store is None else await backend.open_job_store(self._store)
            try:
                await backend.manager.start()
            except BaseException:
                if store is not None:
                    await store.close()
                raise
            if store is not None:
                await backend.start_jobs(store, job_ttl=self._job_ttl)
                if self._metrics is not None:
                    self._metrics.add_jobs(backend.runner)
            self._close_at_loop_end("a kernelpit.aio.Pool")
        return self

    async def __aenter__(self) -> "AsyncPool":
        return await self.start()


class PoolPortal(Portal):
    """A Portal that starts an embedded pool's blocking tool calls from a callback.

    ``Portal.call`` runs a coroutine: a hand-off to the loop (``run_coroutine_threadsafe``), a
    task, three passes of the loop and a ``Condition`` per call, about 0.2 ms on a 2-core VM
    where the pool's own round trip to a worker takes 0.25.  A tool call needs none of it:
    the loop accepts and starts it (:meth:`PoolManager.begin`) in one callback, and the
    call's future releases the waiting thread's lock when it ends.  Ctrl-C cancels the call
    as on the asyncio path.  Traced calls keep the coroutine path (their span is a
    coroutine's); the calling logic stays in :class:`PoolManager`.
    """

    def call(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        caller = self.tool_call(fn)
        if (caller is not None and isinstance(caller._backend, LocalBackend)
                and tracing.tracer() is None):
            self._check_usable()  # not from the loop's own thread, nor once it is closed
            return _Handoff(caller._backend.manager).run(self.loop, args[0], args[1:], kwargs,
                                                         caller._options)
        return super().call(fn, *args, **kwargs)


class _Handoff:
    """One blocking call: handed to the loop and waited for (:meth:`run`), started there
    (:meth:`start`); ``done`` is released when it ends or is refused."""

    __slots__ = ("manager", "done", "call", "result", "error")

    def __init__(self, manager: PoolManager) -> None:
        self.manager = manager
        self.done = threading.Lock()
        self.done.acquire()
        self.call: Any = None
        self.result: Any = None
        self.error: BaseException | None = None

    def start(self, tool: str, args: Any, kwargs: dict[str, Any], options: CallOptions) -> None:
        """On the loop: accept and start the call (or keep why it was refused)."""
        try:
            self.call = self.manager.begin(tool, args, kwargs, options)
        except BaseException as exc:
            self.error = exc
            self.done.release()
            return
        self.call.future.add_done_callback(self._ended)

    def _ended(self, future: asyncio.Future[Any]) -> None:
        if future.cancelled():
            self.error = asyncio.CancelledError()
        else:
            self.error = future.exception()
            if self.error is None:
                self.result = future.result()
        self.done.release()

    def _abandon(self) -> None:
        """On the loop, after Ctrl-C in the waiting thread (so after :meth:`start`, if that
        was handed over: the loop runs callbacks in order): stop the call if it runs."""
        if self.call is None:
            if self.error is None:  # never handed over: nothing will release the waiter
                self.done.release()
        elif not self.call.future.done():
            self.manager.cancel(self.call)

    def run(self, loop: asyncio.AbstractEventLoop, tool: str, args: Any,
            kwargs: dict[str, Any], options: CallOptions) -> Any:
        """From the calling thread: hand the call to ``loop`` and wait for its outcome."""
        try:  # Ctrl-C between the hand-off and the wait must cancel too
            loop.call_soon_threadsafe(self.start, tool, args, kwargs, options)
            self.done.acquire()
        except KeyboardInterrupt:
            loop.call_soon_threadsafe(self._abandon)
            self.done.acquire(timeout=5)
            raise
        if self.error is not None:
            raise self.error
        return self.result


class Pool(Handle):
    """A pool of worker kernels owned by this process.

    ::

        with kernelpit.Pool(adapters=["mytools"], workers=2) as pool:
            pool.call("add", a=1, b=2)

    Arguments are those of :class:`~kernelpit.config.PoolConfig` (``adapters``,
    ``workers``, ``concurrency``, ``queue_size``, ``kernelspec``, ``python``,
    ``env``, ``cwd``, ...) for the default pool, plus ``pools={name: {...}}``
    for named pools.  ``store=`` (a SQLite path or a ``postgresql://`` URL) turns on
    durable jobs (``pool.submit``; see docs/jobs.md), kept ``job_ttl`` seconds after they
    finish (default 7 days; None: forever); a job ends with this process, and is re-run
    at the next start on the same store when idempotent (``lost`` otherwise).
    ``placement="ray"`` (with ``resources={...}``) places the workers on a Ray cluster,
    joined at ``ray_address`` (``"auto"`` or ``"host:port"``; one per process); see
    docs/scale-out.md.  ``metrics=True`` publishes the pool's Prometheus metrics on
    prometheus_client's default registry, ``metrics=registry`` on that one (see
    docs/observability.md).  ``scheduler=SchedulerConfig(...)`` sets how tenants
    (``options(tenant=...)``) share the workers: weights, quotas, ``fair`` or ``fifo``.
    The constructor returns once every worker is ready.
    """

    _async: AsyncPool

    def __init__(self, adapters: Any = (), workers: int | None = None, *,
                 pools: dict[str, Any] | None = None, **settings: Any) -> None:
        portal = PoolPortal()
        try:
            target = portal.call(_make_pool, adapters, workers, pools, settings)
        except BaseException:
            portal.stop()
            raise
        super().__init__(portal, target)

    @property
    def run_id(self) -> str:
        return self._async.run_id

    def __enter__(self) -> "Pool":
        return self


async def _make_pool(adapters: Any, workers: int | None, pools: Any,
                     settings: dict[str, Any]) -> AsyncPool:
    pool = AsyncPool(adapters, workers, pools=pools, **settings)
    try:
        await pool.start()
    except BaseException:
        await pool.close()
        raise
    return pool
