"""The job store: what a job runner needs from durable storage, and :func:`open_store`.

A store holds, per namespace (one pool's name and adapters, so a program never picks up
another program's jobs): the jobs table, each job's journal, the request it was
submitted with, and the leases of the runners that own jobs.  Every method is a
coroutine that does its I/O off the event loop.  Two stores implement it:
:class:`~kernelpit.jobs.sqlite.SqliteStore` (the default, one file) and
:class:`~kernelpit.jobs.postgres.PostgresStore` (shared by several bridges).

Readers follow a job by :meth:`JobStore.subscribe`: a wake-up after every commit that
touched the job (this process's, or another's: SQLite notices them by polling the
file's data version, PostgreSQL by LISTEN/NOTIFY).  A wake-up carries no data; the
reader reads the journal after the last seq it has, so nothing is missed or repeated.
"""

from __future__ import annotations

import asyncio
import os
from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from typing import Any, Callable

from ..exceptions import StartError
from .model import JobEvent, JobInfo


class StoreError(StartError):
    """The job store cannot be opened or used; the message names it and says what to do."""


@dataclass
class NewJob:
    """A job to insert: its info, its packed request (:mod:`.values`) and the request's digest."""

    info: JobInfo
    request: bytes
    digest: str


@dataclass
class Entry:
    """One write of the journal: an event (``kind`` set, numbered ``seq`` by the job's
    owner: the only writer of a job's events) and/or ``changes`` to the job's columns
    (state, attempt, started, finished, worker, owner, error, progress), applied in order
    in one transaction with the rest of its batch."""

    job: str
    kind: str | None = None
    time: float = 0.0
    data: dict[str, Any] | None = None
    changes: dict[str, Any] | None = None
    seq: int = 0
    #: resolved (with None) once this entry is committed (not stored)
    committed: "asyncio.Future[None] | None" = None
    #: ``data`` as stored, when a store packed it before its transaction (not stored)
    packed: bytes | None = None


@dataclass
class Orphan:
    """A queued or running job whose owner's lease has expired (or that has no owner)."""

    info: JobInfo
    cancel_requested: bool = False


class Watch:
    """Wake-ups for one job (or every job, ``job=None``): :meth:`wait` returns after a
    commit that touched it, or at ``timeout``."""

    def __init__(self, store: "JobStore", job: str | None) -> None:
        self._store = store
        self.job = job
        self._event = asyncio.Event()

    def __enter__(self) -> "Watch":
        self._store._watches.setdefault(self.job, set()).add(self)
        return self

    def __exit__(self, *exc: Any) -> None:
        watches = self._store._watches.get(self.job)
        if watches is not None:
            watches.discard(self)
            if not watches:
                del self._store._watches[self.job]

    def clear(self) -> None:
        """Forget earlier wake-ups: call right before reading what they announced."""
        self._event.clear()

    async def wait(self, timeout: float | None = None) -> bool:
        try:
            await asyncio.wait_for(self._event.wait(), timeout)
            return True
        except asyncio.TimeoutError:
            return False


@dataclass
class _Listeners:
    cancel: list[Callable[[str | None], None]] = field(default_factory=list)


