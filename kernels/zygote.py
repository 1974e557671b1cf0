"""The per-pool zygote: a worker kernel made ready once, then forked for each worker.

The zygote (``python .../kernels/zygote.py kernelpit.kernels.zygote SOCKET KEEPER_FD
[KERNEL_ARG...]``, :func:`command`) is started by the pool's fork provisioner
(``kernelpit.provisioners.fork``) with the pool's environment, its native thread
limits (OMP/OPENBLAS/MKL/NUMEXPR) already set, so they apply before anything is
imported.  It imports everything a worker's start
imports (IPython, ipykernel, the lazy ``ipykernel.debugger`` -> debugpy,
jupyter_client's session, the agent, the pool's adapters), then builds the part of
a worker's kernel that has no socket and no thread (:func:`prepare`: the
application with the workers' arguments, less ``-f``, parsed and its config
loaded, and the IPython shell), freezes it all out of the collector's sight (so
children share those pages instead of copying them when a collection touches
them) and then serves on ``SOCKET``, single-threaded: no thread and no ZMQ
context ever exists here, so a fork copies nothing half-held.

Each request (one connection, :func:`request` is the client side) carries a
worker kernel's argv, environment and working directory, plus its stdout and
stderr as file descriptors.  The zygote forks; the child makes its own session
(process group), takes the environment and runs ``kernelpit.kernels``'s
``main()``, which adopts the prepared application and shell (:func:`adopt`) and
makes the kernel's sockets and threads.  The zygote answers
``{"pid": N}`` once the child leads its session, and later, having reaped it,
``{"exit": code}`` (``Popen.returncode`` style: ``-N`` for signal N) on the
same connection.

Lifetime: the zygote stops taking requests when its keeper connection (a
socketpair end the controller holds) closes, and exits once its children are
gone.  When the controller itself dies (pidfd), it ends its children's process
groups (SIGTERM, SIGKILL after the lifeline's grace) and exits: the children
carry their own lifeline too, this is the second line.  Only the standard
library is used before the preload.
"""

from __future__ import annotations

import contextlib
import gc
import json
import os
import select
import signal
import socket
import struct
import sys
import time
import traceback

AGENT_MODULE = "kernelpit.kernels"
MODULE = "kernelpit.kernels.zygote"


def command(python: str, path: str, keeper_fd: int, kernel_args: list[str]) -> list[str]:
    """The zygote's command line: this file run by its path, not ``-m`` (which would run
    ``kernelpit/__init__.py`` first, see :func:`_run_in_package`); ``MODULE`` stays a word
    of it, for ``ps`` and the tests."""
    return [python, os.path.abspath(__file__), MODULE, path, str(keeper_fd), *kernel_args]


def _run_in_package() -> None:
    """Run by path (:func:`command`): register the ``kernelpit`` package with its body not
    yet run, then run this file as ``kernelpit.kernels.zygote``.  The body is the control
    plane's API (config, events, info, jobs: 35-40 ms of imports, measured after everything
    a plain kernel imports) that no worker's start uses; the first attribute the package
    lacks (``kernelpit.Pool``, ``kernelpit.__version__``, in a worker's tool) runs it, once,
    and answers.  Submodules (``kernelpit.kernels``, ``kernelpit.exceptions``) import as
    usual."""
    import importlib.util
    import runpy
    import threading

    here = os.path.realpath(os.path.dirname(os.path.abspath(__file__)))
    if sys.path and os.path.realpath(sys.path[0] or ".") == here:
        del sys.path[0]  # this package's directory: its modules are not top-level ones
    spec = importlib.util.find_spec("kernelpit")
    package = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
    lock, loaded = threading.RLock(), []

    def __getattr__(name: str) -> object:
        with lock:
            if not loaded:
                loaded.append(True)
                spec.loader.exec_module(package)  # type: ignore[union-attr]
        if name in package.__dict__:
            return package.__dict__[name]
        hook = package.__dict__.get("__getattr__")
        if hook is not None and hook is not __getattr__:
            return hook(name)
        raise AttributeError(f"module 'kernelpit' has no attribute {name!r}")

    package.__getattr__ = __getattr__  # type: ignore[attr-defined]
    sys.modules["kernelpit"] = package
    del sys.argv[0]  # now MODULE, as ``-m`` would have it
    runpy.run_module(MODULE, run_name="__main__", alter_sys=True)
