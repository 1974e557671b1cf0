"""Blocking twins of the asyncio API, driven through a background event loop.

Each blocking object wraps its asyncio twin and runs it on a :class:`Portal`,
a thread running an event loop.  No calling logic lives here: only the
hand-off between threads, which also turns Ctrl-C in a blocking call into a
cancel of the call (the tool is interrupted) before re-raising it.
"""

from __future__ import annotations

import asyncio
import atexit
import concurrent.futures
import queue
import threading
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, TypeVar

from .caller import AsyncCaller, AsyncSession
from .events import Event
from .info import SessionInfo, ToolInfo, WorkerInfo
from .local import AsyncPool

T = TypeVar("T")
_DONE = object()


class Portal:
    """An event loop on a daemon thread, and ways to run coroutines on it from outside."""

    def __init__(self, name: str = "kernelpit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await fn(*args, **kwargs)`` on the loop and wait for it."""
        fut = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop)
        try:
            return fut.result()
        except KeyboardInterrupt:
            fut.cancel()
            concurrent.futures.wait([fut], timeout=5)
            raise

    def iterate(self, agen: AsyncIterator[T]) -> Iterator[T]:
        """Iterate an async iterator from this thread; closing early cancels it."""
        items: queue.SimpleQueue[Any] = queue.SimpleQueue()

        async def pump() -> None:
            try:
                async for item in agen:
                    items.put(item)
            except BaseException as exc:  # noqa: BLE001 - handed to the consumer
                items.put(_Raise(exc))
            finally:
                items.put(_DONE)
                aclose = getattr(agen, "aclose", None)
                if aclose is not None:
                    await aclose()

        fut = asyncio.run_coroutine_threadsafe(pump(), self.loop)
        try:
            while True:
                item = items.get()
                if item is _DONE:
                    return
                if isinstance(item, _Raise):
                    if isinstance(item.exc, asyncio.CancelledError):
                        return
                    raise item.exc
                yield item
        finally:
            if not fut.done():
                fut.cancel()
                concurrent.futures.wait([fut], timeout=5)

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class _Raise:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


class Caller:
    """Blocking twin of :class:`~kernelpit.caller.AsyncCaller`."""

    def __init__(self, portal: Portal, caller: AsyncCaller) -> None:
        self._portal = portal
        self._async = caller

    def options(self, **options: Any) -> "Caller":
        """A caller with call options set: ``deadline``, ``session``, ``pool``, ``worker``,
        ``idempotent``, ``display`` (show the call live: a panel in a notebook, a text bar in a
        terminal)."""
        return Caller(self._portal, self._async.options(**options))

    def call(self, tool: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``tool`` and return its result; Ctrl-C cancels it."""
        if self._async._options.display:
            from .widgets.stream import display_call
            return display_call(self, tool, args, kwargs)
        return self._portal.call(self._async.call, tool, *args, **kwargs)

    def stream(self, tool: str, /, *args: Any, **kwargs: Any) -> Iterator[Event]:
        """Run ``tool`` and iterate over its events; leaving the loop early cancels it."""
        if self._async._options.display:
            from .widgets.stream import display_stream
            return display_stream(self, tool, args, kwargs)
        return self._portal.iterate(self._async.stream(tool, *args, **kwargs))

    def map(self, tool: str, /, *iterables: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[tool(*xs) for xs in zip(*iterables)]`` across the pool, in chunks; results in order."""
        return self._portal.call(self._async.map, tool, *(list(it) for it in iterables),
                                 chunksize=chunksize)

    def session(self, *, ttl: float | None = None, metadata: dict[str, str] | None = None,
                pool: str | None = None, id: str | None = None) -> "Session":
        """Open a session: its calls all run on one worker.  Use as a context manager."""
        session = self._async.session(ttl=ttl, metadata=metadata, pool=pool, id=id)
        self._portal.call(session.open)
        return Session(self._portal, session)


class Session(Caller):
    """Blocking twin of :class:`~kernelpit.caller.AsyncSession`."""

    _async: AsyncSession

    @property
    def id(self) -> str:
        return self._async.id

    @property
    def worker(self) -> int:
        return self._async.worker

    @property
    def info(self) -> SessionInfo | None:
        return self._async.info

    def close(self) -> None:
        self._portal.call(self._async.close)

    def __enter__(self) -> "Session":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_open_handles: "weakref.WeakSet[Handle]" = weakref.WeakSet()


@atexit.register
def _close_leftovers() -> None:
    for handle in list(_open_handles):
        try:
            handle.close()
        except Exception:
            pass


class Handle(Caller):
    """What blocking pools and clients add to calling: introspection, control, close."""

    def __init__(self, portal: Portal, target: Any) -> None:
        super().__init__(portal, target)
        self._closed = False
        _open_handles.add(self)

    def tools(self, pool: str | None = None) -> list[ToolInfo]:
        """The tools served, with name, doc, signature and parameter schema."""
        return self._portal.call(self._async.tools, pool)

    def workers(self) -> list[WorkerInfo]:
        """A health snapshot of every worker."""
        return self._portal.call(self._async.workers)

    def sessions(self) -> list[SessionInfo]:
        """Open sessions."""
        return self._portal.call(self._async.sessions)

    def interrupt(self, worker_id: int) -> None:
        """Interrupt a worker: cancel its tool calls and SIGINT its kernel."""
        self._portal.call(self._async.interrupt, worker_id)

    def restart(self, worker_id: int) -> None:
        """Kill a worker now; a fresh one takes its place."""
        self._portal.call(self._async.restart, worker_id)

    def recycle(self, worker_id: int) -> None:
        """Replace a worker without downtime: its successor starts first, then it drains."""
        self._portal.call(self._async.recycle, worker_id)

    def close(self) -> None:
        """Close and release everything.  Safe to call twice."""
        if self._closed:
            return
        self._closed = True
        try:
            self._portal.call(self._async.close)
        finally:
            self._portal.stop()
            _open_handles.discard(self)

    def __enter__(self) -> "Handle":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


class Pool(Handle):
    """A pool of worker kernels owned by this process.

    ::

        with kernelpit.Pool(adapters=["mytools"], workers=2) as pool:
            pool.call("add", a=1, b=2)

    Arguments are those of :class:`~kernelpit.config.PoolConfig` (``adapters``,
    ``workers``, ``concurrency``, ``queue_size``, ``kernelspec``, ``python``,
    ``env``, ``cwd``, ...) for the default pool, plus ``pools={name: {...}}``
    for named pools.  The constructor returns once every worker is ready.
    """

    _async: AsyncPool

    def __init__(self, adapters: Any = (), workers: int | None = None, *,
                 pools: dict[str, Any] | None = None, **settings: Any) -> None:
        portal = Portal()
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
