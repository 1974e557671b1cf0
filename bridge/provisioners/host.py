"""The node side of a Ray-placed kernel: one :class:`KernelHost` actor per kernel.

The actor runs on the node Ray chose, starts the kernel there as its own child
process and answers for it: poll, signal, resource usage, log.  It never talks
to the kernel's ZMQ channels; the controller does that over TCP.

**The kernel dies with its actor.**  The kernel is started in a new session (its
own process group, so a signal reaches a tool's subprocesses too) with
``PR_SET_PDEATHSIG = SIGKILL``: the Linux kernel kills it the moment the thread
that forked it dies, which is the moment the actor's process dies, however it
dies (``kill -9``, an OOM kill, a raylet taking its workers down with a removed
node).  The fork happens on a dedicated thread that lives as long as the actor's
process, because the death signal follows the forking *thread*, and Ray runs
actor methods on threads it may retire.  A kernelpit worker's lifeline
(``KERNELPIT_CONTROLLER_PID``) is pointed at this actor for the same reason.

**Ports.**  The kernel binds its five ZMQ ports itself (port 0 in the connection
file means "pick a free one", which ipykernel does by binding), so no port is
chosen here and then lost to another process before the kernel binds it.  The
kernel writes the ports it bound back into the connection file; the actor reads
them and deletes the file at once, so the HMAC key is on this node only in the
kernel's memory (and for the second or two of start-up in a 0600 file in a
0700 directory).  The kernel's output goes to an unnamed temporary file, so an
actor killed at any later moment leaves no file behind.

Only the standard library and psutil are used here: Ray imports this module on
every node.
"""

from __future__ import annotations

import concurrent.futures
import ctypes
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import IO, Any

import psutil

PORTS = ("shell_port", "iopub_port", "stdin_port", "control_port", "hb_port")
PR_SET_PDEATHSIG = 1
START_POLL = 0.02  # seconds between looks at the connection file while the kernel binds
_TEMPLATE = re.compile(r"\{([A-Za-z0-9_]+)\}")  # as jupyter_client fills kernelspec argv
LOG_TAIL = 4000  # characters of the kernel's log quoted when it fails to start

_libc = ctypes.CDLL(None, use_errno=True)  # resolved before any fork: nothing to load after it


class KernelStartError(RuntimeError):
    """The kernel exited or never bound its ports; the message quotes its log."""


def spawn_tied(argv: list[str], env: dict[str, str], cwd: str, log: IO[bytes]) -> subprocess.Popen:
    """Start ``argv`` in a new session, killed (SIGKILL) when the calling thread's process dies.

    Call it from a thread that lives as long as the process (see the module docstring).
    Between the fork and ``prctl`` the parent may already have died; the child checks
    its parent afterwards and exits at once if it was reparented.  The child's signal
    mask is cleared: a Ray worker's threads block SIGINT, a blocked mask survives exec,
    and a kernel that inherits it never sees an interrupt.
    """
    parent = os.getpid()

    def tie() -> None:  # runs in the child, between fork and exec
        signal.pthread_sigmask(signal.SIG_SETMASK, ())
        if _libc.prctl(PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0) != 0 or os.getppid() != parent:
            os._exit(70)

    return subprocess.Popen(argv, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=log,
                            stderr=subprocess.STDOUT, start_new_session=True, preexec_fn=tie,
                            close_fds=True)


def node_address() -> str:
    """This node's address as Ray knows it (what the kernel binds and the controller dials)."""
    import ray

    return ray.util.get_node_ip_address()