#: what a worker's start imports beyond ``import ipykernel.kernelapp`` (measured: 180
#: modules; debugpy alone is 0.12 s), preloaded so that no child imports them again
PRELOAD = ("IPython", "ipykernel.kernelapp", "ipykernel.ipkernel", "ipykernel.zmqshell",
           "ipykernel.debugger", "ipykernel.comm", "ipykernel.eventloops", "ipykernel.iostream",
           "ipykernel.heartbeat", "ipykernel.control", "ipykernel.shellchannel",
           "jupyter_client.session", "zmq", "zmq.eventloop.zmqstream", "tornado.ioloop",
           "IPython.core.completer", "IPython.core.completerlib", "IPython.core.oinspect",
           "IPython.core.debugger", "IPython.extensions.storemagic", "IPython.utils.wildcard",
           "tornado.platform.asyncio", "pdb", "faulthandler",
           "sqlite3", "psutil", "kernelpit.kernels.agent", "kernelpit.kernels.capture",
           "kernelpit.kernels.lifeline", "kernelpit.kernels.registry",
           "kernelpit.kernels.arrow", "kernelpit.kernels.wire", "kernelpit.kernels.protocol")
HEADER = struct.Struct("!I")  # each message: its length, then JSON


# -- the client side (the fork provisioner) -----------------------------------------------------

def request(path: str, argv: list[str], env: dict[str, str], cwd: str, stdout: int,
            stderr: int, timeout: float = 30.0) -> tuple[socket.socket, int]:
    """Ask the zygote at ``path`` for a worker; returns (the connection, the child's pid).

    The connection later carries the child's exit status (:func:`read_exit`).  Blocking:
    the zygote answers within a fork.
    """
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        sock.settimeout(timeout)
        sock.connect(path)
        body = json.dumps({"argv": argv, "env": env, "cwd": cwd}).encode()
        socket.send_fds(sock, [HEADER.pack(len(body)) + body], [stdout, stderr])
        reply = _read_message(sock)
        if reply is None:
            raise ConnectionError("the zygote closed the connection without an answer")
        if "error" in reply:
            raise RuntimeError(reply["error"])
        return sock, int(reply["pid"])
    except BaseException:
        sock.close()
        raise


def read_exit(sock: socket.socket, timeout: float | None) -> int | None:
    """The exit status the zygote reported on ``sock``; None when none came within ``timeout``
    (0: do not wait).  Raises ConnectionError when the zygote is gone without reporting."""
    sock.settimeout(timeout)
    try:
        msg = _read_message(sock)
    except (BlockingIOError, socket.timeout):
        return None
    if msg is None:
        raise ConnectionError("the zygote closed the connection without reporting the exit")
    return int(msg["exit"])


def _read_message(sock: socket.socket) -> dict | None:
    head = _read_exact(sock, HEADER.size)
    if head is None:
        return None
    body = _read_exact(sock, HEADER.unpack(head)[0])
    return None if body is None else json.loads(body)


def _read_exact(sock: socket.socket, n: int) -> bytes | None:
    data = b""
    while len(data) < n:
        chunk = sock.recv(n - len(data))
        if not chunk:
            return None
        data += chunk
    return data


def _send(sock: socket.socket, msg: dict) -> None:
    body = json.dumps(msg).encode()
    try:
        sock.sendall(HEADER.pack(len(body)) + body)
    except OSError:
        pass  # the provisioner is gone (its manager was dropped): nothing to tell


# -- the zygote -----------------------------------------------------------------------------------

