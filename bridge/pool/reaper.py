"""The process killer: find kernels left by earlier runs whose controller is gone, and end them.

It runs on every pool start (``PoolManager.start``, before any worker launches)
and in ``kernelpit doctor``. Two sources, because either alone can miss one:

* the run registry (``registry.py``): rows whose controller pid is dead, or now
  names another process (its create time differs), or whose run was closed;
* a scan of this user's processes for the marker every kernel carries in its
  environment, ``KERNELPIT_RUN_ID``, judged by the registry's row for that run or,
  without one, by the kernel's own ``KERNELPIT_CONTROLLER_PID``/``_START``. A tool's
  subprocess inherits the marker too, so one that left the kernel's process group
  is found as well.

Safety: a process is signalled only when it carries the marker of a run judged
dead (checked by reading its environment, and by its create time, so a reused
pid is never hit), or is a descendant of such a process, or is in the process
group that such a process leads (only its descendants can be). Unknown markers
(no registry row and no controller variables) are reported, never killed. The
calling process and its ancestors are never signalled.

Kill: SIGTERM to the process group and to each process, then wait for the exits
(pidfd poll on Linux, ``psutil.wait_procs`` elsewhere: no fixed sleeps), then
SIGKILL to whatever is left after ``grace`` seconds.

Scope: kernels whose ``KERNELPIT_REGISTRY`` names another registry (another
``JUPYTER_RUNTIME_DIR``) belong to another installation or test session and are
left alone, unless ``everywhere=True``.

Cost when there is nothing to reap: one read of ``/proc/<pid>/environ`` per
process plus one SQLite query; see docs/reliability.md for the measured figure.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import signal
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import psutil

from . import leftovers
from .registry import RunRegistry, controller_identity, default_path, process_alive

log = logging.getLogger("kernelpit")

MARKER = b"KERNELPIT_RUN_ID="


@dataclass
class Orphan:
    """A live process of an earlier run whose controller is gone."""

    pid: int
    run_id: str
    create_time: float
    pgid: int | None
    worker: str | None
    controller_pid: int | None
    reason: str
    cmdline: str
    found_by: str  # "registry", "scan" or "registry+scan"

    def describe(self) -> str:
        what = f"worker {self.worker} kernel" if self.worker else "process"
        return (f"{what} pid {self.pid} of run {self.run_id} ({self.reason}; found by "
                f"{self.found_by}): {self.cmdline[:100]}")


@dataclass
class Scan:
    """What a search found, and what it cost."""

    orphans: list[Orphan] = field(default_factory=list)
    processes: int = 0         # processes looked at
    marked: int = 0            # processes carrying a run-id marker (any run)
    undetermined: list[int] = field(default_factory=list)  # marked, no controller known, parent
    #                                                        gone (an older version's?): left alone
    dead_runs: list[str] = field(default_factory=list)     # registry runs with nothing left alive
    runs_seen: set[str] = field(default_factory=set)       # run ids of every marked process seen
    seconds: float = 0.0


@dataclass
class Reaped:
    scan: Scan
    terminated: list[int] = field(default_factory=list)  # exited after SIGTERM
    killed: list[int] = field(default_factory=list)      # needed SIGKILL
    survivors: list[int] = field(default_factory=list)   # still running (should not happen)
    removed_files: list[str] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def orphans(self) -> list[Orphan]:
        return self.scan.orphans


# -- finding ---------------------------------------------------------------------------------

def _parse_env(data: bytes) -> dict[str, str]:
    env = {}
    for item in data.split(b"\0"):
        key, sep, value = item.partition(b"=")
        if sep and key.startswith(b"KERNELPIT_"):
            env[key.decode(errors="replace")] = value.decode(errors="replace")
    return env


def _marked_processes() -> tuple[list[tuple[int, dict[str, str]]], int]:
    """(pid, KERNELPIT_* environment) of this user's processes carrying a run id; and how many seen."""
    me, uid = os.getpid(), os.getuid()
    found: list[tuple[int, dict[str, str]]] = []
    if sys.platform.startswith("linux") and os.path.isdir("/proc"):
        names = [n for n in os.listdir("/proc") if n.isdigit()]
        for name in names:
            try:
                with open(f"/proc/{name}/environ", "rb") as f:
                    data = f.read()
            except OSError:  # another user's process, or gone
                continue
            if MARKER not in data:
                continue
            pid = int(name)
            try:
                if pid == me or os.stat(f"/proc/{name}").st_uid != uid:
                    continue
            except OSError:
                continue
            found.append((pid, _parse_env(data)))
        return found, len(names)
    count = 0
    for proc in psutil.process_iter():
        count += 1
        if proc.pid == me:
            continue
        with contextlib.suppress(psutil.Error):
            if proc.uids().real != uid:
                continue
            env = proc.environ()
            if "KERNELPIT_RUN_ID" in env:
                found.append((proc.pid, {k: v for k, v in env.items() if k.startswith("KERNELPIT_")}))
    return found, count


