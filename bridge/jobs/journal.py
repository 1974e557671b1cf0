"""Batched journal writes: whatever piles up while a commit runs goes in the next one.

A tool that floods events (thousands of progress updates or partials a second) costs one
commit per batch, not per event.  Progress is coalesced while it waits: a progress entry
replaces the job's previous entry when that one is a progress too (and takes its seq),
so the last progress before every other event, and the last one of all, are always
written.  The journal numbers each job's events: the runner that owns a job is the
only writer of its events.  A job's entries are written only once its row is: a job
can start running while its insert commits, and its first events wait for that.

Entries wait up to :data:`WINDOW` for others to join their commit (group commit), except a
state change (``running``) that a job waits for.  Two batches may be in flight at once
(the store's writer runs them in order), so an
event that arrives while one commits does not wait for that commit to come back before
its own is sent.  The store refuses a job's events unless they follow its last seq, so a
batch that fails can never be overtaken by the next one of the same job: both are
retried, in order.
"""

from __future__ import annotations

import asyncio
import collections
import logging
from typing import Callable

from .store import Entry, JobStore

log = logging.getLogger("kernelpit.jobs")
RETRY = 1.0
IN_FLIGHT = 2
#: group commit: entries nobody waits for are held this long for more to join them, so a
#: short job's started and result events are one commit, and a flood makes big batches
WINDOW = 0.001
#: ... unless this many are pending already
FULL = 256


class Journal:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._pending: list[Entry] = []
        self._last: dict[str, int] = {}  # job -> index in _pending of its last entry
        self._seq: dict[str, int] = {}  # job -> seq of its last event
        self._stored: dict[str, asyncio.Future[object]] = {}  # job -> its insert, committing
        self._flight: collections.deque[tuple[list[Entry], asyncio.Future[None]]] = \
            collections.deque()
        self._failed: list[Entry] = []  # entries of batches that failed, in order
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())
        self._store.rider = self

    # -- riding along with another transaction (the store's submissions) --------------------
    def take(self, accept: "Callable[[list[Entry]], bool]") -> list[Entry]:
        """The entries ready to be written, for the store to commit with a submission's
        insert (one transaction instead of two); ``accept`` says whether it can take them
        (else they stay pending).  Nothing while a batch of ours is in flight or failed,
        so the order of a job's entries holds."""
        if self._flight or self._failed or not self._pending:
            return []
        batch = self._ready()
        if batch and not accept(batch):
            self.put_back(batch)
            return []
        return batch

    def put_back(self, batch: list[Entry]) -> None:
        """Entries taken but not written: pending again, first."""
        self._pending = batch + self._pending
        self._last = {e.job: i for i, e in enumerate(self._pending)}

    def landed(self, batch: list[Entry], failure: BaseException | None) -> None:
        """Entries taken were committed (or their part of the transaction failed)."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        if failure is None:
            done.set_result(None)
        else:
            done.set_exception(failure)
        self._land(batch, done)
        self._wake.set()

    def begin(self, job: str, last_seq: int, stored: asyncio.Future[object] | None = None) -> None:
        """Number ``job``'s next event ``last_seq + 1``; ``stored``: the job's insert, when
        it is still committing (its entries wait for it, and are dropped if it fails)."""
        self._seq[job] = last_seq
        if stored is not None and not stored.done():
            self._stored[job] = stored
            stored.add_done_callback(lambda _f: self._wake.set())

    def end(self, job: str) -> None:
        self._seq.pop(job, None)

    def add(self, entry: Entry) -> None:
        """Queue ``entry`` for the next commit (progress may replace the job's last one)."""
        at = self._last.get(entry.job)
        if entry.kind == "progress" and at is not None and self._pending[at].kind == "progress":
            before = self._pending[at]
            if before.changes and entry.changes:
                entry.changes = {**before.changes, **entry.changes}
            entry.seq = before.seq
            self._pending[at] = entry
            return
        if entry.kind is not None:
            entry.seq = self._seq[entry.job] = self._seq.get(entry.job, 0) + 1
        self._last[entry.job] = len(self._pending)
        self._pending.append(entry)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything added so far is committed."""
        await self._idle.wait()

    def _ready(self) -> list[Entry]:
        """Take the entries that can be written now; those of jobs whose row is still
        being inserted stay pending (in order), those of jobs never stored are dropped."""
        pending, self._pending, self._last = self._pending, [], {}
        for job, stored in list(self._stored.items()):
            if stored.done():
                del self._stored[job]
                if stored.cancelled() or stored.exception() is not None:
                    pending = [e for e in pending if e.job != job]
        if not self._stored:
            return pending
        ready, held = [], []
        for e in pending:
            (held if e.job in self._stored else ready).append(e)
        self._pending = held
        self._last = {e.job: i for i, e in enumerate(held)}
        return ready

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            if self._pending and len(self._pending) < FULL and not self._failed and not any(
                    e.kind is None for e in self._pending):  # a state change is awaited: now
                await asyncio.sleep(WINDOW)
            self._wake.clear()
            while self._flight and self._flight[0][1].done():
                self._land(*self._flight.popleft())
            if self._failed and not self._flight:
                await asyncio.sleep(RETRY)
                self._pending, self._failed = self._failed + self._pending, []
                self._last = {e.job: i for i, e in enumerate(self._pending)}
            if not self._failed and len(self._flight) < IN_FLIGHT:
                batch = self._ready()
                if batch:
                    done = asyncio.ensure_future(self._store.record(batch))
                    done.add_done_callback(lambda _f: self._wake.set())
                    self._flight.append((batch, done))
                    if self._pending:
                        self._wake.set()
            if not self._flight and not self._pending and not self._failed:
                self._idle.set()

    def _land(self, batch: list[Entry], done: asyncio.Future[None]) -> None:
        """A batch came back: resolve its entries, or keep them to try again."""
        failure = None if done.cancelled() else done.exception()
        if failure is None and not done.cancelled():
            for entry in batch:
                if entry.committed is not None and not entry.committed.done():
                    entry.committed.set_result(None)  # not the entry: a cycle would keep
                    # its data (a job's result, perhaps 1 GB mapped) until a full collection
            return
        log.warning("cannot write %d journal entries to the job store %s (%s); retrying in "
                    "%g s", len(batch), self._store.url, failure, RETRY)
        self._failed.extend(batch)
        self._wake.set()

    async def close(self) -> None:
        """Write what is pending, then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
