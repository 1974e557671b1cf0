"""``kernelpit-fork-provisioner``: worker kernels forked from a per-pool zygote.

A kernel started this way is still an ordinary jupyter_client kernel: this
provisioner is a :class:`LocalProvisioner` (the connection file, ports or ipc
sockets and their cleanup are its), except that ``launch_kernel`` asks the pool's
zygote (:mod:`kernelpit.kernels.zygote`) for a forked child instead of running
``Popen``.  ``self.process`` is a :class:`ForkedChild`, which answers ``poll``,
``wait``, ``send_signal``, ``kill`` and ``terminate`` like ``Popen`` does; the
zygote, the child's parent, reaps it and reports its exit status.  Signals go
straight to the child's process group (it leads its own session, as a launched
kernel does), so a tool's subprocesses get them too.

The zygote (:class:`Zygote`) is started by the first launch of its pool, with
that launch's environment less the worker's id, and kept for the pool's life; it
is rebuilt on demand: :func:`rebuild` (``pool.reload()``), or by the next launch
when a source file of the adapters changed on disk (one ``stat`` per file).  A
replaced zygote stops taking requests and exits once its last child has.  A kernelspec
selects the provisioner with::

    "metadata": {"kernel_provisioner": {
        "provisioner_name": "kernelpit-fork-provisioner",
        "config": {"zygote": "/path/to/run-dir/zygote-xxxx.sock"}}}
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Any

from jupyter_client.connect import KernelConnectionInfo
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from traitlets import Unicode

from ..exceptions import StartError
from ..kernels import zygote as zygote_protocol

PROVISIONER_NAME = "kernelpit-fork-provisioner"
#: seconds a dead child's exit status may take to arrive from the zygote (it reaps at once)
REPORT_WAIT = 2.0
#: environment variables of one worker, not of the pool: left out of the zygote's
PER_WORKER_ENV = ("KERNELPIT_WORKER",)


class ForkedChild:
    """A worker kernel forked by a zygote, with the part of ``Popen``'s API that the
    provisioner and the pool use."""

    stdin = stdout = stderr = None

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid = pid
        self.returncode: int | None = None
        self._conn: socket.socket | None = conn
        try:
            self._pidfd = os.pidfd_open(pid)
        except ProcessLookupError:
            self._pidfd = -1  # already gone: its status is on the connection

    def _ended(self) -> bool:
        """True once the child has exited (reaped or not yet): its pidfd is readable."""
        return self._pidfd < 0 or bool(select.select([self._pidfd], [], [], 0)[0])

    def poll(self) -> int | None:
        """The exit status, or None while the child runs.  A child that has just died
        waits (at most REPORT_WAIT) for the zygote's report of its status."""
        if self.returncode is None and self._conn is not None:
            ended = self._ended()
            try:
                code = zygote_protocol.read_exit(self._conn, REPORT_WAIT if ended else 0)
            except (ConnectionError, OSError):
                code = -signal.SIGKILL if ended else None  # the zygote died: status unknown
                if ended:
                    self._close_conn()
            if code is not None:
                self.returncode = code
                self._close_conn()
        return self.returncode

    def wait(self, timeout: float | None = None) -> int | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.poll() is None:
            if deadline is not None and time.monotonic() > deadline:
                raise subprocess.TimeoutExpired(f"pid {self.pid}", timeout or 0)
            if self._pidfd >= 0:
                select.select([self._pidfd], [], [], 0.1)
            else:
                time.sleep(0.05)
        return self.returncode

    def send_signal(self, signum: int) -> None:
        if self.returncode is None and self._pidfd >= 0:
            signal.pidfd_send_signal(self._pidfd, signum)  # never a reused pid

    def kill(self) -> None:
        self.send_signal(signal.SIGKILL)

    def terminate(self) -> None:
        self.send_signal(signal.SIGTERM)

    def _close_conn(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def close(self) -> None:
        self._close_conn()
        if self._pidfd >= 0:
            os.close(self._pidfd)
            self._pidfd = -1


class Zygote:
    """The controller's side of one pool's zygote process: start, spawn, retire."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.log_path = os.path.splitext(path)[0] + ".log"
        self.proc: subprocess.Popen[bytes] | None = None
        self.report: dict[str, Any] = {}
        self._keeper: socket.socket | None = None
        self._mtimes: dict[str, int] = {}
        self._starting: asyncio.Future[None] | None = None

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None and self._keeper is not None

    def stale(self) -> bool:
        """True when an adapter's source file changed (or vanished) since the preload."""
        for path, mtime in self._mtimes.items():
            try:
                if os.stat(path).st_mtime_ns != mtime:
                    return True
            except OSError:
                return True
        return False

    async def start(self, env: dict[str, str], cwd: str | None, kernel_args: list[str]) -> None:
        """Start the zygote process and wait for its preload report; it prepares its
        workers' kernel with ``kernel_args`` (their arguments less ``-f``)."""
        loop = asyncio.get_running_loop()
        ours, theirs = socket.socketpair()
        env = {k: v for k, v in env.items() if k not in PER_WORKER_ENV}
        with contextlib.suppress(FileNotFoundError):
            os.unlink(self.path)
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                zygote_protocol.command(sys.executable, self.path, theirs.fileno(), kernel_args),
                env=env, cwd=cwd or os.getcwd(), stdin=subprocess.DEVNULL,
                stdout=log, stderr=log, pass_fds=(theirs.fileno(),), start_new_session=True)
        theirs.close()
        ours.setblocking(False)
        self._keeper = ours
        report = await _read_report(loop, ours)
        if report is None or "error" in report:
            self.close_keeper()
            await asyncio.to_thread(self._wait_exit, 5.0)
            why = report["error"] if report else f"it exited with {self.proc.returncode}"
            raise StartError(f"the fork-server (zygote) of this pool could not start: {why}; "
                             f"log {self.log_path}:\n{_tail(self.log_path)}\n"
                             f"Give the pool spawn='exec' to launch workers without it.")
        self.report = report
        self._mtimes = {}
        for path in report.get("files", []):
            with contextlib.suppress(OSError):
                self._mtimes[path] = os.stat(path).st_mtime_ns

    async def spawn(self, cmd: list[str], env: dict[str, str], cwd: str, stdout: Any,
                    stderr: Any) -> ForkedChild:
        out = _fd(stdout, 1)
        err = _fd(stderr, 2)
        conn, pid = await asyncio.to_thread(zygote_protocol.request, self.path, cmd, env, cwd,
                                            out, err)
        return ForkedChild(pid, conn)

    def close_keeper(self) -> None:
        """Stop the zygote taking requests; it exits once its last child has."""
        if self._keeper is not None:
            self._keeper.close()
            self._keeper = None

    def _wait_exit(self, timeout: float) -> None:
        if self.proc is None:
            return
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    async def close(self, timeout: float = 5.0) -> None:
        """Retire the zygote and wait for its exit (its children are stopped first)."""
        self.close_keeper()
        await asyncio.to_thread(self._wait_exit, timeout)


