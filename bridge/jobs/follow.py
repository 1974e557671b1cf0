"""Reading a job as it runs: replay its journal, then follow it live, wherever it runs.

The order that makes this gap- and duplicate-free: subscribe to the job's wake-ups
*first*, then read the journal after the last seq seen, then wait for a wake-up, and
read again.  A commit that lands between a read and the wait has already set the
wake-up, so the wait returns at once; every read starts after the last seq delivered.
"""

from __future__ import annotations

import time
from typing import Any, AsyncIterator

from .model import FINAL_KINDS, JobEvent, error_from
from .store import JobStore

#: a wake-up can be missed only when another process's notification is lost (a dropped
#: PostgreSQL connection); readers look again this often anyway
FALLBACK = 1.0
PAGE = 1000


async def follow_batches(store: JobStore, job_id: str, after: int = 0
                         ) -> AsyncIterator[list[JobEvent]]:
    """The job's events with seq > ``after``, replayed then live, until its last one; in
    batches of what one read returned (a replay comes in pages of :data:`PAGE`)."""
    with store.subscribe(job_id) as watch:
        last = after
        while True:
            watch.clear()
            batch = await store.events(job_id, last, PAGE)
            for i, event in enumerate(batch):
                if event.kind in FINAL_KINDS:
                    yield batch[:i + 1]
                    return
            if batch:
                yield batch
                last = batch[-1].seq
                if len(batch) == PAGE:
                    continue
            else:
                info = await store.get(job_id)
                if info.done and info.last_seq <= last:
                    return  # finished, and everything after `after` was delivered
            await watch.wait(FALLBACK)


async def follow(store: JobStore, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
    """The job's events with seq > ``after``, replayed then live, until its last one."""
    async for batch in follow_batches(store, job_id, after):
        for event in batch:
            yield event


async def result(store: JobStore, job_id: str, timeout: float | None = None) -> Any:
    """The job's value; raises its error (JobLost for a lost job) or the builtin
    TimeoutError when it has not finished within ``timeout`` seconds (it keeps running)."""
    end = None if timeout is None else time.monotonic() + timeout
    with store.subscribe(job_id) as watch:
        while True:
            watch.clear()
            info = await store.get(job_id)
            if info.done:
                break
            left = None if end is None else end - time.monotonic()
            if left is not None and left <= 0:
                raise TimeoutError(f"job {job_id} ({info.tool}()) did not finish within "
                                   f"{timeout:g} s; it is still {info.state} and keeps running: "
                                   "ask for its result again later, or cancel it")
            await watch.wait(FALLBACK if left is None else min(left, FALLBACK))
    final = await store.events(job_id, info.last_seq - 1, 1)
    if final:
        return outcome(final[0].kind, final[0].data, job_id, info.tool)
    raise info.error or RuntimeError(f"job {job_id} is {info.state} but its journal has no "
                                     "result or error; the store was changed by hand")


def outcome(kind: str, data: dict[str, Any], job_id: str, tool: str = "") -> Any:
    """The value of a job's last journal entry, or its error raised."""
    if kind == "result":
        return data.get("value")
    if kind == "error":
        raise error_from(data["error"], tool) or RuntimeError("no error")
    raise RuntimeError(f"the last journal entry of job {job_id} is a {kind!r}, not a result "
                       "or an error; the store was changed by hand")