def preload(adapters: list[str], kernel_args: list[str]) -> dict:
    """Import what a worker's start imports, prepare its kernel (:func:`prepare`), import
    the adapters; returns what the controller needs: the adapters' source files (to notice
    changes) and any import failure."""
    t0 = time.perf_counter()
    failed: dict[str, str] = {}
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception as exc:  # noqa: BLE001 - a child imports it again and says why
            failed[name] = f"{type(exc).__name__}: {exc}"
    try:
        prepare(kernel_args)
    except Exception as exc:  # noqa: BLE001 - only speed is lost: children start from scratch
        _discard_prepared()
        failed["prepare"] = f"{type(exc).__name__}: {exc}"
    before = set(sys.modules)
    for name in adapters:
        try:
            __import__(name)
        except BaseException as exc:  # noqa: BLE001 - the child's hello reports it fully
            failed[name] = f"{type(exc).__name__}: {exc}"
    return {"seconds": time.perf_counter() - t0, "failed": failed, "prepared": bool(_prepared),
            "files": sorted(_user_files(set(sys.modules) - before, adapters))}


# -- the worker's kernel, prepared once ------------------------------------------------------------

#: the kernel arguments (less ``-f``) the prepared application was built with; None when
#: nothing is prepared (the children then initialize their kernel from scratch)
_prepared: list[str] | None = None
#: what the worker kernel's own configuration may set that the prepared shell would miss
_SHELL_SETTINGS = ("shell_class", "compiler_class", "user_module", "user_ns")


def kernel_arguments(argv: list[str]) -> tuple[str | None, list[str]]:
    """A worker's command line (``python -m kernelpit.kernels ...``) as (its connection
    file, the rest of its arguments): the rest is what the zygote prepares with, and a
    child whose rest differs initializes its kernel from scratch."""
    args = list(argv[3:])
    for i, arg in enumerate(args[:-1]):
        if arg == "-f":
            return args[i + 1], args[:i] + args[i + 2:]
    return None, args


def prepare(kernel_args: list[str]) -> None:
    """Build, once, everything of a worker's kernel that has no socket and no thread: the
    ``IPKernelApp`` singleton with ``kernel_args`` parsed, its profile and config files
    loaded (IPython's ``BaseIPythonApplication.initialize``), and the ``ZMQInteractiveShell``
    singleton (magics, completer, formatters, history in memory, namespaces).  A child
    then only binds its sockets, starts its threads and makes the kernel object (the
    measured ~50 ms of CPU per child becomes ~25).  Kernel configurations that change the
    kernel or shell class, or the shell's namespaces, get the application only."""
    global _prepared
    from IPython.core.application import BaseIPythonApplication
    from ipykernel.compiler import XCachingCompiler
    from ipykernel.ipkernel import IPythonKernel
    from ipykernel.kernelapp import IPKernelApp
    from ipykernel.zmqshell import ZMQInteractiveShell
    from jupyter_client.session import Session

    Session()  # fills traitlets' and the session's class-level caches for the children
    app = IPKernelApp.instance()
    hook = sys.excepthook
    try:
        BaseIPythonApplication.initialize(app, kernel_args)
    finally:
        sys.excepthook = hook  # IPython's crash handler is each child's (it sets it again)
    if app.subapp is not None:
        _discard_prepared()
        return
    _prepared = list(kernel_args)
    sections = [app.config[name] for name in ("Kernel", "IPythonKernel") if name in app.config]
    if app.kernel_class is IPythonKernel and not any(key in section for section in sections
                                                     for key in _SHELL_SETTINGS):
        ZMQInteractiveShell.instance(parent=app, profile_dir=app.profile_dir, user_module=None,
                                     user_ns=app.user_ns, kernel=None,
                                     compiler_class=XCachingCompiler)


def _discard_prepared() -> None:
    """Forget the prepared application and shell: the next kernel is made from scratch."""
    global _prepared
    import atexit

    _prepared = None
    if "ipykernel.zmqshell" in sys.modules:
        from ipykernel.kernelapp import IPKernelApp
        from ipykernel.zmqshell import ZMQInteractiveShell

        shell = ZMQInteractiveShell._instance
        if shell is not None:
            atexit.unregister(shell.atexit_operations)
        ZMQInteractiveShell.clear_instance()
        IPKernelApp.clear_instance()