class Zygotes:
    """Every zygote of this process, by socket path (one per pool and run), with the
    generation in use and the retired ones still serving their children."""

    def __init__(self) -> None:
        self.current: dict[str, Zygote] = {}
        self.retired: dict[str, list[Zygote]] = {}
        self._locks: dict[str, asyncio.Lock] = {}

    async def ready(self, path: str, env: dict[str, str], cwd: str | None,
                    cmd: list[str]) -> Zygote:
        """The zygote to fork from: started (or rebuilt, when it died or its adapters'
        files changed) here, once, however many launches wait for it; ``cmd`` is the
        worker kernel's command line, which the zygote prepares a kernel for."""
        lock = self._locks.setdefault(path, asyncio.Lock())
        async with lock:
            zygote = self.current.get(path)
            if zygote is not None and zygote.alive and not zygote.stale():
                return zygote
            if zygote is not None:
                self._retire(path, zygote)
            zygote = Zygote(path)
            await zygote.start(env, cwd, zygote_protocol.kernel_arguments(cmd)[1])
            self.current[path] = zygote
            return zygote

    def _retire(self, path: str, zygote: Zygote) -> None:
        self.current.pop(path, None)
        zygote.close_keeper()
        kept = [z for z in self.retired.get(path, []) if z.proc and z.proc.poll() is None]
        self.retired[path] = [*kept, zygote]

    def rebuild(self, path: str) -> None:
        """Have the next launch make a new zygote (code changed); the old one serves its
        children until they end."""
        zygote = self.current.get(path)
        if zygote is not None:
            self._retire(path, zygote)

    async def close(self, path: str) -> None:
        """The pool is closed: end its zygotes (current and retired)."""
        self._locks.pop(path, None)
        zygotes = [z for z in [self.current.pop(path, None), *self.retired.pop(path, [])]
                   if z is not None]
        await asyncio.gather(*(z.close() for z in zygotes))


zygotes = Zygotes()


class ForkProvisioner(LocalProvisioner):  # type: ignore[misc]
    """A kernel forked from its pool's zygote instead of exec'd (see the module docstring)."""

    zygote = Unicode("", config=True,
                     help="The Unix socket of the pool's zygote (in the run's private directory).")

    async def launch_kernel(self, cmd: list[str], **kwargs: Any) -> KernelConnectionInfo:
        if not self.zygote:
            raise StartError(f"{PROVISIONER_NAME}: no zygote socket configured; put "
                             f"{{'zygote': PATH}} in the kernelspec's provisioner config")
        env = kwargs.get("env") or dict(os.environ)
        cwd = str(kwargs.get("cwd") or os.getcwd())
        zygote = await zygotes.ready(self.zygote, env, cwd, cmd)
        try:
            child = await zygote.spawn(cmd, env, cwd, kwargs.get("stdout"), kwargs.get("stderr"))
        except (OSError, RuntimeError) as exc:
            raise StartError(f"the pool's zygote could not fork a worker: {exc}; log "
                             f"{zygote.log_path}:\n{_tail(zygote.log_path)}") from exc
        self.process = child
        self.pid = self.pgid = child.pid
        self.cwd = cwd
        return self.connection_info

    async def cleanup(self, restart: bool = False) -> None:
        if isinstance(self.process, ForkedChild):
            self.process.close()
        await super().cleanup(restart)


async def _read_report(loop: asyncio.AbstractEventLoop, sock: socket.socket) -> dict | None:
    """The zygote's preload report (one framed message), or None when it exited first."""
    buf = b""
    size = zygote_protocol.HEADER.size
    while True:
        if len(buf) >= size:
            need = size + zygote_protocol.HEADER.unpack(buf[:size])[0]
            if len(buf) >= need:
                import json

                return json.loads(buf[size:need])
        chunk = await loop.sock_recv(sock, 1 << 16)
        if not chunk:
            return None
        buf += chunk


def _fd(stream: Any, default: int) -> int:
    """The file descriptor of a Popen-style stdout/stderr argument (None: ours)."""
    if stream is None:
        return default
    return stream if isinstance(stream, int) else stream.fileno()


def _tail(path: str, lines: int = 15) -> str:
    try:
        with open(path, errors="replace") as f:
            return "\n".join(f.read().rstrip().splitlines()[-lines:]) or "(empty log)"
    except OSError:
        return "(no log)"
