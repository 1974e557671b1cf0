"""The asyncio API, written once over a :class:`~kernelpit.backend.Backend`.

:class:`AsyncCaller` has ``call`` / ``stream`` / ``map`` / ``options`` /
``session``; :class:`AsyncHandle` adds introspection, control and ``close``:
it is ``kernelpit.aio.Pool`` (over the embedded backend) and the client of
``kernelpit.aio.connect()`` (over a bridge).  The blocking classes in
:mod:`kernelpit.sync` drive these same objects from a background event loop.
"""

from __future__ import annotations

from typing import Any, AsyncIterator, Iterable

from .backend import Backend
from .events import Event
from .info import SessionInfo, ToolInfo, WorkerInfo
from .jobs.model import JobEvent, JobInfo
from .loop_end import LoopEnd
from .options import CallOptions
from .telemetry import tracing
from .telemetry.events import TelemetryEvent
from .watch import WatchEvent


class AsyncCaller:
    """Runs tools.  Options bound with :meth:`options` apply to every call made through it."""

    def __init__(self, backend: Backend, options: CallOptions | None = None,
                 key: str | None = None) -> None:
        self._backend = backend
        self._options = options or CallOptions()
        self._key = key

    def options(self, **options: Any) -> "AsyncCaller":
        """A caller with call options set: ``deadline``, ``session`` (a session or its id),
        ``pool``, ``worker``, ``idempotent`` (see :class:`~kernelpit.options.CallOptions`),
        and for :meth:`submit` ``key`` (an idempotency key).

        Options never collide with a tool's own parameter names::

            await pool.options(deadline=2.0).call("train", epochs=3)
        """
        key, options = _split_options(self._key, options)
        return AsyncCaller(self._backend, self._options.merged(**options), key)

    async def submit(self, tool: str, /, *args: Any, **kwargs: Any) -> "AsyncJob":
        """Run ``tool`` as a durable job and return its handle at once.

        The job is stored before it runs and outlives this caller: closing the client or
        ending this process does not cancel it (an embedded pool's jobs end with its
        process, and are re-run at its next start when idempotent).  The options apply:
        ``deadline`` counts from submission, ``idempotent`` allows a re-run after a crash,
        ``session`` runs it in a session, ``key`` returns the existing job of that key
        when the arguments are equal (InvalidArguments naming the key otherwise).
        See docs/jobs.md.
        """
        info = await self._backend.submit(tool, args, kwargs, self._options, self._key)
        return AsyncJob(self._backend, info)

    async def call(self, tool: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``tool`` with the given arguments and return its result."""
        if tracing.tracer() is None:
            return await self._backend.call(tool, args, kwargs, self._options)
        return await tracing.traced_call(self._backend.call, tool, args, kwargs, self._options)

    def stream(self, tool: str, /, *args: Any, **kwargs: Any) -> AsyncIterator[Event]:
        """Run ``tool`` and iterate over its events; the last one is ``result`` or ``error``.

        A consumer that falls behind gets the latest progress next (waiting progress events
        coalesce); every other event, the last progress before it and the final progress
        always arrive, in order.  Leaving the loop early cancels the call (the tool is
        interrupted).
        """
        if tracing.tracer() is None:
            return self._backend.stream(tool, args, kwargs, self._options)
        return tracing.traced_stream(
            lambda: self._backend.stream(tool, args, kwargs, self._options), tool)

    async def map(self, tool: str, /, *iterables: Iterable[Any],
                  chunksize: int | None = None) -> list[Any]:
        """``[tool(*xs) for xs in zip(*iterables)]``, run across the pool; results in order.

        Items travel in chunks (``chunksize`` items per message to a worker;
        by default about four chunks per worker slot), so many small items
        cost little more than one call each chunk.  The first failing item's
        exception is raised, with ``.map_index`` naming the item.
        """
        if tracing.tracer() is None:
            return await self._backend.map(tool, _columns(iterables), self._options, chunksize)
        return await tracing.traced_call(self._backend.map, tool, _columns(iterables),
                                         self._options, chunksize, what="map")

    def session(self, *, ttl: float | None = None, metadata: dict[str, str] | None = None,
                pool: str | None = None, id: str | None = None) -> "AsyncSession":
        """A session: every call in it runs on the same worker, so state survives between calls.

        Use ``async with pool.session() as s:`` or ``s = await pool.session()``.
        ``ttl`` closes it after that many idle seconds.
        """
        return AsyncSession(self._backend, self._options, pool=pool, ttl=ttl,
                            metadata=metadata or {}, session_id=id)


class AsyncSession(AsyncCaller):
    """Calls pinned to the worker holding the session.  Close it to free its state."""

    def __init__(self, backend: Backend, options: CallOptions, *, pool: str | None,
                 ttl: float | None, metadata: dict[str, str], session_id: str | None) -> None:
        super().__init__(backend, options)
        self._spec = (pool, ttl, metadata, session_id)
        self.info: SessionInfo | None = None
        self._closed = False

    @property
    def id(self) -> str:
        if self.info is None:
            raise RuntimeError("the session is not open yet: `await` it or use `async with`")
        return self.info.id

    @property
    def worker(self) -> int:
        assert self.info is not None
        return self.info.worker

    async def open(self) -> "AsyncSession":
        if self.info is None:
            self.info = await self._backend.open_session(*self._spec)
            self._options = self._options.merged(session=self.info.id)
        return self

    def __await__(self):
        return self.open().__await__()

    async def close(self) -> None:
        """Close the session; its worker drops its session state."""
        if self.info is not None and not self._closed:
            self._closed = True
            try:
                await self._backend.close_session(self.info.id)
            except Exception:  # already expired, or its worker died: nothing left to free
                pass

    def options(self, **options: Any) -> AsyncCaller:
        if self.info is None:
            raise RuntimeError("open the session before deriving options from it")
        key, options = _split_options(self._key, options)
        return AsyncCaller(self._backend, self._options.merged(**options), key)

    async def __aenter__(self) -> "AsyncSession":
        return await self.open()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()


def _split_options(key: str | None, options: dict[str, Any]) -> tuple[str | None,
                                                                       dict[str, Any]]:
    """The job ``key`` (kept by the caller: it is no call option) and the call options,
    with a session object given as ``session=`` turned into its id."""
    options = dict(options)
    if "key" in options:
        key = options.pop("key")
        if key is not None and not isinstance(key, str):
            raise TypeError(f"key= takes a str (an idempotency key), got {type(key).__name__}")
    session = options.get("session")
    if session is not None and not isinstance(session, str):
        sid = getattr(session, "id", None)
        if not isinstance(sid, str):
            raise TypeError(f"session= takes a session or its id, got {type(session).__name__}")
        options["session"] = sid
    return key, options


class AsyncJob:
    """A durable job: ``id`` names it everywhere (``pool.job(id)`` in any process or
    client gives the same handle).  Every method reads the store, so it is current.

    ``await job.status()`` is its state: queued, running, succeeded, failed, cancelled
    or lost.
    """

    def __init__(self, backend: Backend, info: JobInfo) -> None:
        self._backend = backend
        self.id = info.id
        self.tool = info.tool

    async def status(self) -> str:
        """The job's state now."""
        return (await self._backend.job(self.id)).state

    async def info(self) -> JobInfo:
        """The job now: state, attempt, times, worker, last progress, error."""
        return await self._backend.job(self.id)

    async def result(self, timeout: float | None = None) -> Any:
        """Wait for the job's value; raises what the call would have raised (JobLost when
        the job was lost), or the builtin TimeoutError after ``timeout`` seconds (the job
        keeps running)."""
        return await self._backend.job_result(self.id, timeout)

    def events(self, after: int = 0) -> AsyncIterator[JobEvent]:
        """The job's journal after seq ``after`` (seq 1, 2, 3, ... with no gap), then its
        events live until it ends: pool.stream()'s kinds plus ``restarted`` (``.attempt``).
        Leaving the loop stops following; the job runs on."""
        return self._backend.job_events(self.id, after)

    async def cancel(self) -> JobInfo:
        """Cancel the job (the tool is interrupted); a finished job is left as it is."""
        return await self._backend.cancel_job(self.id)

    def __repr__(self) -> str:
        return f"<Job {self.id} {self.tool}()>"


def _columns(iterables: tuple[Iterable[Any], ...]) -> list[list[Any]]:
    """The argument columns of ``map``, cut to the shortest iterable as ``zip`` does."""
    if not iterables:
        raise TypeError("map() needs at least one iterable of arguments after the tool name")
    columns = [list(it) for it in iterables]
    n = min(map(len, columns))
    return [c if len(c) == n else c[:n] for c in columns]


class AsyncHandle(AsyncCaller):
    """A pool, embedded or behind a bridge: calling, plus introspection, control and close."""

    _loop_end: LoopEnd | None = None  # closes it if its loop ends first (see kernelpit.loop_end)

    def _close_at_loop_end(self, what: str) -> None:
        """Once open (called on its loop): close at the loop's end if the program did not."""
        if self._loop_end is None:
            self._loop_end = LoopEnd(self.close, what)

    async def tools(self, pool: str | None = None) -> list[ToolInfo]:
        """The tools served (of one named pool), with name, doc, signature and parameter schema."""
        return await self._backend.tools(pool)

    async def describe(self, name: str, pool: str | None = None) -> ToolInfo:
        """One tool's description; ToolNotFound (naming close matches) when there is none."""
        return await self._backend.describe(name, pool)

    async def workers(self, pool: str | None = None) -> list[WorkerInfo]:
        """A health snapshot of every worker (of one named pool)."""
        return await self._backend.workers(pool)

    async def sessions(self) -> list[SessionInfo]:
        """Open sessions (including lost ones, until closed)."""
        return await self._backend.sessions()

    async def get_session(self, session_id: str) -> SessionInfo:
        """One session by id; SessionNotFound when it was closed or expired."""
        return await self._backend.get_session(session_id)

    async def close_session(self, session_id: str) -> SessionInfo:
        """Close a session by id (one opened elsewhere, or by ``%%kp``)."""
        return await self._backend.close_session(session_id)

    def watch(self, interval: float = 0.0) -> AsyncIterator[WatchEvent]:
        """Pool state changes (Snapshot, WorkerChanged, SessionChanged) as they happen, and a
        Snapshot every ``interval`` seconds (default 2); leave the loop to stop."""
        return self._backend.watch(interval)

    def subscribe(self, kinds: list[str] | str | None = None) -> AsyncIterator[TelemetryEvent]:
        """Telemetry events as they happen: workers starting, ready, recycled, crashed,
        unhealthy; tools tainted and untainted; calls queued, started and finished (with
        durations and outcome); sessions opened and closed; orphans reaped.  ``kinds``: names
        or prefixes such as ``"worker.*"`` (None: all).  See docs/observability.md.  A
        subscriber that falls behind loses events (never slowing the pool) and is told so by
        a ``telemetry.dropped`` event.  Leave the loop to stop."""
        return self._backend.subscribe([kinds] if isinstance(kinds, str) else kinds)

    async def job(self, job_id: str) -> AsyncJob:
        """The handle of a job submitted from anywhere (this process or another, this
        client or another); JobNotFound when the store has no such job."""
        return AsyncJob(self._backend, await self._backend.job(job_id))

    async def jobs(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        """Jobs, newest first (of one ``state`` / ``tool``); page with ``before`` = the id of
        the last job of the previous page."""
        return await self._backend.jobs(state, tool, limit, before)

    async def delete_job(self, job_id: str) -> None:
        """Remove a finished job, its journal and stored values (its key is free again)."""
        await self._backend.delete_job(job_id)

    async def interrupt(self, worker_id: int) -> None:
        """Interrupt a worker: cancel its tool calls and SIGINT its kernel."""
        await self._backend.interrupt(worker_id)

    async def restart(self, worker_id: int) -> None:
        """Kill a worker now; a fresh one takes its place."""
        await self._backend.restart(worker_id)

    async def recycle(self, worker_id: int) -> None:
        """Replace a worker without downtime: its successor starts first, then it drains."""
        await self._backend.recycle(worker_id)

    async def reload(self, pool: str | None = None) -> int:
        """Load the adapters' code anew after editing it: every serving worker of ``pool``
        (None: all pools) is recycled onto the code on disk now (a forking pool builds a
        new zygote first).  Returns how many workers are being recycled."""
        return await self._backend.reload(pool)

    async def untaint(self, tool: str, pool: str | None = None) -> bool:
        """Lift the crash quarantine of ``tool`` now (ToolTainted); True when there was one."""
        return await self._backend.untaint(tool, pool)

    async def shutdown(self, grace: float | None = None) -> None:
        """Stop the pool itself (for a client: the bridge and its pool); calls in flight get
        ``grace`` seconds to finish."""
        await self._backend.shutdown(grace)

    async def close(self) -> None:
        """Release this handle: an embedded pool stops its kernels; a client closes its
        connection (the bridge runs on).  Safe to call twice."""
        loop_end, self._loop_end = self._loop_end, None
        if loop_end is not None:
            await loop_end.release()
        await self._backend.close()

    async def __aenter__(self) -> "AsyncHandle":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()