def adopt(argv: list[str]) -> None:
    """In a forked child, before ``main()``: have ``IPKernelApp.initialize`` use the
    prepared application (its arguments are this worker's less ``-f``: only the
    connection file is set, and IPython's crash handler installed) and the new kernel take
    the prepared shell as its own (its parent and kernel set, the environment settings
    that this child's new environment replaced made again).  Each hook is used once and
    removes itself.  A worker whose arguments differ starts from scratch."""
    connection_file, rest = kernel_arguments(argv)
    if _prepared is None or connection_file is None or rest != _prepared:
        _discard_prepared()
        return
    from pathlib import Path

    from IPython.core.application import BaseIPythonApplication
    from ipykernel.zmqshell import ZMQInteractiveShell

    initialize = BaseIPythonApplication.__dict__["initialize"]
    shell = ZMQInteractiveShell._instance

    def initialized(app: BaseIPythonApplication, argv: list[str] | None = None) -> None:
        BaseIPythonApplication.initialize = initialize
        app.argv = list(argv or [])
        app.connection_file = connection_file
        app.init_crash_handler()

    BaseIPythonApplication.initialize = initialized  # type: ignore[method-assign]
    if shell is None:
        return

    def instance(cls: type, *args: object, **kwargs: object) -> ZMQInteractiveShell:
        del ZMQInteractiveShell.instance  # back to SingletonConfigurable's
        if cls is not type(shell) or args:
            _discard_shell(shell)
            return cls.instance(*args, **kwargs)  # type: ignore[attr-defined]
        shell.parent, shell.kernel = kwargs.get("parent"), kwargs.get("kernel")
        shell.init_environment()
        shell.history_manager.dir_hist[:] = [Path.cwd()]
        return shell

    ZMQInteractiveShell.instance = classmethod(instance)  # type: ignore[method-assign]


def _discard_shell(shell: object) -> None:
    import atexit

    from ipykernel.zmqshell import ZMQInteractiveShell

    atexit.unregister(shell.atexit_operations)  # type: ignore[attr-defined]
    ZMQInteractiveShell.clear_instance()


def _user_files(new: set[str], adapters: list[str]) -> set[str]:
    """Source files of the adapters and of the modules they imported from outside the
    installed Python (the user's own code, whose changes a reload must pick up)."""
    installed = tuple({os.path.realpath(p) for p in (sys.prefix, sys.base_prefix,
                                                     sys.exec_prefix)})
    files = set()
    for name in new | set(adapters):
        path = getattr(sys.modules.get(name), "__file__", None)
        if path and os.path.exists(path):
            real = os.path.realpath(path)
            if name in adapters or not real.startswith(installed):
                files.add(real)
    return files


class _Child:
    """A forked worker as the zygote tracks it: its pidfd and its requester's connection."""

    def __init__(self, pid: int, conn: socket.socket) -> None:
        self.pid, self.conn = pid, conn
        self.pidfd = os.pidfd_open(pid)


