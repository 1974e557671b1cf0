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
import functools
import threading
import weakref
from typing import Any, AsyncIterator, Awaitable, Callable, Iterable, Iterator, TypeVar

from .backlog import BlockingBacklog
from .caller import AsyncCaller, AsyncHandle, AsyncJob, AsyncSession
from .events import Event
from .exceptions import PoolClosed
from .info import SessionInfo
from .telemetry import tracing

T = TypeVar("T")
_DONE = object()


class Portal:
    """An event loop on a daemon thread, and ways to run coroutines on it from outside."""

    def __init__(self, name: str = "kernelpit-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, name=name, daemon=True)
        self._thread.start()

    @staticmethod
    def tool_call(fn: Any) -> AsyncCaller | None:
        """The caller whose ``call`` ``fn`` is (a subclass may run such a tool call its own
        way, without a coroutine), or None for anything else."""
        return fn.__self__ if getattr(fn, "__func__", None) is AsyncCaller.call else None

    def _check_usable(self) -> None:
        """Refuse a blocking call that could never end: one from the loop's own thread, or
        one after the loop stopped (its pool was closed)."""
        if threading.current_thread() is self._thread:
            raise RuntimeError("a blocking Kernelpit call was made from the pool's own event loop "
                               "thread (e.g. from a callback running on it), where it would wait "
                               "for itself forever; use the kernelpit.aio API there instead")
        if self.loop.is_closed() or not self._thread.is_alive():
            raise PoolClosed("this pool is closed, so it runs nothing more; open a new one "
                             "(kernelpit.Pool(...), or a `with` block around its use)")

    def call(self, fn: Callable[..., Awaitable[T]], *args: Any, **kwargs: Any) -> T:
        """Run ``await fn(*args, **kwargs)`` on the loop and wait for it."""
        self._check_usable()
        fn = tracing.carry(fn)  # the caller's trace context goes with it (when tracing is on)
        fut: concurrent.futures.Future[T] | None = None
        try:  # Ctrl-C between the hand-off and the wait must cancel too
            fut = asyncio.run_coroutine_threadsafe(fn(*args, **kwargs), self.loop)
            return fut.result()
        except KeyboardInterrupt:
            if fut is not None:
                fut.cancel()
                concurrent.futures.wait([fut], timeout=5)
            raise

    def iterate(self, agen: AsyncIterator[T]) -> "BlockingStream[T]":
        """Iterate an async iterator from this thread; closing early cancels it."""
        self._check_usable()
        return BlockingStream(self.loop, tracing.carry_iter(agen))

    def stop(self) -> None:
        if self.loop.is_running():
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(timeout=10)
        if not self.loop.is_running():
            self.loop.close()


class BlockingStream(Iterator[T]):
    """An async iterator, run on a portal's loop and consumed from a blocking thread.

    ``close()`` may be called from any thread: it cancels the iteration (and so the call
    or RPC behind it), and the consuming loop then ends.  Items wait for the consuming thread
    in a :class:`~kernelpit.backlog.BlockingBacklog`: a consumer that falls behind a flood
    of progress gets the latest progress next, and everything else in order.
    """

    def __init__(self, loop: asyncio.AbstractEventLoop, agen: AsyncIterator[T]) -> None:
        # The pump holds only the queue, never this object: dropping the iterator (a `break`
        # out of a for loop) must free it at once, and __del__ then cancels the call.
        self._items = items = BlockingBacklog()
        self._finished = False

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

        self._fut = asyncio.run_coroutine_threadsafe(pump(), loop)

    def __iter__(self) -> "BlockingStream[T]":
        return self

    def __next__(self) -> T:
        if self._finished:
            raise StopIteration
        try:
            item = self._items.get()
        except BaseException:  # Ctrl-C while waiting: cancel, then re-raise
            self.close()
            raise
        if item is _DONE:
            self._finished = True
            raise StopIteration
        if isinstance(item, _Raise):
            self._finished = True
            if isinstance(item.exc, asyncio.CancelledError):
                raise StopIteration
            raise item.exc
        return item

    def close(self) -> None:
        """Stop early (from any thread): the iteration is cancelled and the consumer's loop ends."""
        if not self._fut.done():
            self._fut.cancel()
            concurrent.futures.wait([self._fut], timeout=5)
        self._items.put(_DONE)

    def __del__(self) -> None:
        if not self._fut.done():
            self._fut.cancel()


class _Raise:
    def __init__(self, exc: BaseException) -> None:
        self.exc = exc


def blocking(method: Callable[..., Awaitable[T]]) -> Callable[..., T]:
    """The blocking twin of an async method of the asyncio API: same name, signature and
    docstring, run on the handle's portal."""
    name = method.__name__

    @functools.wraps(method)
    def twin(self: Any, *args: Any, **kwargs: Any) -> T:
        return self._portal.call(getattr(self._async, name), *args, **kwargs)
    return twin


def iterating(method: Callable[..., AsyncIterator[T]]) -> Callable[..., "BlockingStream[T]"]:
    """The blocking twin of a method that returns an async iterator."""
    name = method.__name__

    @functools.wraps(method)
    def twin(self: Any, *args: Any, **kwargs: Any) -> BlockingStream[T]:
        return self._portal.iterate(getattr(self._async, name)(*args, **kwargs))
    return twin


class Caller:
    """Blocking twin of :class:`~kernelpit.caller.AsyncCaller`.

    ``display=True`` is an option of the blocking API alone: the call shows itself live
    (a panel in a notebook, a text bar in a terminal; :mod:`kernelpit.widgets.stream`)
    and returns or yields what it would have anyway.  It never reaches the backend.
    """

    def __init__(self, portal: Portal, caller: AsyncCaller, display: bool = False) -> None:
        self._portal = portal
        self._async = caller
        self._display = display

    def options(self, *, display: bool | None = None, **options: Any) -> "Caller":
        """A caller with call options set: ``deadline``, ``session`` (a session or its id),
        ``pool``, ``worker``, ``idempotent``, ``key`` (for :meth:`submit`), and ``display``
        (show the call live: a panel in a notebook, a text bar in a terminal)."""
        return Caller(self._portal, self._async.options(**options),
                      self._display if display is None else display)

    def call(self, tool: str, /, *args: Any, **kwargs: Any) -> Any:
        """Run ``tool`` and return its result; Ctrl-C cancels it."""
        if self._display:
            from .widgets.stream import display_call
            return display_call(self.options(display=False), tool, args, kwargs)
        return self._portal.call(self._async.call, tool, *args, **kwargs)

    def stream(self, tool: str, /, *args: Any, **kwargs: Any) -> Iterator[Event]:
        """Run ``tool`` and iterate over its events; leaving the loop early (or ``close()``
        on the iterator, from any thread) cancels it."""
        if self._display:
            from .widgets.stream import display_stream
            return display_stream(self.options(display=False), tool, args, kwargs)
        return self._portal.iterate(self._async.stream(tool, *args, **kwargs))

    def map(self, tool: str, /, *iterables: Iterable[Any], chunksize: int | None = None) -> list[Any]:
        """``[tool(*xs) for xs in zip(*iterables)]`` across the pool, in chunks; results in order."""
        return self._portal.call(self._async.map, tool, *(list(it) for it in iterables),
                                 chunksize=chunksize)

    def submit(self, tool: str, /, *args: Any, **kwargs: Any) -> "Job":
        """Run ``tool`` as a durable job; returns its :class:`Job` at once (see
        :meth:`kernelpit.caller.AsyncCaller.submit`).  With ``display=True`` it shows the
        job live: in a notebook a panel that follows it while the cell returns; in a
        terminal a text progress bar that follows it to its end (Ctrl-C stops following;
        the job runs on)."""
        job = Job(self._portal, self._portal.call(self._async.submit, tool, *args, **kwargs))
        if self._display:
            from .widgets.jobs import display_job
            display_job(job)
        return job

    def session(self, *, ttl: float | None = None, metadata: dict[str, str] | None = None,
                pool: str | None = None, id: str | None = None) -> "Session":
        """Open a session: its calls all run on one worker.  Use as a context manager."""
        session = self._async.session(ttl=ttl, metadata=metadata, pool=pool, id=id)
        self._portal.call(session.open)
        return Session(self._portal, session, self._display)


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


class Job:
    """Blocking twin of :class:`~kernelpit.caller.AsyncJob`: a durable job, by ``id``.
    ``job.state`` reads the store afresh on each access."""

    def __init__(self, portal: Portal, job: AsyncJob) -> None:
        self._portal = portal
        self._async = job

    @property
    def id(self) -> str:
        return self._async.id

    @property
    def tool(self) -> str:
        return self._async.tool

    @property
    def state(self) -> str:
        """queued, running, succeeded, failed, cancelled or lost: read now."""
        return self._portal.call(self._async.status)

    status = blocking(AsyncJob.status)
    info = blocking(AsyncJob.info)
    result = blocking(AsyncJob.result)
    events = iterating(AsyncJob.events)
    cancel = blocking(AsyncJob.cancel)

    def __repr__(self) -> str:
        return repr(self._async)


_open_handles: "weakref.WeakSet[Handle]" = weakref.WeakSet()


@atexit.register
def _close_leftovers() -> None:
    for handle in list(_open_handles):
        try:
            handle.close()
        except Exception:
            pass


class Handle(Caller):
    """Blocking twin of :class:`~kernelpit.caller.AsyncHandle`: what pools and clients add to
    calling (introspection, control, close), with the same names, signatures and errors."""

    _async: AsyncHandle

    def __init__(self, portal: Portal, target: AsyncHandle) -> None:
        super().__init__(portal, target)
        self._closed = False
        _open_handles.add(self)

    tools = blocking(AsyncHandle.tools)
    describe = blocking(AsyncHandle.describe)
    workers = blocking(AsyncHandle.workers)
    sessions = blocking(AsyncHandle.sessions)
    get_session = blocking(AsyncHandle.get_session)
    close_session = blocking(AsyncHandle.close_session)
    watch = iterating(AsyncHandle.watch)
    subscribe = iterating(AsyncHandle.subscribe)
    jobs = blocking(AsyncHandle.jobs)
    delete_job = blocking(AsyncHandle.delete_job)
    interrupt = blocking(AsyncHandle.interrupt)
    restart = blocking(AsyncHandle.restart)
    recycle = blocking(AsyncHandle.recycle)
    reload = blocking(AsyncHandle.reload)
    untaint = blocking(AsyncHandle.untaint)

    def job(self, job_id: str) -> Job:
        """The handle of a job submitted from anywhere; JobNotFound when there is none."""
        return Job(self._portal, self._portal.call(self._async.job, job_id))

    def shutdown(self, grace: float | None = None) -> None:
        """Stop the pool itself (for a client: the bridge and its pool); calls in flight get
        ``grace`` seconds to finish.  This handle is closed too."""
        try:
            self._portal.call(self._async.shutdown, grace)
        finally:
            self.close()

    def close(self) -> None:
        """Release this handle: an embedded pool stops its kernels; a client closes its
        connection (the bridge runs on).  Safe to call twice."""
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