def _same_path(a: str | None, b: Path | None) -> bool:
    if not a or b is None:
        return False
    with contextlib.suppress(OSError):
        return os.path.samefile(a, b) if os.path.exists(a) else os.path.abspath(a) == str(b)
    return False


def find_orphans(registry: RunRegistry | None = None, *, everywhere: bool = False) -> Scan:
    """Search the registry and this user's processes; kill nothing."""
    t0 = time.perf_counter()
    scan = Scan()
    runs = {r.run_id: r for r in registry.runs()} if registry is not None else {}
    scope = registry.path if registry is not None else default_path()
    dead: dict[str, str] = {}      # run id -> why its kernels are orphans
    for run in runs.values():
        if not run.controller_alive:
            dead[run.run_id] = f"its controller pid {run.controller_pid} is gone"
        elif run.closed is not None:
            dead[run.run_id] = "its pool was closed"
    marked, scan.processes = _marked_processes()
    scan.marked = len(marked)
    scan.runs_seen = {env.get("KERNELPIT_RUN_ID", "") for _, env in marked}
    seen: dict[int, Orphan] = {}
    controllers: dict[tuple[int, float | None], bool] = {}  # one check per controller
    for pid, env in marked:
        run_id = env.get("KERNELPIT_RUN_ID", "")
        reason = dead.get(run_id)
        if reason is None:
            if run_id in runs:
                continue  # its controller is alive
            if not everywhere and env.get("KERNELPIT_REGISTRY") \
                    and env["KERNELPIT_REGISTRY"] != str(scope) \
                    and not _same_path(env["KERNELPIT_REGISTRY"], scope):
                continue  # another runtime dir's kernel
            cpid = env.get("KERNELPIT_CONTROLLER_PID", "")
            if not cpid.isdigit():
                if _ppid(pid) in (0, 1):  # reparented to init: probably an orphan of an old version
                    scan.undetermined.append(pid)
                continue
            try:
                cstart: float | None = float(env.get("KERNELPIT_CONTROLLER_START", ""))
            except ValueError:
                cstart = None
            key = (int(cpid), cstart)
            if key not in controllers:
                controllers[key] = process_alive(*key)
            if controllers[key]:
                continue
            reason = f"its controller pid {cpid} is gone"
        orphan = _describe(pid, run_id, env.get("KERNELPIT_WORKER"),
                           _int(env.get("KERNELPIT_CONTROLLER_PID")), reason, "scan")
        if orphan is not None:
            seen[pid] = orphan
    # Rows the scan could not see (environment unreadable, a changed marker scope)
    if registry is not None and dead:
        alive_runs: set[str] = {o.run_id for o in seen.values()}
        for row in registry.kernels():
            if row.run_id not in dead or not row.pid:
                continue
            if row.pid in seen:
                seen[row.pid].found_by = "registry+scan"
                continue
            if process_alive(row.pid, row.create_time) and _carries(row.pid, row.run_id):
                orphan = _describe(row.pid, row.run_id, str(row.worker_id), row.controller_pid,
                                   dead[row.run_id], "registry")
                if orphan is not None:
                    seen[row.pid] = orphan
                    alive_runs.add(row.run_id)
        scan.dead_runs = sorted(set(dead) - alive_runs)
    scan.orphans = sorted(seen.values(), key=lambda o: (o.run_id, o.pid))
    scan.seconds = time.perf_counter() - t0
    return scan


def _ppid(pid: int) -> int | None:
    try:
        return psutil.Process(pid).ppid()
    except psutil.Error:
        return None


