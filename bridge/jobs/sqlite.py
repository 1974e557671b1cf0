"""The default job store: one SQLite file (stdlib ``sqlite3``), large values in files beside it.

WAL mode with ``synchronous=NORMAL``: a commit is durable against a process dying (the
WAL is in the OS page cache), and a power loss or OS crash can lose only the last
commits since the most recent WAL checkpoint sync, never corrupt the file.  The
database, its ``-wal`` and ``-shm`` files and the value files are private to the user
(0600; the value directory 0700).  Other processes' commits to the same file are seen by
polling its data version every :data:`POLL` seconds.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import sqlite3
import stat
import time
from typing import Any

from .blobs import INLINE_LIMIT, FileBlobs
from .sql import Dialect, SqlStore, Tx
from .store import Entry, NewJob, StoreError

POLL = 0.2
#: a transaction is written on the event loop thread (no hop to the writer thread) when it
#: has at most this many journal entries and jobs, and no value beyond INLINE_LIMIT
INLINE_ENTRIES = 64
#: WAL pages (about 4 KiB each) after which the writer thread checkpoints (off the loop)
CHECKPOINT_PAGES = 1000
SCHEMA = """
CREATE TABLE IF NOT EXISTS jobs(
    num INTEGER PRIMARY KEY AUTOINCREMENT,
    id TEXT NOT NULL UNIQUE, namespace TEXT NOT NULL, tool TEXT NOT NULL, state TEXT NOT NULL,
    attempt INTEGER NOT NULL, max_attempts INTEGER NOT NULL, created REAL NOT NULL,
    started REAL, finished REAL, worker INTEGER, progress TEXT, error TEXT,
    key TEXT, digest TEXT NOT NULL, idempotent INTEGER NOT NULL, deadline REAL, session TEXT,
    pool TEXT, pin_worker INTEGER, owner TEXT, cancel_requested INTEGER NOT NULL DEFAULT 0,
    last_seq INTEGER NOT NULL DEFAULT 0 CHECK (last_seq >= 0), request BLOB, request_ref TEXT);
CREATE UNIQUE INDEX IF NOT EXISTS jobs_key ON jobs(namespace, key) WHERE key IS NOT NULL;
CREATE INDEX IF NOT EXISTS jobs_namespace ON jobs(namespace, num);
CREATE INDEX IF NOT EXISTS jobs_open ON jobs(namespace, state, owner);
CREATE INDEX IF NOT EXISTS jobs_finished ON jobs(namespace, finished);
CREATE TABLE IF NOT EXISTS journal(
    job TEXT NOT NULL, seq INTEGER NOT NULL, kind TEXT NOT NULL, time REAL NOT NULL,
    data BLOB, ref TEXT, PRIMARY KEY (job, seq)) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS runners(id TEXT PRIMARY KEY, namespace TEXT NOT NULL,
    lease_until REAL NOT NULL);