class JobStore(ABC):
    """Durable jobs, journals and runner leases of one namespace.

    ``url`` names the store in messages (a path or a URL without its password).
    """

    url: str = ""

    def __init__(self, namespace: str) -> None:
        self.namespace = namespace
        #: the runner's Journal, whose ready entries a store may commit in the transaction
        #: of a submission (``take`` / ``put_back`` / ``landed``); None: no runner
        self.rider: Any = None
        self._watches: dict[str | None, set[Watch]] = {}
        self._listeners = _Listeners()
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- lifecycle ----------------------------------------------------------------------
    @abstractmethod
    async def open(self) -> None:
        """Connect, create the schema when missing, and check that the store can be written.
        Any problem raises :class:`StoreError` naming the store and what to do; nothing
        already stored is changed by a failed open."""

    @abstractmethod
    async def close(self) -> None:
        """Write nothing more, stop following other processes, release connections."""

    # -- jobs ---------------------------------------------------------------------------
    @abstractmethod
    async def create(self, job: NewJob) -> tuple[JobInfo, bool]:
        """Insert a job; (its info, True).  When ``job.info.key`` names a job that exists
        in this namespace, nothing is inserted: (that job's info, False) when its digest
        is equal, else InvalidArguments naming the key."""

    def create_soon(self, job: NewJob) -> "asyncio.Future[tuple[JobInfo, bool]]":
        """:meth:`create`, started now; the future resolves once it is committed."""
        return asyncio.ensure_future(self.create(job))

    @abstractmethod
    async def get(self, job_id: str) -> JobInfo:
        """The job's current info; JobNotFound when there is none in this namespace."""

    @abstractmethod
    async def list(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        """Jobs, newest first, at most ``limit``; ``before`` (a job id) pages: only jobs
        submitted before that one."""

    @abstractmethod
    async def counts(self) -> dict[str, int]:
        """How many jobs of this namespace are in each state (states with none left out)."""

    @abstractmethod
    async def request(self, job_id: str) -> dict[str, Any]:
        """The ``{"args": [...], "kwargs": {...}}`` the job was submitted with."""

    @abstractmethod
    async def delete(self, job_id: str) -> None:
        """Remove a job, its journal and its files; JobNotFound when there is none."""

    @abstractmethod
    async def prune(self, finished_before: float) -> int:
        """Remove every finished job that finished before that time (seconds since the
        epoch), journals and files included; returns how many."""

    # -- the journal ----------------------------------------------------------------------
    @abstractmethod
    async def record(self, entries: list[Entry]) -> None:
        """Append events and apply changes, in order, in one transaction.  The owner numbers
        each job's events 1, 2, 3, ... (a seq that exists already fails the batch: someone
        else took the job over).  Readers of the jobs touched are woken after the commit."""

    @abstractmethod
    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        """Journal entries with seq > ``after``, in seq order, at most ``limit``."""

    # -- ownership ------------------------------------------------------------------------
    @abstractmethod
    async def heartbeat(self, owner: str, lease: float) -> None:
        """Record that runner ``owner`` is alive for ``lease`` more seconds (store clock)."""

    @abstractmethod
    async def release(self, owner: str) -> None:
        """End ``owner``'s lease now: its unfinished jobs are orphans at once."""

    @abstractmethod
    async def orphans(self, owner: str) -> list[Orphan]:
        """Queued and running jobs of this namespace owned by nobody, or by a runner whose
        lease has expired (never ``owner``'s own, never a live peer's)."""

    @abstractmethod
    async def claim(self, job_id: str, owner: str, previous: str | None,
                    entries: list[Entry]) -> JobInfo | None:
        """Take a job over: set its owner to ``owner`` if it is still unfinished and still
        owned by ``previous`` (compare-and-set, so two runners never both win), then
        record ``entries`` in the same transaction, numbered after the job's last seq.
        Returns the job as it is then (its ``last_seq`` is where the new owner goes on);
        None when someone else won."""

    @abstractmethod
    async def request_cancel(self, job_id: str) -> JobInfo:
        """Mark an unfinished job as to be cancelled and tell its owner (wherever it runs)."""

    @abstractmethod
    async def cancel_requests(self, owner: str) -> list[str]:
        """Ids of ``owner``'s unfinished jobs that someone asked to cancel."""

    # -- wake-ups -------------------------------------------------------------------------
    def subscribe(self, job_id: str | None = None) -> Watch:
        """Wake-ups for one job (``None``: for every job); use as a context manager and
        enter it *before* reading, so no commit falls between the read and the wait."""
        return Watch(self, job_id)

    def on_cancel(self, callback: Callable[[str | None], None]) -> None:
        """Call ``callback(job_id)`` when a cancel is requested from elsewhere (``None``:
        some job may have been, check :meth:`cancel_requests`)."""
        self._listeners.cancel.append(callback)

    def _notify(self, jobs: Any) -> None:
        """Wake the readers of ``jobs`` (an iterable of ids; ``None``: everyone).  Loop thread."""
        if jobs is None:
            targets = [w for ws in self._watches.values() for w in ws]
        else:
            targets = list(self._watches.get(None, ()))
            for job in set(jobs):
                targets.extend(self._watches.get(job, ()))
        for watch in targets:
            watch._event.set()

    def _cancel_requested(self, job_id: str | None) -> None:
        for callback in list(self._listeners.cancel):
            callback(job_id)


def default_path() -> str:
    """``<jupyter data dir>/kernelpit/jobs.sqlite``: survives reboots, unlike the runtime dir."""
    from jupyter_core.paths import jupyter_data_dir

    return os.path.join(jupyter_data_dir(), "kernelpit", "jobs.sqlite")


async def open_store(url_or_path: str | os.PathLike[str] | None = None, *,
                     namespace: str = "default", blob_dir: str | None = None,
                     lock_timeout: float = 5.0) -> JobStore:
    """Open (and create when missing) a job store and return it ready.

    ``None``: SQLite at :func:`default_path`; a path: SQLite there; ``postgresql://...``
    (or ``postgres://``): PostgreSQL, with large values inside the database unless
    ``blob_dir`` names a directory that every bridge sharing the database can reach.
    ``lock_timeout``: seconds to wait for a SQLite file another process holds locked.
    Raises :class:`StoreError` (naming the store and what to do) when it cannot be used.
    """
    target = default_path() if url_or_path is None else os.fspath(url_or_path)
    store: JobStore
    if target.startswith(("postgresql://", "postgres://")):
        from .postgres import PostgresStore

        store = PostgresStore(target, namespace=namespace, blob_dir=blob_dir)
    else:
        from .sqlite import SqliteStore

        store = SqliteStore(target, namespace=namespace, blob_dir=blob_dir,
                            lock_timeout=lock_timeout)
    await store.open()
    return store