class Zygote:
    def __init__(self, path: str, keeper: socket.socket) -> None:
        self.keeper = keeper
        self.listener: socket.socket | None = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.listener.bind(path)
        os.chmod(path, 0o600)
        self.listener.listen(64)
        self.path = path
        self.children: dict[int, _Child] = {}  # by pidfd
        self.forking: dict[int, _Child] = {}   # by the read end of the child's "in my own
        #                                        session now" pipe: answered when it is
        self.controller = _controller_pidfd()

    def serve(self) -> dict | None:
        """Run until the zygote should exit (returns None) or, in a forked child, return the
        child's request."""
        poller = select.poll()
        poller.register(self.listener, select.POLLIN)
        poller.register(self.keeper, select.POLLIN)
        if self.controller is not None:
            poller.register(self.controller, select.POLLIN)
        while self.listener is not None or self.children or self.forking:
            for fd, _ in poller.poll():
                if self.listener is not None and fd == self.listener.fileno():
                    child = self._accept(poller)
                    if child is not None:
                        return child
                elif fd == self.keeper.fileno():
                    poller.unregister(fd)
                    self._stop_listening(poller)
                elif fd == self.controller:
                    poller.unregister(fd)
                    self._stop_listening(poller)
                    self._end_children(poller)
                elif fd in self.forking:
                    self._started(fd, poller)
                elif fd in self.children:
                    self._reap(self.children.pop(fd), poller)
        return None

    def _stop_listening(self, poller: select.poll) -> None:
        if self.listener is not None:
            poller.unregister(self.listener)
            self.listener.close()
            self.listener = None
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    def _accept(self, poller: select.poll) -> dict | None:
        conn, _ = self.listener.accept()  # type: ignore[union-attr]
        fds: list[int] = []
        try:
            conn.settimeout(10.0)
            data, fds, _, _ = socket.recv_fds(conn, 1 << 16, 2)
            size, body = HEADER.unpack(data[:HEADER.size])[0], data[HEADER.size:]
            if len(body) < size:
                body += _read_exact(conn, size - len(body)) or b""
            req = json.loads(body)
            argv = req["argv"]
            if argv[1:3] != ["-m", AGENT_MODULE] or len(fds) != 2:
                raise ValueError(f"the zygote starts only `python -m {AGENT_MODULE}` kernels "
                                 f"with stdout and stderr; got {argv[:3]} and {len(fds)} fds")
        except Exception as exc:  # noqa: BLE001 - a bad request must not end the zygote
            _send(conn, {"error": f"bad request: {type(exc).__name__}: {exc}"})
            conn.close()
            for fd in fds:
                os.close(fd)
            return None
        sys.stdout.flush()
        sys.stderr.flush()
        ready_r, ready_w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.close(ready_r)
            self._become_child(req, fds, conn, ready_w)
            return req
        os.close(ready_w)
        for fd in fds:
            os.close(fd)
        # Answer once the child leads its own session (its pgid is what the pool records):
        # meanwhile the zygote forks the next one.
        self.forking[ready_r] = _Child(pid, conn)
        poller.register(ready_r, select.POLLIN)
        return None

    def _started(self, ready: int, poller: select.poll) -> None:
        """The child has made its session (or died trying): tell its requester its pid."""
        child = self.forking.pop(ready)
        poller.unregister(ready)
        os.close(ready)
        self.children[child.pidfd] = child
        poller.register(child.pidfd, select.POLLIN)
        _send(child.conn, {"pid": child.pid})

    def _become_child(self, req: dict, fds: list[int], conn: socket.socket, ready: int) -> None:
        """In the forked child: drop the zygote's descriptors, own a session, take the
        worker's stdio, directory and environment."""
        os.setsid()  # its own session and process group, as a launched kernel has
        os.write(ready, b"1")
        os.close(ready)
        for sock in (self.listener, self.keeper, conn):
            if sock is not None:
                sock.close()
        for child in [*self.children.values(), *self.forking.values()]:
            os.close(child.pidfd)
            child.conn.close()
        for fd in self.forking:
            os.close(fd)
        if self.controller is not None:
            os.close(self.controller)
        devnull = os.open(os.devnull, os.O_RDONLY)
        os.dup2(devnull, 0)
        os.dup2(fds[0], 1)
        os.dup2(fds[1], 2)
        for fd in (devnull, *fds):
            if fd > 2:
                os.close(fd)
        os.chdir(req["cwd"])
        os.environ.clear()
        os.environ.update(req["env"])
        # ipykernel's parent poller would end the kernel when the zygote (its parent) ends,
        # e.g. after a reload; the lifeline watches the controller instead
        os.environ.pop("JPY_PARENT_PID", None)
        signal.signal(signal.SIGTERM, signal.SIG_DFL)
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        sys.argv = [AGENT_MODULE, *req["argv"][3:]]
        retitle(req["argv"])


    def _reap(self, child: _Child, poller: select.poll) -> None:
        poller.unregister(child.pidfd)
        os.close(child.pidfd)
        _, status = os.waitpid(child.pid, 0)
        _send(child.conn, {"exit": os.waitstatus_to_exitcode(status)})
        child.conn.close()

    def _end_children(self, poller: select.poll) -> None:
        """The controller is gone: end every child's process group, as its lifeline would."""
        from .lifeline import GRACE

        sys.stderr.write(f"kernelpit zygote: the controller is gone; ending "
                         f"{len(self.children)} worker(s)\n")
        for sig in (signal.SIGTERM, signal.SIGKILL):
            for child in list(self.children.values()):
                with contextlib.suppress(OSError):
                    os.killpg(child.pid, sig)
            deadline = time.monotonic() + GRACE
            while self.children and time.monotonic() < deadline:
                for fd, _ in poller.poll(100):
                    if fd in self.children:
                        self._reap(self.children.pop(fd), poller)


