"""The ``%kp`` / ``%%kp`` magics (``%load_ext kernelpit``).

::

    %kp start --adapter kernelpit.kernels.demo --workers 2   # or join the running bridge
    %kp status                      # worker-health panel
    %kp call train epochs=3         # streaming-output panel; the result is the cell's value
    %kp submit train epochs=30      # a durable job: its live panel (%kp jobs, %kp job ID)
    %%kp --session model            # run the cell in that session's worker kernel
    %kp push x y --session model    # variables notebook -> worker;  %kp pull brings them back

``%kp`` with no subcommand (or ``%kp help``) lists the subcommands.
"""

from __future__ import annotations

import os
import shlex
import time
from typing import Any

from IPython.core.error import UsageError
from IPython.core.magic import Magics, line_cell_magic, magics_class
from IPython.core.magic_arguments import MagicArgumentParser

from .connection import NO_BRIDGE, Connector

DEFAULT_SESSION = "default"
SUBCOMMANDS = {
    "start": "start a bridge in the background (or join the running one)",
    "connect": "connect to a running bridge (default: the one in the discovery file)",
    "stop": "stop the bridge and its workers",
    "status": "the worker-health panel",
    "sessions": "the sessions panel",
    "tools": "the tools served, with signatures and docs",
    "call": "run a tool with the streaming-output panel; the result is the cell's value",
    "submit": "run a tool as a durable job and show its live panel (it outlives the kernel)",
    "jobs": "the jobs panel: state, tool, progress, age, worker; cancel and open buttons",
    "job": "reattach to a job: replay its output and progress so far, then follow it",
    "push": "copy notebook variables into a session's worker kernel",
    "pull": "copy variables from a session's worker kernel into the notebook",
    "attach": "the command that attaches a console to a worker kernel",
    "help": "this list",
}
USAGE = ("%kp SUBCOMMAND [options]   (%kp SUBCOMMAND -h for its options)\n\n"
         + "\n".join(f"  {name:<9} {what}" for name, what in SUBCOMMANDS.items())
         + "\n\n%%kp [--session NAME] [--worker ID]: run the cell in a worker kernel")


def usage(parser: MagicArgumentParser) -> str:
    """``usage: %kp call [-h] ...`` (IPython formats it as a reST block; keep the text)."""
    text = parser.format_usage().split("::", 1)[-1].strip()
    return "usage: " + " ".join(text.split())