"""


class SqliteTx(Tx):
    """Statements run at once (in-process: nothing to gain by holding them back)."""

    def __init__(self, conn: sqlite3.Connection) -> None:
        self._conn = conn
        self._cur = conn.cursor()
        self._cur.execute("BEGIN IMMEDIATE")  # the write lock now: no upgrade deadlock later

    def put(self, sql: str, params: Any = ()) -> None:
        self._cur.execute(sql, params)

    def execute(self, sql: str, params: Any = ()) -> Any:
        return self._cur.execute(sql, params)

    def insert(self, table: str, columns: tuple[str, ...], rows: list[tuple[Any, ...]]) -> None:
        self._cur.executemany(f"INSERT INTO {table}({', '.join(columns)}) VALUES "
                              f"({', '.join('?' * len(columns))})", rows)

    def commit(self) -> None:
        self._cur.execute("COMMIT")
        self._cur.close()

    def rollback(self) -> None:
        with contextlib.suppress(sqlite3.Error):
            self._cur.execute("ROLLBACK")
        self._cur.close()


class SqliteStore(SqlStore):
    dialect = Dialect(param="?", now="(julianday('now') - 2440587.5) * 86400.0", same="IS")

    def __init__(self, path: str, *, namespace: str = "default", blob_dir: str | None = None,
                 lock_timeout: float = 5.0) -> None:
        super().__init__(namespace)
        self.path = os.path.abspath(os.path.expanduser(path))
        self.url = self.path
        self.blobs = FileBlobs(blob_dir or self.path + ".values")
        self.lock_timeout = lock_timeout
        self._poller: asyncio.Task[None] | None = None
        self._unchecked = 0  # commits since the last checkpoint
        self._checkpoint: asyncio.Future[Any] | None = None

    def connect(self) -> sqlite3.Connection:
        old = os.umask(0o077)  # the database and the -wal / -shm files SQLite makes: 0600
        try:
            conn = sqlite3.connect(self.path, timeout=self.lock_timeout, isolation_level=None,
                                   check_same_thread=False)
        finally:
            os.umask(old)
        conn.execute("PRAGMA synchronous=NORMAL")
        # no checkpoint inside a commit (it syncs the files): the writer thread runs them
        conn.execute("PRAGMA wal_autocheckpoint=0")
        return conn

    # -- small writes on the loop ------------------------------------------------------------
    def write_now(self, fn: Any, args: tuple[Any, ...]) -> tuple[bool, Any]:
        """Creates and journal batches that are small commit right on the event loop: in WAL
        mode with ``synchronous=NORMAL`` a commit appends to the WAL in the OS page cache and
        syncs nothing (tens of microseconds), while a hop to the writer thread and back costs
        several times that (thread wake-ups and the GIL).  What could block stays on the
        writer thread: large values (files), big batches, a file another process holds
        locked (tried without waiting, then handed over), and checkpoints (the only syncs)."""
        if self._wconn is None or not self._small(fn, args):
            return False, None
        riders: list[Entry] = []
        if fn == self._create_many and self.rider is not None:
            # the journal's waiting entries go in the same commit (group commit)
            riders = self.rider.take(lambda batch: self._small(self._record, (batch,)))
        try:
            if riders:
                out, touched, failure = SqlStore._in_tx(self, self._create_with, args + (riders,))
            else:
                out = SqlStore._in_tx(self, fn, args)  # once: busy goes to the writer thread
        except sqlite3.OperationalError as exc:
            if riders:
                self.rider.put_back(riders)
            if "locked" in str(exc) or "busy" in str(exc):
                return False, None  # rolled back: the writer thread waits for the lock
            raise
        except BaseException:
            if riders:
                self.rider.put_back(riders)
            raise
        if riders:
            self._notify(touched)
            self.rider.landed(riders, failure)
        self._unchecked += 1
        if self._unchecked >= 100 and self._checkpoint is None:
            self._checkpoint = asyncio.ensure_future(self._checkpoint_soon())
        return True, out

    def _create_with(self, tx: Any, jobs: list[NewJob], entries: list[Entry]
                     ) -> tuple[list[Any], set[str], BaseException | None]:
        """Insert ``jobs`` and record the journal's ``entries`` in one transaction; the
        entries under a savepoint, so that a batch refused (its seqs do not follow) fails
        alone and the submissions still commit."""
        out = self._create_many(tx, jobs)
        tx.execute("SAVEPOINT journal")
        try:
            touched = self._record(tx, entries)
        except Exception as exc:  # noqa: BLE001 - handed to the journal, which retries
            tx.execute("ROLLBACK TO journal")
            tx.execute("RELEASE journal")
            return out, set(), exc
        tx.execute("RELEASE journal")
        return out, touched, None

    def _small(self, fn: Any, args: tuple[Any, ...]) -> bool:
        if fn == self._create_many:
            jobs: list[NewJob] = args[0]
            return len(jobs) <= INLINE_ENTRIES and all(
                len(j.request) <= INLINE_LIMIT for j in jobs)
        if fn == self._record:
            entries: list[Entry] = args[0]
            if len(entries) > INLINE_ENTRIES:
                return False
            for e in entries:
                if e.kind is not None and e.packed is None:
                    e.packed = self._packed(e)
                if e.packed is not None and len(e.packed) > INLINE_LIMIT:
                    return False
            return True
        return False

    async def _checkpoint_soon(self) -> None:
        """Checkpoint the WAL on the writer thread once it is big (PASSIVE: writers go on)."""
        try:
            if self._wal_pages() >= CHECKPOINT_PAGES:
                await self._on_writer(self._checkpoint_now)
            self._unchecked = 0
        except Exception:  # noqa: BLE001 - closing, or busy: the next commits try again
            pass
        finally:
            self._checkpoint = None

    def _wal_pages(self) -> int:
        try:
            return os.path.getsize(self.path + "-wal") // 4096
        except OSError:
            return 0

    def _checkpoint_now(self) -> None:
        if self._wconn is not None:
            self._wconn.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()

    def begin(self, conn: sqlite3.Connection) -> "SqliteTx":
        return SqliteTx(conn)

    def _in_tx(self, fn: Any, args: tuple[Any, ...], attr: str = "_wconn") -> Any:
        """A transaction on the writer thread: it waits up to ``lock_timeout`` for a file
        another process holds locked (the connection itself never waits: see write_now)."""
        end = time.monotonic() + self.lock_timeout
        pause = 0.001
        while True:
            try:
                return super()._in_tx(fn, args, attr)
            except sqlite3.OperationalError as exc:
                if not ("locked" in str(exc) or "busy" in str(exc)) or time.monotonic() > end:
                    raise
            time.sleep(pause)
            pause = min(pause * 2, 0.05)

    # -- open ------------------------------------------------------------------------------
    async def open(self) -> None:
        await asyncio.get_running_loop().run_in_executor(self._writer, self._open)
        self._loop = asyncio.get_running_loop()
        self._poller = asyncio.ensure_future(self._poll())

    def _open(self) -> None:
        where = f"the job store {self.path}"
        folder = os.path.dirname(self.path)
        try:
            os.makedirs(folder, mode=0o700, exist_ok=True)
        except OSError as exc:
            raise StoreError(f"cannot create the folder of {where}: {exc.strerror or exc}; "
                             "pass a writable path (kernelpit serve --store PATH, "
                             "Pool(store=PATH))") from None
        if os.path.exists(self.path) and not os.access(self.path, os.R_OK | os.W_OK) \
                or not os.path.exists(self.path) and not os.access(folder, os.W_OK | os.X_OK):
            raise StoreError(f"{where} cannot be written (permission denied); fix its "
                             "permissions or pass another path (--store PATH, Pool(store=PATH))")
        try:
            conn = self.connect()
            self._wconn = conn
            # reading the schema fails at once on a file that is not a database
            conn.execute("SELECT count(*) FROM sqlite_master").fetchone()
            mode = conn.execute("PRAGMA journal_mode=WAL").fetchone()[0]
            if str(mode).lower() != "wal":
                raise StoreError(f"{where} cannot use WAL mode (journal mode stays {mode}); "
                                 "put the store on a local file system")
            conn.executescript(SCHEMA)
            conn.execute("BEGIN IMMEDIATE")  # proves that we can take the write lock
            conn.execute("COMMIT")
            # from now on a busy lock fails at once (a write on the loop must not wait); the
            # writer thread waits for it itself (_in_tx)
            conn.execute("PRAGMA busy_timeout=0")
        except sqlite3.OperationalError as exc:
            self._drop_connection()
            text = str(exc)
            if "locked" in text or "busy" in text:
                raise StoreError(
                    f"{where} is locked by another process (still locked after "
                    f"{self.lock_timeout:g} s); stop the program holding it (`fuser "
                    f"{self.path}` names it), or use another store") from None
            raise StoreError(f"cannot open {where}: {text}; check the path and its permissions, "
                             "or pass another one (--store PATH)") from None
        except sqlite3.DatabaseError as exc:
            self._drop_connection()
            raise StoreError(
                f"{where} is not a readable SQLite database ({exc}); it was left as it is. Move "
                f"it aside (mv {self.path} {self.path}.broken) to start an empty store, or pass "
                "another path (--store PATH)") from None
        except StoreError:
            self._drop_connection()
            raise
        try:
            self.blobs.ensure()
            for suffix in ("", "-wal", "-shm"):
                if os.path.exists(self.path + suffix):
                    os.chmod(self.path + suffix, stat.S_IRUSR | stat.S_IWUSR)
        except OSError as exc:
            self._drop_connection()
            raise StoreError(f"cannot prepare the value folder {self.blobs.root} of {where}: "
                             f"{exc.strerror or exc}; fix its permissions") from None
        self._version = conn.execute("PRAGMA data_version").fetchone()[0]

    def _drop_connection(self) -> None:
        if self._wconn is not None:
            with contextlib.suppress(Exception):
                self._wconn.close()
            self._wconn = None

    async def close(self) -> None:
        if self.closed:
            return
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(BaseException):
                await self._poller
        await self._shutdown()

    # -- other processes ---------------------------------------------------------------------
    def _changed_elsewhere(self) -> bool:
        """Whether another connection committed since the last look (writer thread)."""
        version = self._wconn.execute("PRAGMA data_version").fetchone()[0]
        changed, self._version = version != self._version, version
        return changed

    async def _poll(self) -> None:
        while True:
            await asyncio.sleep(POLL)
            try:
                changed = await self._on_writer(self._changed_elsewhere)
            except Exception:  # noqa: BLE001 - closing, or a passing lock: look again later
                continue
            if changed:
                self._notify(None)
                self._cancel_requested(None)
