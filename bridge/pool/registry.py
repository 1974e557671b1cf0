"""The run registry: which kernels which controller started, on disk, so that a later start finds them.

``<jupyter runtime dir>/kernelpit/registry.sqlite`` (stdlib ``sqlite3``, WAL mode,
short transactions, a busy timeout: several controllers of one user share it).

Every start of a pool is a *run* (``PoolManager.run_id``); the controller is the
process that owns it, identified by pid *and* create time, so that a reused pid is
not mistaken for it. Each kernel is recorded in two phases::

    reserve(run, worker)                 before the launch: state 'reserved'
    activate(run, worker, pid)           after it: pid, pgid, create time, state 'active'
    activate_remote(run, worker, node, host, actor, pid)
                                         ... of a kernel placed on a Ray node: where it runs
                                         (node id, address, host actor; its pid there), and
                                         no local pid, so nothing here ever signals it
    gone(run, worker)                    stopped or exited: state 'gone'
    close_run(run)                       the pool closed: its rows are deleted

A row whose controller is gone (dead, or its pid now names another process) is
what the reaper (``reaper.py``) acts on. Nothing here ever kills anything.

The pool reaches the registry through the module functions (``open_run``,
``reserve``, ``activate``, ``gone``, ``close_run``), keyed by run id: a registry
problem (read-only runtime dir, a locked file) is logged once and never fails a
pool.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import sqlite3
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil
from jupyter_core.paths import jupyter_runtime_dir

log = logging.getLogger("kernelpit")

SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    run_id           TEXT PRIMARY KEY,
    controller_pid   INTEGER NOT NULL,
    controller_start REAL NOT NULL,
    started          REAL NOT NULL,
    closed           REAL
);
CREATE TABLE IF NOT EXISTS kernels (
    run_id           TEXT NOT NULL,
    worker_id        INTEGER NOT NULL,
    state            TEXT NOT NULL,          -- reserved, active, gone
    controller_pid   INTEGER NOT NULL,
    controller_start REAL NOT NULL,
    pid              INTEGER,
    pgid             INTEGER,
    create_time      REAL,
    reserved         REAL NOT NULL,
    activated        REAL,
    ended            REAL,
    node             TEXT,                   -- Ray node id of a Ray-placed kernel
    host             TEXT,                   -- that node's address
    actor            TEXT,                   -- its host actor's name
    remote_pid       INTEGER,                -- its pid on that node
    PRIMARY KEY (run_id, worker_id)
);
"""
# columns added after the first release: a registry made by an older version gains them
_ADDED = (("node", "TEXT"), ("host", "TEXT"), ("actor", "TEXT"), ("remote_pid", "INTEGER"))


def default_path() -> Path:
    """``<jupyter runtime dir>/kernelpit/registry.sqlite`` (honours ``JUPYTER_RUNTIME_DIR``)."""
    return Path(jupyter_runtime_dir()) / "kernelpit" / "registry.sqlite"


_identity: tuple[int, float] | None = None


