"""The shared job store: PostgreSQL through psycopg 3, for several bridges on several hosts.

Statements run on the store's two threads (:mod:`.sql`, one copy of the transactions for
both databases) over psycopg's blocking connections; following other bridges is async:
an ``AsyncConnection`` LISTENs on :data:`CHANNEL`, and every commit NOTIFYs the jobs it
touched (and cancel requests), so a bridge streams the events of a job that runs on
another bridge as they are committed.  Large values go in the ``job_blobs`` table as
chunks of 1 MiB, or in files under ``blob_dir`` when every bridge can reach that folder.
Leases are timed by the database's clock, so the bridges' clocks need not agree.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import uuid
from typing import Any

from .blobs import INLINE_LIMIT, FileBlobs, TableBlobs
from .sql import INSERT_JOB, Dialect, SqlStore, Tx
from .store import NewJob, StoreError

log = logging.getLogger("kernelpit.jobs")
CHANNEL = "kernelpit_jobs"
CONNECT_TIMEOUT = 5
COPY_ABOVE = 32  # journal rows per commit beyond which COPY beats one INSERT
_NOTIFY_MAX = 7000  # bytes per NOTIFY payload (PostgreSQL allows just under 8000)

SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    num BIGSERIAL PRIMARY KEY,
    id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL, tool TEXT NOT NULL, state TEXT NOT NULL,
    attempt BIGINT NOT NULL, max_attempts BIGINT NOT NULL, created DOUBLE PRECISION NOT NULL,
    started DOUBLE PRECISION, finished DOUBLE PRECISION, worker BIGINT, progress TEXT,
    error TEXT, key TEXT, digest TEXT NOT NULL, idempotent BIGINT NOT NULL,
    deadline DOUBLE PRECISION, session TEXT, pool TEXT, pin_worker BIGINT, owner TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    last_seq BIGINT NOT NULL DEFAULT 0 CHECK (last_seq >= 0),
    request BYTEA, request_ref TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(namespace, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_namespace ON jobs(namespace, num);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(namespace, state, owner);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(namespace, finished);
CREATE TABLE IF NOT EXISTS journal(
    job TEXT NOT NULL, seq BIGINT NOT NULL, kind TEXT NOT NULL, time DOUBLE PRECISION NOT NULL,
    data BYTEA, ref TEXT, PRIMARY KEY (job, seq));
CREATE TABLE IF NOT EXISTS runners(id TEXT PRIMARY KEY, namespace TEXT NOT NULL,
    lease_until DOUBLE PRECISION NOT NULL);
CREATE TABLE IF NOT EXISTS job_blobs(job TEXT NOT NULL, name TEXT NOT NULL, part BIGINT NOT NULL,
    data BYTEA NOT NULL, PRIMARY KEY (job, name, part));
"""


def redact(url: str) -> str:
    """The URL without its password, for messages."""
    return re.sub(r"(://[^:/@]*):[^@/]*@", r"\1:***@", url)


class PostgresTx(Tx):
    """Statements that are only put are held back and sent with the next one that is
    executed, or with COMMIT, as one simple query (``BEGIN; ...; COMMIT``): a journal batch
    or a submission costs one round trip, not one per statement.  Parameters are bound
    client-side (psycopg's ClientCursor) for that."""

    def __init__(self, conn: Any) -> None:
        import psycopg

        self._cur = psycopg.ClientCursor(conn)
        self._held: list[str] = ["BEGIN"]
        self._sent = False

    def put(self, sql: str, params: Any = ()) -> None:
        self._held.append(self._cur.mogrify(sql, params))

    def _send(self) -> None:
        if self._held:
            held, self._held = self._held, []
            self._sent = True  # even if it fails: BEGIN may have gone through, roll it back
            self._cur.execute("; ".join(held))

    def execute(self, sql: str, params: Any = ()) -> Any:
        self._send()
        self._sent = True
        return self._cur.execute(sql, params)

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        names = ", ".join(columns)
        if len(rows) <= COPY_ABOVE:  # held back with the rest of the commit: no round trip
            marks = "(" + ", ".join(["%s"] * len(columns)) + ")"
            self.put(f"INSERT INTO {table}({names}) VALUES " + ",".join([marks] * len(rows)),
                     [v for row in rows for v in row])
            return
        self._send()  # a flood of events: binary COPY, a few round trips for the whole batch
        self._sent = True
        with self._cur.copy(f"COPY {table} ({names}) FROM STDIN") as copy:
            for row in rows:
                copy.write_row(row)

    def commit(self) -> None:
        self._held.append("COMMIT")
        self._send()
        self._cur.close()

    def rollback(self) -> None:
        if self._sent:
            with contextlib.suppress(Exception):
                self._cur.execute("ROLLBACK")
        self._cur.close()


