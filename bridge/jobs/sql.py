"""The job store's transactions, written once for both SQL databases.

:class:`SqlStore` runs every statement on one of two threads, each with its own
connection: a writer (all transactions, one at a time, so a batch of journal entries is
one commit) and a reader (gets, lists and journal reads, which WAL / MVCC let run beside
the writer).  A subclass supplies the connections, the schema and the few differences of
its dialect (:class:`Dialect`).
"""

from __future__ import annotations

import asyncio
import json
import logging
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Callable, TypeVar

from ..exceptions import InvalidArguments, JobNotFound
from . import values
from .blobs import INLINE_LIMIT, Blobs
from .model import TERMINAL, JobEvent, JobInfo, error_from, error_payload
from .store import Entry, JobStore, NewJob, Orphan

log = logging.getLogger("kernelpit.jobs")
T = TypeVar("T")

COLUMNS = ("id", "tool", "state", "attempt", "max_attempts", "created", "started", "finished",
           "worker", "progress", "error", "key", "idempotent", "deadline", "session", "pool",
           "owner", "last_seq", "namespace")
_SELECT = ", ".join(COLUMNS)
#: job columns an Entry may change, and how a Python value is stored in each
_CHANGES: dict[str, Callable[[Any], Any]] = {
    "state": str, "attempt": int, "started": float, "finished": float,
    "worker": lambda v: None if v is None else int(v), "owner": lambda v: v,
    "error": lambda v: None if v is None else json.dumps(v),
    "progress": lambda v: None if v is None else json.dumps(v),
    "cancel_requested": int,
}
INSERT_JOB = ("INSERT INTO jobs(id, namespace, tool, state, attempt, max_attempts, created, "
              "started, key, digest, idempotent, deadline, session, pool, pin_worker, owner, "
              "last_seq, request, request_ref, cancel_requested) "
              "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,?,0,?,?,0)")
INSERT_ROWS = 500  # ids per DELETE statement (SQLite allows 32,766 parameters)
JOURNAL_COLUMNS = ("job", "seq", "kind", "time", "data", "ref")
_OPEN = ("queued", "running")


@dataclass(frozen=True)
class Dialect:
    """How one database spells what differs: the parameter mark, the current time in
    seconds since the epoch, and a NULL-safe equality."""

    param: str
    now: str
    same: str  # "a {same} b" is true when both are NULL or equal

    def sql(self, text: str) -> str:
        return text if self.param == "?" else text.replace("?", self.param)


class Tx:
    """One write transaction.  ``put`` is for statements whose result nobody reads: a
    store may send them later, together (PostgreSQL sends a whole commit in one round
    trip); ``execute`` runs now, after what was put, and its rows can be read from the
    database's cursor, ``_cur``."""

    _cur: Any

    def put(self, sql: str, params: Any = ()) -> None:
        raise NotImplementedError

    def execute(self, sql: str, params: Any = ()) -> Any:
        raise NotImplementedError

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        """Add ``rows`` to ``table`` (the fastest way the database has for many)."""
        raise NotImplementedError

    def fetchone(self) -> Any:
        return self._cur.fetchone()

    def fetchall(self) -> list[Any]:
        return self._cur.fetchall()

    @property
    def rowcount(self) -> int:
        return int(self._cur.rowcount)

    def commit(self) -> None:
        raise NotImplementedError

    def rollback(self) -> None:
        raise NotImplementedError


