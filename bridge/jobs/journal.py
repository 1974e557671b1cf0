"""Batched journal writes: whatever piles up while one commit runs goes in the next one.

A tool that floods events (thousands of progress updates or partials a second) costs one
commit per batch, not per event.  Progress is coalesced while it waits: a progress entry
replaces the job's previous entry when that one is a progress too (and takes its seq),
so the last progress before every other event, and the last one of all, are always
written.  The journal numbers each job's events: the runner that owns a job is the
only writer of its events.  A job's entries are written only once its row is: a job
can start running while its insert commits, and its first events wait for that.
"""

from __future__ import annotations

import asyncio
import logging

from .store import Entry, JobStore

log = logging.getLogger("kernelpit.jobs")
RETRY = 1.0


class Journal:
    def __init__(self, store: JobStore) -> None:
        self._store = store
        self._pending: list[Entry] = []
        self._last: dict[str, int] = {}  # job -> index in _pending of its last entry
        self._seq: dict[str, int] = {}  # job -> seq of its last event
        self._stored: dict[str, asyncio.Future[object]] = {}  # job -> its insert, committing
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

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

    def _held(self, pending: list[Entry]) -> list[Entry]:
        """The entries that can be written now; those of jobs whose row is still being
        inserted go back to ``_pending`` (in order), those of jobs never stored are dropped."""
        if not self._stored:
            return pending
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

    async def flush(self) -> None:
        """Wait until everything added so far is committed."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            pending, self._pending, self._last = self._pending, [], {}
            batch = self._held(pending)
            if not batch:
                if not self._pending:
                    self._idle.set()
                continue
            try:
                await self._store.record(batch)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - keep the entries and try again
                log.warning("cannot write %d journal entries to the job store %s (%s); "
                            "retrying in %g s", len(batch), self._store.url, exc, RETRY)
                self._pending = batch + self._pending
                self._last = {e.job: i for i, e in enumerate(self._pending)}
                self._wake.set()
                await asyncio.sleep(RETRY)
                continue
            for entry in batch:
                if entry.committed is not None and not entry.committed.done():
                    entry.committed.set_result(entry)
            if not self._pending:
                self._idle.set()

    async def close(self) -> None:
        """Write what is pending, then stop."""
        await self.flush()
        if self._task is not None:
            self._task.cancel()
            try:
                await self._task
            except asyncio.CancelledError:
                pass