class PostgresStore(SqlStore):
    dialect = Dialect(param="%s", now="EXTRACT(EPOCH FROM clock_timestamp())::float8",
                      same="IS NOT DISTINCT FROM")

    def __init__(self, url: str, *, namespace: str = "default",
                 blob_dir: str | None = None) -> None:
        super().__init__(namespace)
        self.dsn = url
        self.url = redact(url)
        self.blobs = FileBlobs(blob_dir) if blob_dir else TableBlobs("%s")
        self._me = uuid.uuid4().hex[:12]  # tells this store's own notifications apart
        self._listener: asyncio.Task[None] | None = None
        self._listening = asyncio.Event()
        self._inserts: Any = None  # an AsyncConnection: plain submissions, without a thread

    separate_inserts = True  # a submission never waits behind a journal round trip

    async def _insert(self, fn: Any, *args: Any) -> Any:
        """Submissions without a key and with a small request (nearly all) are one INSERT
        of every waiting job, sent from the event loop over an async connection: no hop to
        a thread and back.  Keyed ones (a lookup first) and large requests (stored in
        parts) take the general transaction on the insert thread."""
        jobs: list[NewJob] = args[0]
        if fn != self._create_many or self._inserts is None or any(
                j.info.key is not None or len(j.request) > INLINE_LIMIT for j in jobs):
            return await super()._insert(fn, *args)
        marks = INSERT_JOB[INSERT_JOB.index("VALUES") + 7:].replace("?", "%s")
        sql = INSERT_JOB[:INSERT_JOB.index("VALUES") + 7].replace("?", "%s") + ", ".join(
            [marks] * len(jobs))
        params = [v for j in jobs for v in self._job_row(j, j.request, None)]
        try:
            await self._inserts.execute(sql, params)
        except Exception:
            if self._inserts.closed:  # reconnect for the next ones; this batch fails
                self._inserts = None
                asyncio.ensure_future(self._connect_inserts())
            raise
        return [(j.info, True) for j in jobs]

    async def _connect_inserts(self) -> None:
        import psycopg

        with contextlib.suppress(Exception):
            self._inserts = await psycopg.AsyncConnection.connect(
                self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)

    def connect(self) -> Any:
        import psycopg

        return psycopg.connect(self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT)

    def begin(self, conn: Any) -> "PostgresTx":
        return PostgresTx(conn)

    # -- open ------------------------------------------------------------------------------
    async def open(self) -> None:
        try:
            import psycopg  # noqa: F401
        except ImportError:
            raise StoreError(f"the job store {self.url} needs psycopg 3: pip install "
                             "'kernelpit[postgres]'") from None
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(self._writer, self._open)
        self._loop = loop
        await self._connect_inserts()
        self._listener = asyncio.ensure_future(self._listen())
        try:
            await asyncio.wait_for(self._listening.wait(), CONNECT_TIMEOUT * 2)
        except asyncio.TimeoutError:
            await self.close()
            raise StoreError(f"the job store {self.url} does not accept LISTEN on "
                             f"'{CHANNEL}'; check the server's logs") from None

    def _open(self) -> None:
        import psycopg

        try:
            conn = self.connect()
        except psycopg.OperationalError as exc:
            raise StoreError(
                f"cannot reach the PostgreSQL job store {self.url}: {str(exc).strip()}; check "
                "that the server runs and that host, port, user, password and database in the "
                "URL are right (or use a SQLite store: --store PATH)") from None
        self._wconn = conn
        try:
            with conn.transaction():
                # two bridges starting together must not both create the tables
                conn.execute("SELECT pg_advisory_xact_lock(hashtext('kernelpit_jobs_schema'))")
                conn.execute(SCHEMA)
        except psycopg.Error as exc:
            self._wconn = None
            conn.close()
            raise StoreError(f"cannot create or read the job tables in {self.url}: "
                             f"{str(exc).strip()}; the user needs CREATE rights on the "
                             "database's public schema (or create the tables once as owner)"
                             ) from None
        if isinstance(self.blobs, FileBlobs):
            try:
                self.blobs.ensure()
            except OSError as exc:
                raise StoreError(f"cannot use the shared value folder {self.blobs.root} of "
                                 f"{self.url}: {exc.strerror or exc}") from None

    async def close(self) -> None:
        if self.closed:
            return
        if self._listener is not None:
            self._listener.cancel()
            with contextlib.suppress(BaseException):
                await self._listener
        if self._inserts is not None:
            with contextlib.suppress(Exception):
                await self._inserts.close()
            self._inserts = None
        await self._shutdown()

    # -- notifications -----------------------------------------------------------------------
    def after_commit(self, cur: Any, jobs: set[str], cancel: str | None = None) -> None:
        head = f"{self._me}|{self.namespace}|{cancel or ''}|"
        ids = sorted(jobs)
        while True:
            part, size = [], len(head)
            while ids and size + len(ids[-1]) + 1 < _NOTIFY_MAX:
                size += len(ids[0]) + 1
                part.append(ids.pop())
            cur.put("SELECT pg_notify(%s, %s)", (CHANNEL, head + ",".join(part)))
            if not ids:
                return

    async def _listen(self) -> None:
        import psycopg

        delay = 0.2
        while True:
            try:
                async with await psycopg.AsyncConnection.connect(
                        self.dsn, autocommit=True, connect_timeout=CONNECT_TIMEOUT) as conn:
                    await conn.execute(f"LISTEN {CHANNEL}")
                    self._listening.set()
                    self._notify(None)  # anything missed while not listening: look again
                    delay = 0.2
                    async for note in conn.notifies():
                        self._on_note(note.payload)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - reconnect; readers poll meanwhile
                log.warning("lost the LISTEN connection to the job store %s (%s); reconnecting",
                            self.url, exc)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 5.0)

    def _on_note(self, payload: str) -> None:
        sender, namespace, cancel, ids = (payload.split("|", 3) + ["", "", ""])[:4]
        if namespace != self.namespace:
            return
        if cancel:
            self._cancel_requested(cancel)
        if sender != self._me:
            self._notify([i for i in ids.split(",") if i])