class KernelHost:
    """Hosts one kernel on this node; the body of a Ray actor (see :mod:`.ray_provisioner`)."""

    def __init__(self) -> None:
        import ray

        # the kernel's stdout and stderr: a file with no name, gone with the last process
        # holding it, so a killed actor leaves nothing on the node's disk
        self._log: IO[bytes] = tempfile.TemporaryFile(prefix="kp-kernel-log-")
        self._proc: subprocess.Popen | None = None
        self._ps: psutil.Process | None = None
        self._forker = concurrent.futures.ThreadPoolExecutor(1, "kernelpit-forker")
        self._node = {"node_id": ray.get_runtime_context().get_node_id(), "host": node_address(),
                      "hostname": socket.gethostname(), "actor_pid": os.getpid()}

    def start(self, argv: list[str], env: dict[str, str], cwd: str | None,
              session: dict[str, Any], timeout: float) -> dict[str, Any]:
        """Start the kernel and return its connection info (without the key) and where it runs.

        ``argv`` may hold ``{connection_file}``, ``{prefix}`` and ``{resource_dir}``
        (filled in here, on this node); a bare ``python``/``python3`` becomes this node's
        interpreter.  ``env`` overlays this actor's environment (which carries what Ray
        assigned it, e.g. ``CUDA_VISIBLE_DEVICES``).  ``session`` holds ``key``,
        ``signature_scheme``, ``kernel_name`` and ``resource_dir``.
        """
        if self._proc is not None:
            raise RuntimeError("this host already started a kernel; a Ray kernel host serves one")
        workdir = tempfile.mkdtemp(prefix="kp-kernel-")  # 0700; holds the key until the bind
        cf = os.path.join(workdir, "kernel.json")
        host = self._node["host"]
        fd = os.open(cf, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            json.dump({"transport": "tcp", "ip": host, **dict.fromkeys(PORTS, 0),
                       "key": session["key"], "signature_scheme": session["signature_scheme"],
                       "kernel_name": session.get("kernel_name", "")}, f)
        ns = {"connection_file": cf, "prefix": sys.prefix,
              "resource_dir": session.get("resource_dir") or ""}
        argv = [_TEMPLATE.sub(lambda m: ns.get(m[1], m[0]), a) for a in argv]
        if argv and argv[0] in ("python", "python3", f"python3.{sys.version_info[1]}"):
            argv[0] = sys.executable
        full_env = {**os.environ, **env,
                    # the kernel's parent is this actor: ipykernel's parent poller and a
                    # kernelpit worker's lifeline watch it, not a pid on another machine
                    "JPY_PARENT_PID": str(os.getpid()),
                    "KERNELPIT_CONTROLLER_PID": str(os.getpid()),
                    "KERNELPIT_CONTROLLER_START": repr(psutil.Process().create_time()),
                    # which node the kernel is on: a kernelpit worker compares it with the
                    # controller's node to choose its channel (kernels/placement.py)
                    "KERNELPIT_NODE_ID": self._node["node_id"]}
        if not (cwd and os.path.isdir(cwd)):
            cwd = os.path.expanduser("~")
        try:
            self._proc = self._forker.submit(spawn_tied, argv, full_env, cwd, self._log).result()
            ports = self._await_ports(cf, timeout)
        finally:
            shutil.rmtree(workdir, ignore_errors=True)  # the key now lives only in the kernel
        return {"connection": {"transport": "tcp", "ip": host, **ports},
                "pid": self._proc.pid, "pgid": self._proc.pid, **self._node}

    def _await_ports(self, cf: str, timeout: float) -> dict[str, int]:
        assert self._proc is not None
        deadline = time.monotonic() + timeout
        while True:
            try:
                with open(cf) as f:
                    info = json.load(f)
                if all(info.get(p) for p in PORTS):
                    return {p: int(info[p]) for p in PORTS}
            except (OSError, ValueError):
                pass  # not rewritten yet, or caught mid-write
            code = self._proc.poll()
            if code is not None or time.monotonic() > deadline:
                if code is None:
                    self.kill()
                why = (f"exited with code {code}" if code is not None
                       else f"did not bind its ports within {timeout:g} s")
                raise KernelStartError(f"the kernel on node {self._node['node_id']} "
                                       f"({self._node['host']}) {why}; its log ends:\n"
                                       f"{self.log_tail()}")
            time.sleep(START_POLL)

    def poll(self) -> int | None:
        """The kernel's exit code (negative: killed by that signal), or None while it runs."""
        return None if self._proc is None else self._proc.poll()

    def signal(self, signum: int) -> None:
        """Signal the kernel's process group (it leads it), or the kernel alone if that fails."""
        if self._proc is None or self._proc.poll() is not None:
            return
        try:
            os.killpg(self._proc.pid, signum)
        except OSError:
            try:
                self._proc.send_signal(signum)
            except OSError:
                pass

    def kill(self) -> None:
        self.signal(signal.SIGKILL)

    def wait_exit(self) -> int | None:
        """Block until the kernel exits; its exit code.  The controller keeps one of these
        calls pending per kernel (the actor runs calls on several threads), so it learns of
        an exit the moment it happens, and of a lost actor or node from the call's error."""
        return None if self._proc is None else self._proc.wait()

    def usage(self) -> dict[str, Any]:
        """RSS (bytes, the kernel and its children) and CPU use of the kernel, sampled here.

        ``cpu_percent`` is over the time since the previous call (0.0 on the first); 100
        is one core.
        """
        if self._proc is None or self._proc.poll() is not None:
            return {"rss": 0, "cpu_percent": 0.0, "cpu_seconds": 0.0, "alive": False}
        try:
            if self._ps is None:
                self._ps = psutil.Process(self._proc.pid)
            with self._ps.oneshot():
                rss = self._ps.memory_info().rss
                cpu = self._ps.cpu_percent(None)
                times = self._ps.cpu_times()
            for child in self._ps.children(recursive=True):
                try:
                    rss += child.memory_info().rss
                except psutil.Error:
                    pass
        except psutil.Error:
            return {"rss": 0, "cpu_percent": 0.0, "cpu_seconds": 0.0, "alive": False}
        return {"rss": rss, "cpu_percent": cpu, "cpu_seconds": times.user + times.system,
                "alive": True}

    def info(self) -> dict[str, Any]:
        """Where this host runs: node id (hex), host address, hostname, actor and kernel pid."""
        return {**self._node, "pid": None if self._proc is None else self._proc.pid}

    def log_tail(self, limit: int = LOG_TAIL) -> str:
        """The end of the kernel's stdout and stderr (kept in a file on this node)."""
        try:
            fd = self._log.fileno()
            size = os.fstat(fd).st_size
            return os.pread(fd, limit, max(0, size - limit)).decode("utf-8", "replace")
        except (OSError, ValueError):
            return ""

    def cleanup(self) -> int | None:
        """Kill the kernel if it still runs, reap it, and close its log."""
        code = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self.kill()
            try:
                code = self._proc.wait(5)
            except subprocess.TimeoutExpired:
                code = None
        self._log.close()
        return code