def controller_identity() -> tuple[int, float]:
    """This process's (pid, create time), as the kernels' ``KERNELPIT_CONTROLLER_*`` carry it."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:  # recomputed after a fork
        _identity = (pid, psutil.Process(pid).create_time())
    return _identity


def process_alive(pid: int | None, create_time: float | None) -> bool:
    """True when ``pid`` runs and is the process that started at ``create_time`` (not a zombie)."""
    if not pid or pid <= 0:
        return False
    try:
        proc = psutil.Process(pid)
        if create_time is not None and abs(proc.create_time() - create_time) > 1.0:
            return False  # the pid was reused
        return proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


SIDECARS = ("", "-wal", "-shm")


def _private(path: Path) -> None:
    """Make the registry (0600, like everything else of a run) before SQLite opens it: SQLite
    gives its ``-wal`` and ``-shm`` files the database file's mode.  Files an older version
    made world-readable are narrowed.

    An existing file is never opened here: closing any descriptor of a file drops every POSIX
    lock this process holds on it, SQLite's included, and another process could then take
    the database for unused and reset its WAL, losing commits.
    """
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL, 0o600)  # umask can only narrow
    except FileExistsError:
        pass
    else:
        os.close(fd)  # new and empty: no connection of this process has it open
    for name in (str(path), *(f"{path}{suffix}" for suffix in SIDECARS)):
        with contextlib.suppress(OSError):
            if os.stat(name).st_mode & 0o077:
                os.chmod(name, 0o600)


@dataclass
class KernelRow:
    run_id: str
    worker_id: int
    state: str
    controller_pid: int
    controller_start: float
    pid: int | None
    pgid: int | None
    create_time: float | None
    reserved: float
    activated: float | None
    ended: float | None
    run_closed: float | None = None
    node: str | None = None
    host: str | None = None
    actor: str | None = None
    remote_pid: int | None = None

    @property
    def controller_alive(self) -> bool:
        return process_alive(self.controller_pid, self.controller_start)


@dataclass
class RunRow:
    run_id: str
    controller_pid: int
    controller_start: float
    started: float
    closed: float | None

    @property
    def controller_alive(self) -> bool:
        return process_alive(self.controller_pid, self.controller_start)


class RunRegistry:
    """One SQLite file shared by every controller of this user (same runtime dir)."""

    def __init__(self, path: str | Path | None = None, busy_timeout: float = 5.0) -> None:
        self.path = Path(path) if path is not None else default_path()
        self.path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        _private(self.path)
        self._lock = threading.Lock()
        self._db = sqlite3.connect(self.path, timeout=busy_timeout, isolation_level=None,
                                   check_same_thread=False)
        self._db.execute(f"PRAGMA busy_timeout = {int(busy_timeout * 1000)}")
        self._db.execute("PRAGMA journal_mode = WAL")
        self._db.execute("PRAGMA synchronous = NORMAL")
        _private(self.path)  # the -wal and -shm files, now that they exist
        with self._tx() as db:
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    db.execute(statement)
            have = {row[1] for row in db.execute("PRAGMA table_info(kernels)")}
            for column, kind in _ADDED:
                if column not in have:
                    db.execute(f"ALTER TABLE kernels ADD COLUMN {column} {kind}")

    # -- plumbing ----------------------------------------------------------------------
    class _Tx:
        def __init__(self, reg: "RunRegistry") -> None:
            self.reg = reg

        def __enter__(self) -> sqlite3.Connection:
            self.reg._lock.acquire()
            try:
                self.reg._db.execute("BEGIN IMMEDIATE")
            except BaseException:
                self.reg._lock.release()
                raise
            return self.reg._db

        def __exit__(self, exc_type: Any, *rest: Any) -> None:
            try:
                self.reg._db.execute("COMMIT" if exc_type is None else "ROLLBACK")
            finally:
                self.reg._lock.release()

    def _tx(self) -> "RunRegistry._Tx":
        """A short write transaction (BEGIN IMMEDIATE: the busy timeout applies at once)."""
        return RunRegistry._Tx(self)

    def _query(self, sql: str, args: tuple[Any, ...] = ()) -> list[tuple[Any, ...]]:
        with self._lock:
            return self._db.execute(sql, args).fetchall()

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def damage(self) -> str | None:
        """What SQLite finds wrong with the file (``PRAGMA integrity_check``: a few ms for a
        registry), or None when it is sound.  A damaged registry reads wrong rows (pages of
        one table read as another's) and fails writes with "database disk image is
        malformed"; ``kernelpit doctor`` reports it with the fix."""
        found = [r[0] for r in self._query("PRAGMA integrity_check(4)") if r[0] != "ok"]
        return "; ".join(found) or None

    # -- writes ------------------------------------------------------------------------
    def open_run(self, run_id: str) -> None:
        pid, start = controller_identity()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO runs VALUES (?, ?, ?, ?, NULL)",
                       (run_id, pid, start, time.time()))

    def reserve(self, run_id: str, worker_id: int) -> None:
        """Phase one, before the launch: this controller is about to start this worker."""
        pid, start = controller_identity()
        with self._tx() as db:
            db.execute("INSERT OR REPLACE INTO kernels (run_id, worker_id, state, controller_pid, "
                       "controller_start, reserved) VALUES (?, ?, 'reserved', ?, ?, ?)",
                       (run_id, worker_id, pid, start, time.time()))

    def activate(self, run_id: str, worker_id: int, pid: int) -> None:
        """Phase two, after the launch: the kernel's pid, process group and create time."""
        try:
            pgid: int | None = os.getpgid(pid)
        except OSError:
            pgid = None
        try:
            created: float | None = psutil.Process(pid).create_time()
        except psutil.Error:
            created = None
        with self._tx() as db:
            db.execute("UPDATE kernels SET state = 'active', pid = ?, pgid = ?, create_time = ?, "
                       "activated = ? WHERE run_id = ? AND worker_id = ?",
                       (pid, pgid, created, time.time(), run_id, worker_id))

    def activate_remote(self, run_id: str, worker_id: int, node: str | None, host: str | None,
                        actor: str | None, remote_pid: int | None) -> None:
        """Phase two for a kernel on another node: where it runs, and no local pid."""
        with self._tx() as db:
            db.execute("UPDATE kernels SET state = 'active', node = ?, host = ?, actor = ?, "
                       "remote_pid = ?, activated = ? WHERE run_id = ? AND worker_id = ?",
                       (node, host, actor, remote_pid, time.time(), run_id, worker_id))

    def gone(self, run_id: str, worker_id: int) -> None:
        with self._tx() as db:
            db.execute("UPDATE kernels SET state = 'gone', ended = ? WHERE run_id = ? AND "
                       "worker_id = ? AND state != 'gone'", (time.time(), run_id, worker_id))

    def close_run(self, run_id: str) -> None:
        """The pool closed: forget the rows of kernels that are gone; keep any that are not."""
        with self._tx() as db:
            db.execute("DELETE FROM kernels WHERE run_id = ? AND state = 'gone'", (run_id,))
            left = db.execute("SELECT COUNT(*) FROM kernels WHERE run_id = ?", (run_id,)).fetchone()[0]
            if left:
                db.execute("UPDATE runs SET closed = ? WHERE run_id = ?", (time.time(), run_id))
            else:
                db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    def forget(self, run_ids: list[str]) -> None:
        """Delete every row of these runs (the reaper calls it once their kernels are gone)."""
        if not run_ids:
            return
        with self._tx() as db:
            for run_id in run_ids:
                db.execute("DELETE FROM kernels WHERE run_id = ?", (run_id,))
                db.execute("DELETE FROM runs WHERE run_id = ?", (run_id,))

    # -- reads -------------------------------------------------------------------------
    def runs(self) -> list[RunRow]:
        return _typed(RunRow, self._query(
            "SELECT run_id, controller_pid, controller_start, started, closed FROM runs"))

    def kernels(self, run_id: str | None = None) -> list[KernelRow]:
        sql = ("SELECT k.run_id, k.worker_id, k.state, k.controller_pid, k.controller_start, k.pid, "
               "k.pgid, k.create_time, k.reserved, k.activated, k.ended, r.closed, k.node, k.host, "
               "k.actor, k.remote_pid FROM kernels k "
               "LEFT JOIN runs r ON r.run_id = k.run_id")
        if run_id is not None:
            return _typed(KernelRow, self._query(sql + " WHERE k.run_id = ? ORDER BY "
                                                 "k.worker_id", (run_id,)))
        return _typed(KernelRow, self._query(sql + " ORDER BY k.run_id, k.worker_id"))