def retitle(argv: list[str]) -> None:
    """Show the worker's own command line (``ps``, psutil, the reaper's reports) instead of
    the zygote's: rewrite this process's argument area in place (Linux), keeping the
    arguments that fit."""
    try:
        with open("/proc/self/stat", "rb") as f:
            stat = f.read()
        start, end = (int(v) for v in stat[stat.rindex(b")") + 2:].split()[45:47])
        title = b""
        for arg in argv:
            item = arg.encode() + b"\0"
            if len(title) + len(item) > end - start:
                break
            title += item
        with open("/proc/self/mem", "r+b", buffering=0) as mem:
            mem.seek(start)
            mem.write(title.ljust(end - start, b"\0"))
    except (OSError, ValueError):
        pass  # cosmetic: the worker runs the same either way


def _controller_pidfd() -> int | None:
    """A pidfd of the controller named in the environment (None when the lifeline is off)."""
    from .lifeline import controller, is_same

    found = controller()
    if found is None:
        return None
    pid, start = found
    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:
        fd = -1
    except OSError:
        return None  # no pidfd here: the children's own lifelines still poll
    if fd < 0 or not is_same(pid, start):
        raise SystemExit("kernelpit zygote: its controller is already gone")
    return fd


def run_child(req: dict) -> None:
    """In a forked child: run the worker kernel, then exit as a process would."""
    code = 0
    try:
        from .__main__ import main

        adopt(req["argv"])
        main()
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    except BaseException:  # noqa: BLE001
        traceback.print_exc()
        code = 1
    try:
        import atexit

        atexit._run_exitfuncs()
        sys.stdout.flush()
        sys.stderr.flush()
    finally:
        os._exit(code)


def main() -> None:
    path, keeper_fd, kernel_args = sys.argv[1], int(sys.argv[2]), sys.argv[3:]
    keeper = socket.socket(fileno=keeper_fd)
    adapters = [a for a in os.environ.get("KERNELPIT_ADAPTERS", "").split(",") if a]
    gc.disable()  # no collection while importing: the frozen heap stays as imported
    report = preload(adapters, kernel_args)
    gc.freeze()   # children share these pages; a collection in a child no longer touches them
    gc.enable()
    import threading

    import zmq

    report.update(pid=os.getpid(), threads=threading.active_count())
    if threading.active_count() != 1:
        report["error"] = (f"importing {', '.join(adapters) or 'the kernel'} started "
                           f"{threading.active_count() - 1} thread(s): forking is unsafe; "
                           f"give this pool spawn='exec'")
    elif zmq.Context._instance is not None:
        report["error"] = (f"importing {', '.join(adapters) or 'the kernel'} made a ZMQ "
                           f"context: forking is unsafe; give this pool spawn='exec'")
    if "error" in report:
        _send(keeper, report)
        sys.exit(1)
    zygote = Zygote(path, keeper)
    _send(keeper, report)
    req = zygote.serve()
    if req is not None:
        run_child(req)


if __name__ == "__main__":
    if __package__:
        main()
    else:
        _run_in_package()