def _parsers() -> dict[str, MagicArgumentParser]:
    p: dict[str, MagicArgumentParser] = {}

    def parser(name: str) -> MagicArgumentParser:
        p[name] = MagicArgumentParser(prog=f"kp {name}", description=SUBCOMMANDS[name],
                                      add_help=True)
        return p[name]

    a = parser("start")
    a.add_argument("--workers", type=int, default=None, help="worker kernels (default 2)")
    a.add_argument("--adapter", action="append", default=[], metavar="MODULE",
                   help="module whose @tool functions are served (repeatable)")
    a.add_argument("--pool", default=None, help="name of the pool (default: default)")
    a.add_argument("--config", default=None, metavar="FILE",
                   help="TOML file with [pools.NAME] tables (see kernelpit serve)")
    a.add_argument("--path", action="append", default=[], metavar="DIR",
                   help="directory put on the workers' sys.path (repeatable)")
    a.add_argument("--max-memory", default=None, metavar="SIZE",
                   help="recycle a worker above this RSS, e.g. 400MB")
    a.add_argument("--max-calls", type=int, default=None, help="recycle a worker after N calls")
    a.add_argument("--spares", type=int, default=None, help="warm spare kernels")
    a.add_argument("--timeout", type=float, default=180.0, help="seconds to wait for it")
    a.add_argument("--idle-timeout", type=float, default=None, metavar="SECONDS",
                   help="stop it after this many seconds with no calls and no connected notebook "
                   "(default 1800 = 30 min; 0 = never)")
    a = parser("connect")
    a.add_argument("address", nargs="?", default=None, help="host:port (default: discovery)")
    a.add_argument("--token", default=None, help="bearer token")
    a.add_argument("--tls-ca", default=None, metavar="FILE",
                   help="CA (PEM) that signed a TLS bridge's certificate")
    a.add_argument("--tls-cert", default=None, metavar="FILE",
                   help="this client's certificate (PEM), for mutual TLS")
    a.add_argument("--tls-key", default=None, metavar="FILE", help="the key of --tls-cert (PEM)")
    a = parser("stop")
    a.add_argument("--grace", type=float, default=None,
                   help="seconds in-flight calls may take to finish")
    a = parser("status")
    a.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    a = parser("sessions")
    a.add_argument("--interval", type=float, default=1.0, help="seconds between snapshots")
    a = parser("tools")
    a.add_argument("--pool", default=None, help="only this pool")
    a = parser("call")
    a.add_argument("tool")
    a.add_argument("arguments", nargs="*", metavar="key=value",
                   help="tool arguments; values parsed as JSON when they parse")
    a.add_argument("--deadline", type=float, default=None)
    a.add_argument("--session", default=None, help="run in this session (by name)")
    a.add_argument("--worker", type=int, default=None, help="run on this worker id")
    a.add_argument("--background", action="store_true",
                   help="return at once; the panel keeps updating (its .wait() gives the result)")
    a = parser("submit")
    a.add_argument("tool")
    a.add_argument("arguments", nargs="*", metavar="key=value",
                   help="tool arguments; values parsed as JSON when they parse")
    a.add_argument("--deadline", type=float, default=None, help="seconds from submission")
    a.add_argument("--session", default=None, help="run in this session (by name)")
    a.add_argument("--key", default=None, help="idempotency key (the same job if it exists)")
    a.add_argument("--idempotent", action="store_true",
                   help="safe to run again after a crash or a bridge restart")
    a = parser("jobs")
    a.add_argument("--state", default=None, help="only jobs in this state")
    a.add_argument("--tool", default=None, help="only jobs of this tool")
    a.add_argument("--limit", type=int, default=50, help="at most this many (default 50)")
    a.add_argument("--interval", type=float, default=1.0, help="seconds between refreshes")
    a = parser("job")
    a.add_argument("id", help="the job id (job.id, `kernelpit jobs`)")
    for name in ("push", "pull"):
        a = parser(name)
        a.add_argument("names", nargs="+", metavar="NAME")
        a.add_argument("--session", default=DEFAULT_SESSION,
                       help=f"the session (default: {DEFAULT_SESSION})")
        a.add_argument("--worker", type=int, default=None, help="a worker id instead")
    a = parser("attach")
    a.add_argument("worker", type=int)
    parser("help")
    return p


CELL_PARSER = MagicArgumentParser(prog="%kp", description="run the cell in a worker kernel")
CELL_PARSER.add_argument("--session", default=None,
                         help=f"the session whose worker runs it (default: {DEFAULT_SESSION})")
CELL_PARSER.add_argument("--worker", type=int, default=None, help="run it on this worker id")