def _int(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _carries(pid: int, run_id: str) -> bool:
    """True when process ``pid`` has ``KERNELPIT_RUN_ID=run_id`` in its environment."""
    try:
        return psutil.Process(pid).environ().get("KERNELPIT_RUN_ID") == run_id
    except psutil.Error:
        return False


def _describe(pid: int, run_id: str, worker: str | None, controller: int | None, reason: str,
              found_by: str) -> Orphan | None:
    try:
        proc = psutil.Process(pid)
        with proc.oneshot():
            if proc.status() == psutil.STATUS_ZOMBIE:
                return None
            created = proc.create_time()
            cmd = " ".join(proc.cmdline())
        pgid: int | None = os.getpgid(pid)
    except (psutil.Error, OSError):
        return None
    return Orphan(pid=pid, run_id=run_id, create_time=created, pgid=pgid, worker=worker,
                  controller_pid=controller, reason=reason, cmdline=cmd, found_by=found_by)


# -- killing ---------------------------------------------------------------------------------

def _protected() -> set[int]:
    """This process and its ancestors: never signalled."""
    out, pid = set(), os.getpid()
    while pid > 1 and pid not in out:
        out.add(pid)
        try:
            pid = psutil.Process(pid).ppid()
        except psutil.Error:
            break
    out.add(1)
    return out


def wait_exit(procs: list[psutil.Process], timeout: float) -> list[psutil.Process]:
    """Wait until every process has exited (a zombie counts) or ``timeout``; returns the living."""
    if not procs:
        return []
    deadline = time.monotonic() + timeout
    if hasattr(os, "pidfd_open") and hasattr(select, "poll"):
        fds: dict[int, psutil.Process] = {}
        try:
            for proc in procs:
                try:
                    fd = os.pidfd_open(proc.pid)
                except ProcessLookupError:
                    continue
                if not proc.is_running():  # the pid was reused before the fd was opened
                    os.close(fd)
                    continue
                fds[fd] = proc
            poller = select.poll()
            for fd in fds:
                poller.register(fd, select.POLLIN)
            pending = set(fds)
            while pending:
                left = deadline - time.monotonic()
                if left <= 0:
                    break
                for fd, _ in poller.poll(max(1, int(left * 1000))):
                    pending.discard(fd)
                    poller.unregister(fd)
            return [fds[fd] for fd in pending]
        except OSError:
            pass  # no pidfd support after all: fall through
        finally:
            for fd in fds:
                os.close(fd)
    _, alive = psutil.wait_procs(procs, timeout=max(0.0, deadline - time.monotonic()))
    return alive


def reap(scan: Scan, grace: float = 3.0) -> Reaped:
    """SIGTERM the orphans (and their process groups and descendants), SIGKILL after ``grace``."""
    t0 = time.perf_counter()
    result = Reaped(scan=scan)
    if not scan.orphans:
        result.seconds = time.perf_counter() - t0
        return result
    protected = _protected()
    own_group = os.getpgrp()
    victims: dict[int, psutil.Process] = {}
    groups: set[int] = set()
    for orphan in scan.orphans:
        if orphan.pid in protected:
            continue
        try:
            proc = psutil.Process(orphan.pid)
            if abs(proc.create_time() - orphan.create_time) > 1.0:
                continue  # exited and the pid was reused since the scan
            descendants = proc.children(recursive=True)
        except psutil.Error:
            continue
        victims[orphan.pid] = proc
        if orphan.pgid == orphan.pid and orphan.pid != own_group:
            groups.add(orphan.pid)  # a group leader (kernels are): its group is its descendants
        for child in descendants:
            if child.pid not in protected:
                victims.setdefault(child.pid, child)
    for pgid in groups:
        with contextlib.suppress(OSError):
            os.killpg(pgid, signal.SIGTERM)
    for proc in victims.values():
        with contextlib.suppress(psutil.Error):
            proc.terminate()
    alive = wait_exit(list(victims.values()), grace)
    if alive:
        alive_ids = {p.pid for p in alive}
        for pgid in groups:
            # the group is still ours while one of its verified members lives
            if any(_pgid(p.pid) == pgid for p in alive):
                with contextlib.suppress(OSError):
                    os.killpg(pgid, signal.SIGKILL)
        for proc in alive:
            with contextlib.suppress(psutil.Error):
                proc.kill()
        alive = wait_exit(alive, 5.0)
        result.killed = sorted(alive_ids - {p.pid for p in alive})
    result.survivors = sorted(p.pid for p in alive)
    result.terminated = sorted(set(victims) - set(result.killed) - set(result.survivors))
    result.seconds = time.perf_counter() - t0
    return result


def _pgid(pid: int) -> int | None:
    try:
        return os.getpgid(pid)
    except OSError:
        return None


def reap_orphans(registry: RunRegistry | None = None, *, grace: float = 3.0,
                 everywhere: bool = False) -> Reaped:
    """Find and end what earlier runs left behind; forget their registry rows. Logs what it did."""
    scan = find_orphans(registry, everywhere=everywhere)
    return cleanup(registry, reap(scan, grace))


def cleanup(registry: RunRegistry | None, result: Reaped) -> Reaped:
    """After ``reap``: forget the registry rows of runs now over, remove the files they left
    (``leftovers.py``); log."""
    scan = result.scan
    over = set(scan.dead_runs) | {o.run_id for o in scan.orphans}
    if result.survivors:
        over -= {o.run_id for o in scan.orphans if o.pid in result.survivors}
    if registry is not None:
        registry.forget(sorted(over & {r.run_id for r in registry.runs()}))
    runtime = (registry.path if registry is not None else default_path()).parent.parent
    result.removed_files = (leftovers.remove_connection_files(runtime, over)
                            + leftovers.remove_shared_dirs(over) + leftovers.remove_run_dirs(over))
    if scan.orphans:
        log.warning("kernelpit: ended %d process(es) left by earlier runs whose controller is "
                    "gone (runs %s): %d after SIGTERM, %d needed SIGKILL%s", len(
                        result.terminated) + len(result.killed),
                    ", ".join(sorted({o.run_id for o in scan.orphans})), len(result.terminated),
                    len(result.killed),
                    f"; still running: {result.survivors}" if result.survivors else "")
    return result


def reap_on_start(registry: RunRegistry | None) -> Reaped | None:
    """What ``PoolManager.start`` runs before launching workers; never fails the start."""
    try:
        return reap_orphans(registry)
    except Exception as exc:  # noqa: BLE001 - a broken reaper must not stop the pool
        log.warning("kernelpit: could not look for kernels left by earlier runs (%s: %s); "
                    "run `kernelpit doctor`", type(exc).__name__, exc)
        return None