class SqlStore(JobStore):
    dialect: Dialect
    blobs: Blobs
    #: inserts run on a thread and connection of their own, so that a submission does not
    #: wait behind a journal commit (a store whose transactions wait on the network)
    separate_inserts = False

    def __init__(self, namespace: str) -> None:
        super().__init__(namespace)
        self._writer = ThreadPoolExecutor(1, thread_name_prefix="kernelpit-jobs-write")
        self._reader = ThreadPoolExecutor(1, thread_name_prefix="kernelpit-jobs-read")
        self._inserter = ThreadPoolExecutor(1, thread_name_prefix="kernelpit-jobs-insert") \
            if self.separate_inserts else self._writer
        self._wconn: Any = None
        self._rconn: Any = None
        self._iconn: Any = None
        self._creates: list[tuple[NewJob, asyncio.Future[Any]]] = []
        self._creating: asyncio.Task[None] | None = None
        self._queued = 0  # transactions handed to the writer thread and not back yet
        self.closed = False

    # -- subclass hooks ------------------------------------------------------------------------
    def connect(self) -> Any:
        """A new connection (called on the thread that will use it)."""
        raise NotImplementedError

    def begin(self, conn: Any) -> "Tx":
        """A write transaction on ``conn``."""
        raise NotImplementedError

    def after_commit(self, conn: Any, jobs: set[str], cancel: str | None = None) -> None:
        """Tell other processes that ``jobs`` changed (PostgreSQL: NOTIFY).  Writer thread,
        inside the transaction."""

    def write_now(self, fn: Callable[..., T], args: tuple[Any, ...]) -> tuple[bool, T | None]:
        """Run a small transaction right here, on the event loop thread: ``(True, result)``,
        or ``(False, None)`` when this store cannot (then it goes to the writer thread).
        Only called when the writer thread has nothing queued, so writes keep their order.
        The default: never (PostgreSQL waits on the network)."""
        return False, None

    # -- threads -------------------------------------------------------------------------------
    async def _write(self, fn: Callable[..., T], *args: Any) -> T:
        if not self._queued and not self.closed:
            done, out = self.write_now(fn, args)
            if done:
                return out  # type: ignore[return-value]
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, self._in_tx,
                                                                    fn, args)
        finally:
            self._queued -= 1

    async def _read(self, fn: Callable[..., T], *args: Any) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._reader, self._reading, fn,
                                                                args)

    async def _on_writer(self, fn: Callable[..., T], *args: Any) -> T:
        """Run ``fn(*args)`` on the writer thread (its connection), outside a transaction;
        counted as queued, so no write runs on the loop meanwhile."""
        self._queued += 1
        try:
            return await asyncio.get_running_loop().run_in_executor(self._writer, fn, *args)
        finally:
            self._queued -= 1

    async def _insert(self, fn: Callable[..., T], *args: Any) -> T:
        """A transaction that inserts jobs: on its own thread and connection when
        :attr:`separate_inserts` (a job's journal entries wait for its insert, so order is
        kept), else as :meth:`_write`."""
        if not self.separate_inserts:
            return await self._write(fn, *args)
        return await asyncio.get_running_loop().run_in_executor(self._inserter, self._in_tx,
                                                                fn, args, "_iconn")

    def _in_tx(self, fn: Callable[..., T], args: tuple[Any, ...], attr: str = "_wconn") -> T:
        conn = getattr(self, attr)
        if conn is None:
            conn = self.connect()
            setattr(self, attr, conn)
        tx = self.begin(conn)
        try:
            out = fn(tx, *args)
            tx.commit()
            return out
        except BaseException:
            tx.rollback()
            raise

    def _reading(self, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        if self._rconn is None:
            self._rconn = self.connect()
        cur = self._rconn.cursor()
        try:
            return fn(cur, *args)
        finally:
            cur.close()
            self.end_read(self._rconn)

    def end_read(self, conn: Any) -> None:
        """End the reader's snapshot, so the next read sees the latest commits."""

    async def _shutdown(self) -> None:
        self.closed = True

        def close(attr: str) -> None:
            conn = getattr(self, attr)
            if conn is not None:
                conn.close()
                setattr(self, attr, None)

        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, close, "_wconn")
        await loop.run_in_executor(self._reader, close, "_rconn")
        await loop.run_in_executor(self._inserter, close, "_iconn")
        self._writer.shutdown(wait=True)
        self._reader.shutdown(wait=True)
        self._inserter.shutdown(wait=True)

    # -- rows ----------------------------------------------------------------------------------
    def _q(self, text: str) -> str:
        return self.dialect.sql(text)

    @staticmethod
    def _info(row: tuple[Any, ...]) -> JobInfo:
        d = dict(zip(COLUMNS, row))
        return JobInfo(
            id=d["id"], tool=d["tool"], state=d["state"], attempt=d["attempt"],
            max_attempts=d["max_attempts"], created=d["created"], started=d["started"],
            finished=d["finished"], worker=d["worker"],
            progress=json.loads(d["progress"]) if d["progress"] else None,
            error=error_from(json.loads(d["error"]), d["tool"]) if d["error"] else None,
            key=d["key"], idempotent=bool(d["idempotent"]), deadline=d["deadline"],
            session=d["session"], pool=d["pool"], owner=d["owner"], last_seq=d["last_seq"],
            namespace=d["namespace"])

    def _one(self, cur: Any, job_id: str) -> JobInfo:
        cur.execute(self._q(f"SELECT {_SELECT} FROM jobs WHERE id=? AND namespace=?"),
                    (job_id, self.namespace))
        row = cur.fetchone()
        if row is None:
            raise JobNotFound(f"no job '{job_id}' in the job store {self.url} (namespace "
                              f"'{self.namespace}'): it was deleted or removed by retention, or "
                              "submitted to another store or pool; list jobs with jobs()")
        return self._info(row)

    # -- jobs ----------------------------------------------------------------------------------
    async def create(self, job: NewJob) -> tuple[JobInfo, bool]:
        return await self.create_soon(job)

    def create_soon(self, job: NewJob) -> "asyncio.Future[tuple[JobInfo, bool]]":
        # Group commit: jobs submitted while a commit runs are inserted together in the next.
        done: asyncio.Future[tuple[JobInfo, bool]] = asyncio.get_running_loop().create_future()
        self._creates.append((job, done))
        if self._creating is None or self._creating.done():
            self._creating = asyncio.ensure_future(self._create_pending())
        return done

    async def _create_pending(self) -> None:
        while self._creates:
            batch, self._creates = self._creates, []
            try:
                outcomes = await self._insert(self._create_many, [job for job, _ in batch])
            except Exception as exc:  # noqa: BLE001 - the whole batch was rolled back
                outcomes = [exc] * len(batch)
            for (_, done), outcome in zip(batch, outcomes):
                if done.done():
                    continue
                if isinstance(outcome, BaseException):
                    done.set_exception(outcome)
                else:
                    done.set_result(outcome)

    def _create_many(self, cur: Any, jobs: list[NewJob]) -> list[Any]:
        out: list[Any] = []
        for job in jobs:
            try:
                out.append(self._create(cur, job))
            except InvalidArguments as exc:  # refused before it wrote anything
                out.append(exc)
        return out

    def _create(self, cur: Any, job: NewJob) -> tuple[JobInfo, bool]:
        i = job.info
        if i.key is not None:
            cur.execute(self._q(f"SELECT {_SELECT}, digest FROM jobs WHERE namespace=? AND key=?"),
                        (self.namespace, i.key))
            row = cur.fetchone()
            if row is not None:
                if row[-1] != job.digest:
                    raise InvalidArguments(
                        f"the idempotency key '{i.key}' already names job {row[0]} of "
                        f"{row[1]}() submitted with other arguments; use another key, or "
                        "delete that job first", tool=i.tool)
                return self._info(row[:-1]), False
        request, ref = job.request, None
        if len(request) > INLINE_LIMIT:
            ref = self.blobs.put(cur, i.id, "request", request)
            request = b""
        cur.put(self._q(INSERT_JOB), self._job_row(job, request, ref))
        return i, True

    def _job_row(self, job: NewJob, request: bytes, ref: str | None) -> tuple[Any, ...]:
        """The values of :data:`INSERT_JOB` for ``job``."""
        i = job.info
        return (i.id, self.namespace, i.tool, i.state, i.attempt, i.max_attempts, i.created,
                i.started, i.key, job.digest, int(i.idempotent), i.deadline, i.session, i.pool,
                None, i.owner, request, ref)

    async def get(self, job_id: str) -> JobInfo:
        return await self._read(self._one, job_id)

    async def list(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        return await self._read(self._list, state, tool, limit, before)

    def _list(self, cur: Any, state: str | None, tool: str | None, limit: int,
              before: str | None) -> list[JobInfo]:
        where, params = ["namespace=?"], [self.namespace]
        if before is not None:
            cur.execute(self._q("SELECT num FROM jobs WHERE id=? AND namespace=?"),
                        (before, self.namespace))
            row = cur.fetchone()
            if row is None:
                raise JobNotFound(f"cannot page before job '{before}': there is no such job in "
                                  f"{self.url} (deleted meanwhile?); list again from the start")
            where.append("num<?")
            params.append(row[0])
        if state is not None:
            where.append("state=?")
            params.append(state)
        if tool is not None:
            where.append("tool=?")
            params.append(tool)
        cur.execute(self._q(f"SELECT {_SELECT} FROM jobs WHERE {' AND '.join(where)} "
                            "ORDER BY num DESC LIMIT ?"), (*params, int(limit)))
        return [self._info(r) for r in cur.fetchall()]

    async def counts(self) -> dict[str, int]:
        return await self._read(self._counts)

    def _counts(self, cur: Any) -> dict[str, int]:
        cur.execute(self._q("SELECT state, count(*) FROM jobs WHERE namespace=? GROUP BY state"),
                    (self.namespace,))
        return {state: int(n) for state, n in cur.fetchall()}

    async def request(self, job_id: str) -> dict[str, Any]:
        return await self._read(self._request, job_id)

    def _request(self, cur: Any, job_id: str) -> dict[str, Any]:
        cur.execute(self._q("SELECT request, request_ref FROM jobs WHERE id=? AND namespace=?"),
                    (job_id, self.namespace))
        row = cur.fetchone()
        if row is None:
            self._one(cur, job_id)  # raises JobNotFound
        data = self.blobs.get(cur, job_id, row[1]) if row[1] else row[0]
        return values.unpack(data)

    async def delete(self, job_id: str) -> None:
        await self._write(self._delete, job_id)

    def _delete(self, cur: Any, job_id: str) -> None:
        self._one(cur, job_id)
        self._remove(cur, [job_id])

    def _remove(self, cur: Any, jobs: list[str]) -> None:
        for at in range(0, len(jobs), INSERT_ROWS):
            part = jobs[at:at + INSERT_ROWS]
            marks = ",".join("?" * len(part))
            cur.put(self._q(f"DELETE FROM journal WHERE job IN ({marks})"), part)
            cur.put(self._q(f"DELETE FROM jobs WHERE id IN ({marks})"), part)
        self.blobs.drop(cur, jobs)

    async def prune(self, finished_before: float) -> int:
        return await self._write(self._prune, finished_before)

    def _prune(self, cur: Any, finished_before: float) -> int:
        marks = ",".join("?" * len(TERMINAL))
        cur.execute(self._q(f"SELECT id FROM jobs WHERE namespace=? AND state IN ({marks}) "
                            "AND finished<?"), (self.namespace, *sorted(TERMINAL), finished_before))
        jobs = [r[0] for r in cur.fetchall()]
        if jobs:
            self._remove(cur, jobs)
        return len(jobs)

    # -- the journal -----------------------------------------------------------------------------
    async def record(self, entries: list[Entry]) -> None:
        jobs = await self._write(self._record, entries)
        self._notify(jobs)

    def _record(self, cur: Any, entries: list[Entry]) -> set[str]:
        rows, changes, touched = [], {}, set()
        seqs: dict[str, tuple[int, int]] = {}  # job -> (first, last) seq in this batch
        for e in entries:
            if e.kind is not None:
                data = e.packed if e.packed is not None else self._packed(e)
                ref = None
                if len(data) > INLINE_LIMIT:
                    ref = self.blobs.put(cur, e.job, f"{e.seq}", data)
                    data = None
                rows.append((e.job, e.seq, e.kind, e.time, data, ref))
                first, _ = seqs.get(e.job, (e.seq, e.seq))
                seqs[e.job] = (first, e.seq)
            if e.changes:
                changes.setdefault(e.job, {}).update(e.changes)
            touched.add(e.job)
        if rows:
            cur.insert("journal", JOURNAL_COLUMNS, rows)
        for job in touched:
            self._apply(cur, job, changes.get(job, {}), seqs.get(job))
        self.after_commit(cur, touched)
        return touched

    @staticmethod
    def _packed(e: Entry) -> bytes:
        """The event's data as stored.  A value the store cannot hold (an object that
        travelled pickled) does not block the journal: a partial keeps a note instead, and
        a result becomes the job's error."""
        try:
            return values.pack(e.data or {}, f"a {e.kind} event")
        except InvalidArguments as exc:
            note = (f"the {e.kind} value of this job cannot be stored in the job store "
                    f"({exc.message}); return plain values, bytes or Arrow data from tools "
                    "run as jobs")
            if e.kind != "result":
                return values.pack({**{k: None for k in e.data or {}}, "unstored": note})
            payload = error_payload(InvalidArguments(note))
            e.kind, e.data = "error", {"error": payload}
            e.changes = {**(e.changes or {}), "state": "failed", "error": payload}
            return values.pack(e.data)

    def _apply(self, cur: Any, job: str, change: dict[str, Any],
               seqs: tuple[int, int] | None) -> None:
        cols = sorted(change)
        unknown = set(cols) - set(_CHANGES)
        if unknown:
            raise ValueError(f"cannot change job column(s) {', '.join(sorted(unknown))}")
        sets = [f"{c}=?" for c in cols]
        params: list[Any] = [_CHANGES[c](change[c]) for c in cols]
        if seqs is not None:
            # Events go in only right after the job's last one: else last_seq becomes -1,
            # which its CHECK refuses, and the whole batch rolls back (so a batch that
            # failed can never be overtaken by the next one of the same job)
            sets.append("last_seq = CASE WHEN last_seq = ? THEN ? ELSE -1 END")
            params += [seqs[0] - 1, seqs[1]]
        if sets:
            cur.put(self._q(f"UPDATE jobs SET {', '.join(sets)} WHERE id=?"), (*params, job))

    async def events(self, job_id: str, after: int = 0, limit: int = 1000) -> list[JobEvent]:
        return await self._read(self._events, job_id, after, limit)

    def _events(self, cur: Any, job_id: str, after: int, limit: int) -> list[JobEvent]:
        cur.execute(self._q("SELECT tool FROM jobs WHERE id=? AND namespace=?"),
                    (job_id, self.namespace))
        row = cur.fetchone()
        if row is None:
            self._one(cur, job_id)  # raises JobNotFound
        tool = row[0]
        # the primary key's order: an index range scan, no sort, however long the journal
        cur.execute(self._q("SELECT seq, kind, time, data, ref FROM journal WHERE job=? AND "
                            "seq>? ORDER BY seq LIMIT ?"), (job_id, after, limit))
        out = []
        for seq, kind, at, data, ref in cur.fetchall():
            raw = self.blobs.get(cur, job_id, ref) if ref else data
            out.append(JobEvent(seq, kind, at, values.unpack(raw), tool))
        return out

    # -- ownership -------------------------------------------------------------------------------
    async def heartbeat(self, owner: str, lease: float) -> None:
        await self._write(self._heartbeat, owner, lease)

    def _heartbeat(self, cur: Any, owner: str, lease: float) -> None:
        now = self.dialect.now
        cur.put(self._q(f"INSERT INTO runners(id, namespace, lease_until) VALUES (?,?,{now}+?) "
                            f"ON CONFLICT (id) DO UPDATE SET lease_until={now}+?"),
                    (owner, self.namespace, lease, lease))

    async def release(self, owner: str) -> None:
        await self._write(self._release, owner)

    def _release(self, cur: Any, owner: str) -> None:
        cur.put(self._q("DELETE FROM runners WHERE id=?"), (owner,))
        cur.execute(self._q("SELECT id FROM jobs WHERE owner=? AND state IN ('queued','running')"),
                    (owner,))
        self.after_commit(cur, {r[0] for r in cur.fetchall()})

    async def orphans(self, owner: str) -> list[Orphan]:
        return await self._read(self._orphans, owner)

    def _orphans(self, cur: Any, owner: str) -> list[Orphan]:
        now = self.dialect.now
        cur.execute(self._q(
            f"SELECT {', '.join('jobs.' + c for c in COLUMNS)}, jobs.cancel_requested FROM jobs "
            "WHERE jobs.namespace=? AND jobs.state IN ('queued','running') AND "
            "(jobs.owner IS NULL OR (jobs.owner<>? AND NOT EXISTS (SELECT 1 FROM runners r "
            f"WHERE r.id=jobs.owner AND r.lease_until>={now}))) ORDER BY jobs.num"),
            (self.namespace, owner))
        return [Orphan(self._info(r[:-1]), bool(r[-1])) for r in cur.fetchall()]

    async def claim(self, job_id: str, owner: str, previous: str | None,
                    entries: list[Entry]) -> JobInfo | None:
        info = await self._write(self._claim, job_id, owner, previous, entries)
        if info is not None:
            self._notify([job_id])
        return info

    def _claim(self, cur: Any, job_id: str, owner: str, previous: str | None,
               entries: list[Entry]) -> JobInfo | None:
        cur.execute(self._q(f"UPDATE jobs SET owner=? WHERE id=? AND namespace=? AND "
                            f"state IN ('queued','running') AND owner {self.dialect.same} ?"),
                    (owner, job_id, self.namespace, previous))
        if cur.rowcount != 1:
            return None
        last = self._one(cur, job_id).last_seq
        for e in entries:
            if e.kind is not None:
                last += 1
                e.seq = last
        self._record(cur, entries)
        return self._one(cur, job_id)

    async def request_cancel(self, job_id: str) -> JobInfo:
        return await self._write(self._request_cancel, job_id)

    def _request_cancel(self, cur: Any, job_id: str) -> JobInfo:
        cur.put(self._q("UPDATE jobs SET cancel_requested=1 WHERE id=? AND namespace=? AND "
                            "state IN ('queued','running')"), (job_id, self.namespace))
        self.after_commit(cur, {job_id}, cancel=job_id)
        return self._one(cur, job_id)

    async def cancel_requests(self, owner: str) -> list[str]:
        return await self._read(self._cancel_requests, owner)

    def _cancel_requests(self, cur: Any, owner: str) -> list[str]:
        cur.execute(self._q("SELECT id FROM jobs WHERE owner=? AND cancel_requested=1 AND "
                            "state IN ('queued','running')"), (owner,))
        return [r[0] for r in cur.fetchall()]