@magics_class
class KernelpitMagics(Magics):
    """``%kp`` subcommands and the ``%%kp`` cell magic."""

    def __init__(self, shell: Any) -> None:
        super().__init__(shell)
        self.connector = Connector()
        self.parsers = _parsers()
        self.session_workers: dict[str, int] = {}   # session name -> worker id, as last seen
        self._shells: dict[str, Any] = {}           # connection file -> WorkerShell
        self.panels: list[Any] = []
        self.jobs_panels: list[Any] = []            # %kp jobs panels (polling until unload)

    # -- plumbing ------------------------------------------------------------------------------
    def client(self) -> Any:
        from kernelpit.exceptions import BridgeNotFound
        try:
            return self.connector.get()
        except BridgeNotFound as exc:
            raise UsageError(str(exc) if "connect(" not in str(exc) else NO_BRIDGE) from None

    def _rpc(self, fn: Any, *args: Any, **kwargs: Any) -> Any:
        """Run a client method; a bridge that went away is reconnected once."""
        from kernelpit.exceptions import BridgeError
        client = self.client()
        try:
            return fn(client, *args, **kwargs)
        except BridgeError:
            self.connector.invalidate(client)
            return fn(self.client(), *args, **kwargs)

    def _parse(self, name: str, argv: list[str]) -> Any:
        parser = self.parsers[name]
        try:
            return parser.parse_intermixed_args(argv)
        except UsageError as exc:  # IPython's message, plus the usage line
            raise UsageError(f"{exc}\n{usage(parser)}") from None

    def unload(self) -> None:
        for panel in [*self.panels, *self.jobs_panels]:
            try:
                panel.close()
            except Exception:
                pass
        for shell in self._shells.values():
            shell.close()
        self.connector.close()

    # -- the magic -----------------------------------------------------------------------------
    @line_cell_magic
    def kp(self, line: str, cell: str | None = None) -> Any:
        """Kernelpit: %kp SUBCOMMAND (see %kp help), or %%kp [--session NAME] [--worker ID]."""
        if cell is not None:
            return self._cell(line, cell)
        try:
            argv = shlex.split(line)
        except ValueError as exc:
            raise UsageError(f"cannot parse {line!r}: {exc}") from None
        if not argv or argv[0] in ("help", "-h", "--help"):
            print(USAGE)
            return None
        name, rest = argv[0], argv[1:]
        if name not in SUBCOMMANDS:
            raise UsageError(f"unknown subcommand {name!r}\n\n{USAGE}")
        try:
            args = self._parse(name, rest)
        except SystemExit:  # -h printed the help
            return None
        return getattr(self, f"_cmd_{name}")(args)

    # -- bridge --------------------------------------------------------------------------------
    def _cmd_start(self, args: Any) -> None:
        from kernelpit import discovery
        from . import bridgeproc
        if args.idle_timeout is not None and not args.idle_timeout >= 0:
            raise UsageError(f"--idle-timeout must be seconds >= 0 (0: never stop by itself), "
                             f"got {args.idle_timeout:g}")
        idle = bridgeproc.DEFAULT_IDLE_TIMEOUT if args.idle_timeout is None else args.idle_timeout
        info = discovery.read()
        if info is not None:
            self.connector.close()
            self.connector = Connector()
            client = self.client()
            pools = ", ".join(client.server_info().pools)
            print(f"joined the running Kernelpit bridge at {info['address']} (pid {info['pid']}, "
                  f"pools: {pools}); {bridgeproc.stop_policy(info.get('idle_timeout'))}")
            if (args.adapter or args.workers or args.config or args.max_memory or args.max_calls
                    or args.idle_timeout is not None):
                print("(it keeps its own adapters, workers and idle timeout; `%kp stop` then "
                      "`%kp start ...` to change them)")
            return
        if not args.adapter and not args.config:
            raise UsageError("nothing to serve: give --adapter MODULE (e.g. %kp start --adapter "
                             "kernelpit.kernels.demo) or --config FILE")
        limits = {k: v for k, v in (("max_memory", args.max_memory),
                                     ("max_calls", args.max_calls),
                                     ("spares", args.spares)) if v is not None}
        if limits:
            if args.config:
                raise UsageError("--max-memory/--max-calls/--spares go with --adapter; with "
                                 "--config set them in its [pools.NAME] tables")
            config = bridgeproc.write_config(args.pool or "default", args.adapter,
                                             args.workers or 2, args.path, limits)
            cmd = bridgeproc.serve_command([], None, None, str(config), [], idle)
        else:
            cmd = bridgeproc.serve_command(args.adapter, args.workers, args.pool, args.config,
                                           args.path, idle)
        t0 = time.monotonic()
        try:
            info = bridgeproc.start(cmd, timeout=args.timeout)
        except bridgeproc.StartFailed as exc:
            raise UsageError(str(exc)) from None
        self.connector.close()
        self.connector = Connector()
        client = self.client()
        workers = client.workers()
        print(f"started a Kernelpit bridge at {info['address']} (pid {info['pid']}) with "
              f"{len(workers)} workers in {time.monotonic() - t0:.1f} s; it runs in the "
              f"background (log: {bridgeproc.log_path()}), other notebooks join it with "
              f"`%kp start` or `%kp connect`; {bridgeproc.stop_policy(idle)}")

    def _cmd_connect(self, args: Any) -> None:
        self.connector.close()
        self.connector = Connector(address=args.address, token=args.token, tls_ca=args.tls_ca,
                                   tls_cert=args.tls_cert, tls_key=args.tls_key)
        client = self.client()
        info = client.server_info()
        print(f"connected to the Kernelpit bridge at {client.address} (pid {info.pid}, "
              f"kernelpit {info.version}, pools: {', '.join(info.pools)})")

    def _cmd_stop(self, args: Any) -> None:
        from kernelpit.cli import wait_for_exit
        client = self.client()
        info = client.server_info()
        client.shutdown(args.grace)
        self.connector.close()
        self.connector = Connector()
        self.session_workers.clear()
        for shell in self._shells.values():
            shell.close()
        self._shells.clear()
        if not wait_for_exit(info.pid, (args.grace or 30) + 30):
            raise UsageError(f"the bridge (pid {info.pid}) is still running; `kill {info.pid}`")
        print(f"stopped the Kernelpit bridge at {info.address} (pid {info.pid})")

    # -- panels --------------------------------------------------------------------------------
    def _show(self, panel: Any) -> Any:
        from IPython.display import display
        self.panels = [p for p in self.panels if p.live.running]
        self.panels.append(panel)
        display(panel)
        return None

    def _cmd_status(self, args: Any) -> Any:
        from .panels import HealthPanel
        self.client()
        panel = HealthPanel(self.connector, interval=args.interval)
        panel.wait_for(lambda p: p.ready(), timeout=5)  # the text view has rows
        return self._show(panel)

    def _cmd_sessions(self, args: Any) -> Any:
        from .panels import SessionsPanel
        self.client()
        panel = SessionsPanel(self.connector, interval=args.interval)
        panel.wait_for(lambda p: p.ready(), timeout=5)
        return self._show(panel)

    def _cmd_tools(self, args: Any) -> Any:
        from IPython.display import display
        from .panels import ToolsView
        display(ToolsView(self._rpc(lambda c: c.tools(args.pool))))

    # -- calls ---------------------------------------------------------------------------------
    def _call_options(self, args: Any) -> dict[str, Any]:
        """``--deadline`` and ``--session`` (opened if needed) of ``%kp call`` and ``submit``."""
        options: dict[str, Any] = {}
        if args.deadline is not None:
            options["deadline"] = args.deadline
        if args.session is not None:
            self._session(args.session)
            options["session"] = args.session
        return options

    def _cmd_call(self, args: Any) -> Any:
        from kernelpit.cli import UsageError as CliUsage
        from kernelpit.cli import parse_assignments
        from .stream import BackgroundCall
        try:
            kwargs = parse_assignments(args.arguments)
        except CliUsage as exc:
            raise UsageError(f"{exc}\n{usage(self.parsers['call'])}") from None
        options = self._call_options(args)
        if args.worker is not None:
            options["worker"] = args.worker
        caller = self.client().options(**options)
        if args.background:
            call = BackgroundCall(caller, args.tool, (), kwargs)
            from IPython.display import display
            call.handle = display(call.panel, display_id=True)
            self.shell.user_ns["kp_last_call"] = call
            print("running in the background; `kp_last_call.wait()` gives the result, "
                  "`kp_last_call.cancel()` (or the cancel button) stops it")
            return None
        return caller.options(display=True).call(args.tool, **kwargs)

    # -- durable jobs --------------------------------------------------------------------------
    def _cmd_submit(self, args: Any) -> Any:
        from kernelpit.cli import UsageError as CliUsage
        from kernelpit.cli import parse_assignments
        from .jobs import display_job
        try:
            kwargs = parse_assignments(args.arguments)
        except CliUsage as exc:
            raise UsageError(f"{exc}\n{usage(self.parsers['submit'])}") from None
        options = self._call_options(args)
        if args.key is not None:
            options["key"] = args.key
        if args.idempotent:
            options["idempotent"] = True
        # not retried on a reconnect (as _rpc does): a submission must not run twice
        job = self.client().options(**options).submit(args.tool, **kwargs)
        self.shell.user_ns["kp_last_job"] = job
        print(f"job {job.id} submitted; it runs on without this notebook: `%kp job {job.id}` "
              "shows it again (also after a kernel restart), `kp_last_job.result()` waits for "
              "its result")
        display_job(job)
        return None

    def _cmd_job(self, args: Any) -> Any:
        from .jobs import display_job
        job = self._rpc(lambda c: c.job(args.id))
        self.shell.user_ns["kp_last_job"] = job
        display_job(job)
        return None

    def _cmd_jobs(self, args: Any) -> Any:
        from .jobs import JobsPanel
        client = self.client()
        panel = JobsPanel(client, interval=args.interval, limit=args.limit, state=args.state,
                          tool=args.tool)
        from IPython.display import display
        display(panel)
        self.jobs_panels.append(panel)
        return None

    # -- worker kernels ------------------------------------------------------------------------
    def _session(self, name: str) -> Any:
        """The bridge session ``name`` (opened if needed): its info, with the worker."""
        from kernelpit.exceptions import SessionNotFound
        client = self.client()
        info = None
        try:
            info = client.get_session(name)
        except SessionNotFound:
            info = None
        if info is not None and info.lost:
            print(f"session {name!r} was lost ({info.lost}); opening it again: its state is gone")
            try:
                client.close_session(name)
            except Exception:
                pass
            info = None
        if info is None:
            session = client.session(id=name, metadata={"opened-by": "%%kp",
                                                        "notebook-pid": str(os.getpid())})
            info = session.info
        before = self.session_workers.get(name)
        if before is not None and before != info.worker:
            print(f"session {name!r} moved from worker {before} to worker {info.worker}")
        self.session_workers[name] = info.worker
        return info

    def _worker_info(self, worker_id: int) -> Any:
        for w in self._rpc(lambda c: c.workers()):
            if w.id == worker_id:
                return w
        raise UsageError(f"no worker {worker_id}; `%kp status` lists them")

    def _shell_for(self, session: str | None, worker: int | None) -> tuple[Any, str | None]:
        from .shell import WorkerShell
        if worker is None:
            session = session or DEFAULT_SESSION
            worker = self._session(session).worker
        else:
            session = None
        info = self._worker_info(worker)
        if not info.connection_file or not os.path.exists(info.connection_file):
            raise UsageError(f"worker {worker} has no connection file reachable from here "
                             f"({info.connection_file!r}): is the bridge on another machine?")
        shell = self._shells.get(info.connection_file)
        if shell is None:
            for old in self._shells.values():
                if old.worker == worker:
                    old.close()
            shell = self._shells[info.connection_file] = WorkerShell(info.connection_file, worker)
        return shell, session

    def _cell(self, line: str, cell: str) -> None:
        from .shell import RemoteCellError, publish
        try:
            args = CELL_PARSER.parse_args(shlex.split(line))
        except SystemExit:
            return None
        except UsageError as exc:
            raise UsageError(f"{exc}\n{usage(CELL_PARSER)}") from None
        if args.session is not None and args.worker is not None:
            raise UsageError("give --session or --worker, not both\n" + usage(CELL_PARSER))
        shell, session = self._shell_for(args.session, args.worker)
        if session is not None:  # kp_session: the same dict the session's tools see
            shell.execute("import kernelpit.kernels.agent as __kp_agent\n"
                          f"kp_session = __kp_agent._session_states.setdefault({session!r}, {{}})\n"
                          "del __kp_agent", silent=True, timeout=30)
        try:
            reply = shell.execute(cell, on_output=publish)
        except KeyboardInterrupt:
            self._rpc(lambda c: c.interrupt(shell.worker))
            raise
        if reply.get("status") == "error":
            raise RemoteCellError(reply.get("ename", "Error"), reply.get("evalue", ""),
                                  reply.get("traceback", []), shell.worker)
        return None

    def _cmd_push(self, args: Any) -> None:
        from .wire import NotMovable
        missing = [n for n in args.names if n not in self.shell.user_ns]
        if missing:
            raise UsageError(f"no variable {', '.join(missing)} in this notebook")
        values = {n: self.shell.user_ns[n] for n in args.names}
        shell, session = self._shell_for(args.session if args.worker is None else None,
                                         args.worker)
        try:
            shell.push(values)
        except NotMovable as exc:
            raise UsageError(f"cannot push: {exc}") from None
        where = f"session {session!r} (worker {shell.worker})" if session else \
            f"worker {shell.worker}"
        print(f"pushed {', '.join(args.names)} to {where}")

    def _cmd_pull(self, args: Any) -> None:
        from .wire import NotMovable
        shell, session = self._shell_for(args.session if args.worker is None else None,
                                         args.worker)
        try:
            values = shell.pull(args.names)
        except KeyError as exc:
            raise UsageError(str(exc.args[0])) from None
        except NotMovable as exc:
            raise UsageError(f"cannot pull: {exc}") from None
        self.shell.user_ns.update(values)
        where = f"session {session!r} (worker {shell.worker})" if session else \
            f"worker {shell.worker}"
        print(f"pulled {', '.join(args.names)} from {where}")

    def _cmd_attach(self, args: Any) -> None:
        info = self._worker_info(args.worker)
        print(info.attach_command)

    def _cmd_help(self, args: Any) -> None:
        print(USAGE)
