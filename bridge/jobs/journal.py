"""Batched journal writes: whatever piles up while one commit runs goes in the next one.

A tool that floods events (thousands of progress updates or partials a second) costs one
commit per batch, not per event.  Progress is coalesced while it waits: a progress entry
replaces the job's previous entry when that one is a progress too, so the last progress
before every other event, and the last one of all, are always written.
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
        self._wake = asyncio.Event()
        self._idle = asyncio.Event()
        self._idle.set()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    def add(self, entry: Entry) -> None:
        """Queue ``entry`` for the next commit (progress may replace the job's last one)."""
        at = self._last.get(entry.job)
        if entry.kind == "progress" and at is not None and self._pending[at].kind == "progress":
            before = self._pending[at]
            if before.changes and entry.changes:
                entry.changes = {**before.changes, **entry.changes}
            self._pending[at] = entry
            return
        self._last[entry.job] = len(self._pending)
        self._pending.append(entry)
        self._idle.clear()
        self._wake.set()

    async def flush(self) -> None:
        """Wait until everything added so far is committed."""
        await self._idle.wait()

    async def _run(self) -> None:
        while True:
            await self._wake.wait()
            self._wake.clear()
            batch, self._pending, self._last = self._pending, [], {}
            if not batch:
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
                self._last = {}
                for i, e in enumerate(self._pending):
                    self._last[e.job] = i
                self._wake.set()
                await asyncio.sleep(RETRY)
                continue
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