def _typed(row_type: Any, rows: Any) -> list[Any]:
    """The rows whose values have their columns' types; a malformed row (written by hand, or
    by another program) is passed over, so it cannot stop the reaper from seeing the rest."""
    fields = dataclasses.fields(row_type)
    out, malformed = [], []
    for row in rows:
        if all(_fits(value, f.type) for value, f in zip(row, fields)):
            out.append(row_type(*row))
        else:
            malformed.append(row)
    new = [row for row in malformed if row not in _reported]
    if new:  # once per row and process: every pool start reads the registry again
        _reported.update(new)
        log.warning("kernelpit: passing over %d malformed row(s) of the run registry (the "
                    "first: %r); `kernelpit doctor` checks the file and says how to repair it",
                    len(new), new[0])
    return out


_reported: set[tuple[Any, ...]] = set()


def _fits(value: Any, annotation: str) -> bool:
    if value is None:
        return "None" in annotation
    if annotation.startswith("str"):
        return isinstance(value, str)
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# -- the pool's hooks: one registry per run, failures logged and ignored ---------------------

_open: dict[str, RunRegistry] = {}
_warned = False


def _guard(what: str, fn: Any, *args: Any) -> Any:
    global _warned
    try:
        return fn(*args)
    except (sqlite3.Error, OSError) as exc:
        if not _warned:
            _warned = True
            log.warning("kernelpit: the run registry could not %s (%s: %s); orphaned kernels of "
                        "this run may not be found by a later start. See `kernelpit doctor`.",
                        what, type(exc).__name__, exc)
        return None


def open_run(run_id: str) -> RunRegistry | None:
    """Open the registry for a pool start and record the run; None when that failed (logged)."""
    reg = _guard("be opened", RunRegistry)
    if reg is None:
        return None
    _guard("record the run", reg.open_run, run_id)
    _open[run_id] = reg
    return reg


def reserve(run_id: str, worker_id: int) -> None:
    reg = _open.get(run_id)
    if reg is not None:
        _guard("reserve a kernel", reg.reserve, run_id, worker_id)


def activate(run_id: str, worker_id: int, pid: int | None) -> None:
    reg = _open.get(run_id)
    if reg is not None and pid:
        _guard("record a kernel", reg.activate, run_id, worker_id, pid)


def activate_remote(run_id: str, worker_id: int, node: str | None, host: str | None,
                    actor: str | None, remote_pid: int | None) -> None:
    reg = _open.get(run_id)
    if reg is not None:
        _guard("record a kernel", reg.activate_remote, run_id, worker_id, node, host, actor,
               remote_pid)


def gone(run_id: str, worker_id: int) -> None:
    reg = _open.get(run_id)
    if reg is not None:
        _guard("record a kernel's end", reg.gone, run_id, worker_id)


def close_run(run_id: str) -> None:
    reg = _open.pop(run_id, None)
    if reg is not None:
        _guard("close the run", reg.close_run, run_id)
        _guard("be closed", reg.close)
