"""The ``kernelpit`` command (also ``jupyter kernelpit`` and ``python -m kernelpit``).

::

    kernelpit serve --adapter mytools --workers 4     # run the bridge in the foreground
    kernelpit status                                  # workers and sessions
    kernelpit tools                                   # what can be called
    kernelpit call train epochs=3                     # run a tool, with live progress
    kernelpit submit train epochs=3                   # a durable job (also jobs, job, cancel)
    kernelpit untaint train                           # lift a crash quarantine now
    kernelpit stop                                    # stop the running bridge
    kernelpit token add ci --role call                # a named token (also list, revoke, rotate)
    kernelpit demo                                    # a tour with the bundled demo adapter
    kernelpit doctor [--fix]                          # environment checks, orphaned kernels
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from typing import Any, Iterable, Sequence, TextIO

from . import __version__, busy_poll
from .exceptions import BridgeError, CallError, JobsDisabled, KernelpitError, StartError
from .kernels import markers
from .terminal import (EventPrinter, charts_text, human_bytes, human_seconds, queue_summary,
                       table, tenants_table)

DEMO_ADAPTER = "kernelpit.kernels.demo"


# -- output helpers ----------------------------------------------------------------------------

def to_json(value: Any) -> str:
    """Strict JSON for ``--json``: bytes as ``{"$kp": "bytes", "b64": ...}``, NaN and inf as
    float markers, anything else JSON cannot hold as its repr()."""
    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            return markers.inline_bytes(obj)
        return repr(obj)
    return markers.dumps(value, default)


def node_text(w: Any) -> str:
    """Where a worker runs: "local", or a Ray node's address and the start of its id."""
    node = getattr(w, "node", None)
    if not node:
        return "local"
    return f"{getattr(w, 'host', None) or '?'} {node[:8]}"


def workers_table(workers: Iterable[Any]) -> str:
    workers = list(workers)
    placed = any(getattr(w, "node", None) for w in workers)  # a NODE column for Ray pools
    rows = [(w.id, w.pool, w.state, w.pid or "-", *((node_text(w),) if placed else ()),
             human_bytes(w.rss), f"{w.cpu:.0f}%", w.calls, human_seconds(w.uptime), w.sessions,
             f"{w.current_call} {w.current_call_seconds:.1f}s" if w.current_call else "-")
            for w in workers]
    return table(rows, ("WORKER", "POOL", "STATE", "PID", *(("NODE",) if placed else ()), "RSS",
                        "CPU", "CALLS", "UPTIME", "SESSIONS", "CURRENT CALL"))


def sessions_table(sessions: Iterable[Any]) -> str:
    now = time.time()
    rows = [(s.id, s.pool, s.worker, s.calls, human_seconds(now - s.last_used),
             "-" if s.ttl is None else f"{s.ttl:g}s", f"LOST: {s.lost}" if s.lost else "ok",
             " ".join(f"{k}={v}" for k, v in s.metadata.items()))
            for s in sessions]
    return table(rows, ("SESSION", "POOL", "WORKER", "CALLS", "IDLE", "TTL", "STATE", "METADATA"))


def parse_assignments(items: Sequence[str]) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as JSON when they parse, else kept as strings."""
    out: dict[str, Any] = {}
    for item in items:
        key, sep, text = item.partition("=")
        if not sep or not key.isidentifier():
            raise UsageError(f"argument {item!r} is not key=value (e.g. epochs=3 name=run1 "
                             "tags='[\"a\",\"b\"]')")
        try:
            out[key] = json.loads(text)
        except ValueError:
            out[key] = text
    return out


class UsageError(Exception):
    """A mistake on the command line; the message says how to fix it."""


def run_stream(client: Any, tool: str, kwargs: dict[str, Any], out: TextIO, err: TextIO,
               progress: bool = True) -> Any:
    """Run ``tool`` with live output and a progress bar; returns the result or raises the error."""
    printer = EventPrinter(out, err, progress=progress, partials=to_json)
    try:
        for ev in client.stream(tool, **kwargs):
            printer.feed(ev)
            if ev.kind == "result":
                return ev.value
            if ev.kind == "error":
                ev.raise_()
    finally:
        printer.flush()
    raise BridgeError(f"the stream of {tool}() ended without a result")


def print_error(exc: BaseException, err: TextIO) -> None:
    tb = getattr(exc, "remote_traceback", "")
    if tb:
        err.write(tb if tb.endswith("\n") else tb + "\n")
    if isinstance(exc, KernelpitError):
        err.write(f"kernelpit: error: {exc}\n")
    else:
        err.write(f"kernelpit: error: the tool raised {type(exc).__name__}: {exc}\n")


# -- commands ----------------------------------------------------------------------------------

def connect_from(args: argparse.Namespace) -> Any:
    from .remote import connect
    return connect(args.address, args.token, tls_ca=args.tls_ca, tls_cert=args.tls_cert,
                   tls_key=args.tls_key, transport=getattr(args, "transport", "auto"))


POOL_FLAGS = ("concurrency", "max_calls", "max_age", "max_memory", "spares", "shm_threshold",
              "shm_arena", "placement", "resources")


def _resources(text: str) -> dict[str, float]:
    """``--resources '{"CPU": 1, "my_label": 1}'`` as a dict."""
    try:
        value = json.loads(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"--resources takes a JSON object such as "
                                         f"'{{\"CPU\": 1}}': {exc}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError("--resources takes a JSON object such as '{\"CPU\": 1}'")
    return value


def cmd_serve(args: argparse.Namespace) -> int:
    from .config import PoolConfig, SchedulerConfig
    from .service import config as config_file
    from .service.run import serve

    settings: dict[str, Any] = {}
    configs: list[PoolConfig] = []
    if args.spawn:  # the default of every pool that does not set its own (as KERNELPIT_SPAWN)
        os.environ["KERNELPIT_SPAWN"] = args.spawn
    if args.config:
        configs, settings = config_file.load(args.config)
    if args.adapter or not configs:
        if not args.adapter:
            raise UsageError("nothing to serve: give --adapter MODULE (e.g. --adapter "
                             f"{DEMO_ADAPTER}) or --config FILE with [pools.NAME] tables")
        if any(c.name == args.pool for c in configs):
            raise UsageError(f"pool '{args.pool}' is both in --config and given with --adapter; "
                             "rename one with --pool NAME")
        extra = {k: v for k in POOL_FLAGS if (v := getattr(args, k)) is not None}
        try:
            configs.insert(0, PoolConfig(name=args.pool, adapters=args.adapter,
                                         workers=args.workers or 2, path=args.path or [],
                                         **extra))
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    elif args.workers or args.path or any(getattr(args, k) is not None for k in POOL_FLAGS):
        raise UsageError("--workers/--path and the pool settings apply to the pool given with "
                         "--adapter; set them in the [pools.NAME] tables of the config file "
                         "instead")
    auth = settings.pop("auth", True) and not args.no_auth
    for key in ("host", "port", "grace", "max_message_size", "idle_timeout", "tls_cert",
                "tls_key", "tls_client_ca", "tls_ca", "token_file", "metrics_address", "store",
                "job_ttl", "blob_dir", "ray_address"):
        value = getattr(args, key)
        if value is not None:
            settings[key] = value
    if args.no_store:
        settings["store"] = None
    elif settings.get("store") in (None, True):
        settings["store"] = True  # the default store: SQLite in the Jupyter data dir
    if settings.get("store") is False:
        settings["store"] = None
    if "job_ttl" in settings and (settings["job_ttl"] is not None and not settings["job_ttl"] > 0):
        raise UsageError(f"--job-ttl must be seconds > 0, got {settings['job_ttl']!r}")
    idle = settings.get("idle_timeout")
    if idle is not None and (isinstance(idle, bool) or not isinstance(idle, (int, float))
                             or not idle >= 0):
        raise UsageError(f"idle timeout must be a number of seconds >= 0 (0: never stop by "
                         f"itself), got {idle!r}")
    if args.insecure_bind_anywhere:
        settings["insecure_bind_anywhere"] = True
    if args.no_local:
        settings["local"] = False
    if args.no_blob_lane:
        settings["blob_lane"] = False
    if args.scheduler or args.tenant_weight or args.quota_running or args.quota_queued \
            or args.quota_sessions:
        try:
            settings["scheduler"] = settings.get("scheduler", SchedulerConfig()).with_flags(
                args.scheduler, args.tenant_weight or [], quota_running=args.quota_running or [],
                quota_queued=args.quota_queued or [], quota_sessions=args.quota_sessions or [])
        except ValueError as exc:
            raise UsageError(str(exc)) from None
    busy = settings.pop("busy_poll", busy_poll.BUDGET * 1e6)
    if args.busy_poll is not None:
        busy = args.busy_poll
    if isinstance(busy, bool) or not isinstance(busy, (int, float)) or not 0 <= busy <= 10_000:
        raise UsageError(f"busy poll must be microseconds from 0 (never) to 10000, got {busy!r} "
                         f"(the default, {busy_poll.BUDGET * 1e6:g}, covers a call's usual waits)")
    busy_poll.run(serve(configs, auth=auth, token=args.token,
                        discovery=False if args.no_discovery else None, **settings),
                  budget=busy / 1e6)
    return 0


def cmd_status(args: argparse.Namespace) -> int:
    if args.watch:
        return watch_status(args)
    with connect_from(args) as client:
        info = client.server_info()
        workers, sessions = client.workers(), client.sessions()
        tenants = first_snapshot(client).tenants
    if args.json:
        from dataclasses import asdict
        print(to_json({"address": info.address, "pid": info.pid, "version": info.version,
                       "pools": list(info.pools), "workers": [asdict(w) for w in workers],
                       "sessions": [asdict(s) for s in sessions],
                       "tenants": [asdict(t) for t in tenants]}))
        return 0
    sec = info.security
    transport = ("mutual TLS" if sec.client_certificates else "TLS" if sec.tls else "plaintext")
    print(f"bridge {info.address}  pid {info.pid}  kernelpit {info.version}  "
          f"up {human_seconds(time.time() - info.started)}  pools: {', '.join(info.pools)}  "
          f"{transport}" + (f"  token {sec.token_name} ({sec.role})" if sec.auth else ""))
    for warning in info.warnings:
        print(f"WARNING: {warning}")
    print()
    print(workers_table(workers))
    print()
    print(sessions_table(sessions) if sessions else "no open sessions")
    print()
    print(f"queue: {queue_summary(tenants)}")
    if tenants:
        print(tenants_table(tenants))
    return 0


def first_snapshot(client: Any) -> Any:
    """The watch stream's first event: workers, sessions and tenants' queues, at one time."""
    stream = client.watch()
    try:
        return next(iter(stream))
    finally:
        stream.close()


def watch_status(args: argparse.Namespace) -> int:
    """``kernelpit status --watch``: the workers table and live charts, redrawn in place
    (at most 4 times a second) from the watch stream and the call events, until Ctrl-C."""
    import threading

    from rich.console import Group
    from rich.live import Live
    from rich.text import Text

    from .telemetry.series import LiveSeries

    series, workers, lock = LiveSeries(), {}, threading.Lock()
    with connect_from(args) as client:
        info = client.server_info()
        watch, events = client.watch(1.0), client.subscribe("call.*")

        def follow_watch() -> None:
            for ev in watch:
                with lock:
                    if ev.kind == "snapshot":
                        workers.clear()
                        workers.update({w.id: w for w in ev.workers})
                    elif ev.kind == "worker_changed":
                        if ev.removed:
                            workers.pop(ev.worker.id, None)
                        else:
                            workers[ev.worker.id] = ev.worker
                    series.workers(workers.values())

        def follow_events() -> None:
            for ev in events:
                with lock:
                    series.feed(ev)

        for target in (follow_watch, follow_events):
            threading.Thread(target=target, daemon=True).start()

        def frame() -> Group:
            with lock:
                series.sample()
                table = workers_table(sorted(workers.values(), key=lambda w: w.id))
                charts = charts_text(series)
            head = (f"bridge {info.address}  pid {info.pid}  pools: {', '.join(info.pools)}  "
                    f"(Ctrl-C to stop)")
            return Group(Text(head), Text(""), Text(table), Text(""), Text(charts))

        try:
            with Live(frame(), refresh_per_second=4, screen=False) as live:
                while True:
                    time.sleep(1.0)
                    live.update(frame())
        except KeyboardInterrupt:
            pass
        finally:
            watch.close()
            events.close()
    return 0


def cmd_tools(args: argparse.Namespace) -> int:
    with connect_from(args) as client:
        tools = client.tools(args.pool)
    if args.json:
        from dataclasses import asdict
        print(to_json([asdict(t) for t in tools]))
        return 0
    rows = [(t.name, t.pool, t.signature.removeprefix(t.name), (t.doc or "").strip().split("\n")[0])
            for t in tools]
    print(table(rows, ("TOOL", "POOL", "SIGNATURE", "DESCRIPTION")))
    return 0


def cmd_call(args: argparse.Namespace) -> int:
    kwargs = parse_assignments(args.arguments)
    options = {k: v for k, v in (("deadline", args.deadline), ("session", args.session),
                                 ("pool", args.pool), ("worker", args.worker)) if v is not None}
    with connect_from(args) as client:
        caller = client.options(**options) if options else client
        try:
            result = run_stream(caller, args.tool, kwargs, sys.stdout, sys.stderr,
                                progress=not args.quiet)
        except KeyboardInterrupt:
            print("kernelpit: interrupted; the call was cancelled", file=sys.stderr)
            return 130
        except Exception as exc:
            print_error(exc, sys.stderr)
            return 1
    print(to_json(result))
    return 0


WORKER_ACTIONS = {
    "recycle": ("recycling worker {id}: its successor starts first, then it drains and stops",
                "replace a worker without downtime (successor first, then it drains)"),
    "restart": ("restarted worker {id}: it was killed and a fresh one takes its place",
                "kill a worker now; a fresh one takes its place"),
    "interrupt": ("interrupted worker {id}: its running calls were cancelled",
                  "cancel a worker's running calls and SIGINT its kernel"),
}


def cmd_worker(args: argparse.Namespace) -> int:
    with connect_from(args) as client:
        getattr(client, args.command)(args.worker)
    print("kernelpit: " + WORKER_ACTIONS[args.command][0].format(id=args.worker),
          file=sys.stderr)
    return 0


def cmd_untaint(args: argparse.Namespace) -> int:
    with connect_from(args) as client:
        lifted = client.untaint(args.tool, args.pool)
    print(f"kernelpit: {args.tool}() " + ("is no longer quarantined: calls to it run again"
                                          if lifted else "was not quarantined"), file=sys.stderr)
    return 0


def cmd_stop(args: argparse.Namespace) -> int:
    with connect_from(args) as client:
        info = client.server_info()
        client.shutdown(args.grace)
    print(f"kernelpit: stopping the bridge at {info.address} (pid {info.pid})...", file=sys.stderr)
    if not wait_for_exit(info.pid, (args.grace or 30) + 30):
        print(f"kernelpit: error: the bridge (pid {info.pid}) is still running; kill it with "
              f"`kill {info.pid}`", file=sys.stderr)
        return 1
    print("kernelpit: stopped", file=sys.stderr)
    return 0


def cmd_token(args: argparse.Namespace) -> int:
    with connect_from(args) as client:
        if args.action == "list":
            tokens = client.list_tokens()
        elif args.action == "add":
            tokens = [client.add_token(args.name, args.role)]
        else:
            tokens = [getattr(client, f"{args.action}_token")(args.name)]
    if args.json:
        from dataclasses import asdict
        print(to_json([asdict(t) for t in tokens] if args.action == "list" else asdict(tokens[0])))
        return 0
    if args.action == "list":
        now = time.time()
        print(table([(t.name, t.role, human_seconds(now - t.created) + " ago",
                      "never" if t.last_used is None else human_seconds(now - t.last_used) + " ago")
                     for t in tokens], ("NAME", "ROLE", "CREATED", "LAST USED")))
        return 0
    token = tokens[0]
    if token.secret is not None:
        print(token.secret)  # stdout: the secret alone, for $(kernelpit token add ...)
        print(f"kernelpit: token '{token.name}' (role {token.role}): the secret above is shown "
              "only now; clients send it with --token or $KERNELPIT_TOKEN"
              + ("; the old secret is refused from now on" if args.action == "rotate" else ""),
              file=sys.stderr)
    else:
        print(f"kernelpit: token '{token.name}' is revoked: new RPCs with it are refused "
              "(streams open now stay open until they end)", file=sys.stderr)
    return 0


def wait_for_exit(pid: int, timeout: float) -> bool:
    """Wait for a process (not necessarily our child) to end; a zombie counts as ended."""
    import psutil
    try:
        proc = psutil.Process(pid)
    except psutil.NoSuchProcess:
        return True
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        try:
            if proc.status() == psutil.STATUS_ZOMBIE:
                return True
            proc.wait(timeout=0.1)
            return True
        except psutil.TimeoutExpired:
            continue
        except psutil.NoSuchProcess:
            return True
    return False


def cmd_demo(args: argparse.Namespace) -> int:
    from .config import PoolConfig
    from .remote import Client
    from .service.server import Bridge
    from .sync import Portal

    say = lambda text: print(f"==> {text}", file=sys.stderr, flush=True)  # noqa: E731
    say(f"starting a bridge with the demo adapter ({DEMO_ADAPTER}), {args.workers} workers")
    portal = Portal("kernelpit-demo-bridge")
    bridge = portal.call(_start_bridge, Bridge(
        [PoolConfig(adapters=[DEMO_ADAPTER], workers=args.workers)], discovery=False))
    try:
        say(f"bridge at {bridge.address}; connecting a remote client")
        with Client(bridge.address, bridge.token) as client:
            print(table([(t.name, t.signature.removeprefix(t.name)) for t in client.tools()],
                        ("TOOL", "SIGNATURE")))
            say(f"running train(epochs={args.epochs}) through the bridge, streaming its progress")
            result = run_stream(client, "train", {"epochs": args.epochs,
                                                  "seconds_per_epoch": args.seconds},
                                sys.stdout, sys.stderr)
            print(f"result: {to_json(result)}")
            say("the workers now")
            print(workers_table(client.workers()))
    finally:
        say("shutting down: every worker kernel stops")
        portal.call(bridge.stop, 5.0)
        portal.stop()
    say("done")
    return 0


async def _start_bridge(bridge: Any) -> Any:
    return await bridge.start()


# -- argument parsing --------------------------------------------------------------------------

def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kernelpit", description="Run Python tools in a pool of Jupyter kernels, shared "
        "through a gRPC bridge.", epilog="Start with `kernelpit demo`.")
    parser.add_argument("--version", action="version", version=f"kernelpit {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def client_options(p: argparse.ArgumentParser) -> None:
        p.add_argument("--address", help="bridge address host:port (default: from the discovery "
                       "file of the running bridge)")
        p.add_argument("--token", help="bearer token (default: $KERNELPIT_TOKEN or the "
                       "discovery file's)")
        p.add_argument("--tls-ca", metavar="FILE", help="CA certificate (PEM) that signed a TLS "
                       "bridge's certificate (default: $KERNELPIT_TLS_CA or the discovery file's)")
        p.add_argument("--tls-cert", metavar="FILE", help="this client's certificate (PEM), "
                       "for a bridge that requires one (default: $KERNELPIT_TLS_CERT)")
        p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM; "
                       "default: $KERNELPIT_TLS_KEY)")
        p.add_argument("--transport", choices=("auto", "grpc", "local"), default="auto",
                       help="auto (default): the bridge's Unix socket when it runs on this "
                       "machine as this user, else gRPC; grpc; or local")

    p = sub.add_parser("serve", help="run the bridge in the foreground",
                       description="Start worker kernels and serve them over gRPC until "
                       "Ctrl-C/SIGTERM (in-flight calls get --grace seconds to finish).")
    p.add_argument("--adapter", action="append", metavar="MODULE",
                   help="module whose @tool functions are served (repeatable)")
    p.add_argument("--workers", type=int, help="worker kernels in the pool (default 2)")
    p.add_argument("--pool", default="default", help="name of the --adapter pool (default: default)")
    p.add_argument("--path", action="append", metavar="DIR",
                   help="directory put on the workers' sys.path (repeatable)")
    p.add_argument("--concurrency", type=int, help="threads per worker for thread-safe tools")
    p.add_argument("--max-calls", type=int, help="recycle a worker after this many calls")
    p.add_argument("--max-age", type=float, help="recycle a worker after this many seconds")
    p.add_argument("--max-memory", help="recycle a worker above this RSS, e.g. 2GB")
    p.add_argument("--spares", type=int, help="warm spare kernels kept ready (default 0)")
    p.add_argument("--shm-threshold", help="values this big or bigger go through shared "
                   "memory, e.g. 1MB (default)")
    p.add_argument("--shm-arena", help="shared memory kept for reuse by the next large "
                   "values once received ones are dropped, e.g. 2GB (default); 0 frees it at once")
    p.add_argument("--spawn", choices=("fork", "exec"),
                   help="how workers start, for every pool that does not set it: fork them "
                   "from a per-pool zygote (fast, shared memory; Linux) or exec a fresh "
                   "Python each (default: $KERNELPIT_SPAWN, else fork where supported)")
    p.add_argument("--placement", choices=("local", "ray"),
                   help="where the workers run: this machine (default) or the nodes of a Ray "
                        "cluster (docs/scale-out.md)")
    p.add_argument("--ray-address", metavar="ADDR",
                   help="the Ray cluster of Ray-placed pools: 'auto' (default) or HEAD:6379")
    p.add_argument("--resources", type=_resources, metavar="JSON",
                   help="Ray resources per worker, e.g. '{\"CPU\": 1, \"GPU\": 1}'")
    p.add_argument("--config", metavar="FILE", help="TOML file with [pools.NAME] tables "
                   "(PoolConfig fields) and an optional [bridge] table")
    p.add_argument("--host", help="interface to listen on (default 127.0.0.1); anything but "
                   "loopback needs TLS (--tls-cert/--tls-key) or --insecure-bind-anywhere")
    p.add_argument("--port", type=int, help="port (default 0: any free port)")
    p.add_argument("--token", default=os.environ.get("KERNELPIT_TOKEN"),
                   help="bearer token clients must send (default: $KERNELPIT_TOKEN, else a "
                   "random one; it is written to the discovery file)")
    p.add_argument("--no-auth", action="store_true",
                   help="DANGEROUS: accept calls without a token")
    p.add_argument("--token-file", metavar="FILE", help="where the named tokens (`kernelpit "
                   "token add`) are kept (default: kernelpit-tokens.json beside the discovery "
                   "file; in memory only with --no-discovery)")
    p.add_argument("--tls-cert", metavar="FILE", help="serve TLS with this certificate chain "
                   "(PEM); needs --tls-key")
    p.add_argument("--tls-key", metavar="FILE", help="the private key of --tls-cert (PEM)")
    p.add_argument("--tls-client-ca", metavar="FILE", help="mutual TLS: accept only clients "
                   "with a certificate this CA (PEM) signed")
    p.add_argument("--tls-ca", metavar="FILE", help="the CA (PEM) that signed --tls-cert, "
                   "written to the discovery file for local clients (default: the chain itself)")
    p.add_argument("--insecure-bind-anywhere", action="store_true",
                   help="DANGEROUS: listen beyond loopback without TLS (tokens and values in "
                   "plaintext on the network)")
    p.add_argument("--grace", type=float, help="seconds in-flight calls may take to finish on "
                   "shutdown (default 30)")
    p.add_argument("--max-message-size", help="largest request accepted, e.g. 64MB (default)")
    p.add_argument("--busy-poll", type=float, metavar="MICROSECONDS",
                   help="how long the bridge's event loop polls before it sleeps, while nearly "
                   "all its waits are that short and a CPU is spare (default 250; 0: never). "
                   "Spends a little CPU to answer each call sooner")
    p.add_argument("--idle-timeout", type=float, metavar="SECONDS",
                   help="stop by itself after this many seconds with no calls and no connected "
                   "client (default: never; `%%kp start` sets 1800)")
    p.add_argument("--metrics-address", metavar="HOST:PORT",
                   help="serve Prometheus metrics at http://HOST:PORT/metrics (off by default; "
                        "plaintext on loopback only, e.g. 127.0.0.1:9464)")
    p.add_argument("--scheduler", choices=("fair", "fifo"),
                   help="how waiting calls are shared between tenants (token names; each client "
                   "of the owner's token): fair (default: weighted fair queuing) or fifo")
    p.add_argument("--tenant-weight", action="append", metavar="NAME=W",
                   help="token NAME gets W shares of busy workers (default 1; repeatable)")
    p.add_argument("--quota-running", action="append", metavar="[NAME=]N",
                   help="calls a tenant may run at once per pool, more wait (N: every tenant; "
                   "NAME=N: that token name; repeatable; default no limit)")
    p.add_argument("--quota-queued", action="append", metavar="[NAME=]N",
                   help="calls a tenant may have waiting per pool, more fail at once with "
                   "QueueFull (as --quota-running)")
    p.add_argument("--quota-sessions", action="append", metavar="[NAME=]N",
                   help="sessions a tenant may hold open per pool, more fail with QueueFull "
                   "(as --quota-running)")
    p.add_argument("--store", metavar="PATH|URL",
                   help="the job store: a SQLite file or postgresql://USER@HOST/DB (default: "
                   "jobs.sqlite in the Jupyter data dir; see docs/jobs.md)")
    p.add_argument("--no-store", action="store_true", help="serve no durable jobs")
    p.add_argument("--job-ttl", type=float, metavar="SECONDS",
                   help="keep finished jobs this long (default 604800: 7 days)")
    p.add_argument("--blob-dir", metavar="DIR", help="large job values go here (PostgreSQL: "
                   "a folder every bridge sharing the database reaches; default: in the store)")
    p.add_argument("--no-discovery", action="store_true",
                   help="do not write the discovery file (clients then need --address/--token)")
    p.add_argument("--no-local", action="store_true",
                   help="serve gRPC only: no Unix socket for clients on this machine (the "
                   "local transport; docs/service.md)")
    p.add_argument("--no-blob-lane", action="store_true",
                   help="no second TCP port for reading large results: clients read them over "
                   "gRPC (ReadBlob) only; a bridge serving TLS never opens it (docs/security.md)")
    p.set_defaults(func=cmd_serve)

    p = sub.add_parser("status", help="show workers and sessions of the running bridge")
    client_options(p)
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("--watch", action="store_true",
                   help="keep showing the workers with live charts (calls/s, queue depth, "
                        "latency, RSS) until Ctrl-C")
    p.set_defaults(func=cmd_status)

    p = sub.add_parser("tools", help="list the tools the bridge serves")
    client_options(p)
    p.add_argument("--pool", help="only this pool")
    p.add_argument("--json", action="store_true", help="print JSON (with parameter schemas)")
    p.set_defaults(func=cmd_tools)

    p = sub.add_parser("call", help="run a tool: kernelpit call TOOL key=value ...",
                       description="Run a tool. Values are parsed as JSON when they parse, "
                       "else taken as strings. Progress goes to stderr, the tool's output is "
                       "printed live, the result is printed as JSON on stdout.")
    client_options(p)
    p.add_argument("tool")
    p.add_argument("arguments", nargs="*", metavar="key=value")
    p.add_argument("--deadline", type=float, help="seconds before the call is interrupted")
    p.add_argument("--session", help="run in this session")
    p.add_argument("--pool", help="run in this named pool")
    p.add_argument("--worker", type=int, help="run on this worker id")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_call)

    for action, (_, text) in WORKER_ACTIONS.items():
        p = sub.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        client_options(p)
        p.add_argument("worker", type=int, help="worker id (see `kernelpit status`)")
        p.set_defaults(func=cmd_worker)

    text = "lift a tool's crash quarantine now (calls to it failed with ToolTainted)"
    p = sub.add_parser("untaint", help=text, description=text[0].upper() + text[1:] + ".")
    client_options(p)
    p.add_argument("tool")
    p.add_argument("--pool", help="only in this named pool (default: every pool serving it)")
    p.set_defaults(func=cmd_untaint)

    p = sub.add_parser("stop", help="stop the running bridge (drains in-flight calls)")
    client_options(p)
    p.add_argument("--grace", type=float, help="seconds in-flight calls may take to finish")
    p.set_defaults(func=cmd_stop)

    text = "manage the bridge's named tokens (needs an admin token)"
    p = sub.add_parser("token", help=text, description=text[0].upper() + text[1:] + ". Roles: "
                       "read (lists and watches), call (also runs tools, sessions and jobs), "
                       "admin (also controls workers, shuts down, manages tokens).")
    actions = p.add_subparsers(dest="action", metavar="ACTION", required=True)
    for action, text in (("add", "make a named token; prints its secret once"),
                         ("list", "names, roles, when made and last used (never the secrets)"),
                         ("revoke", "refuse a token from now on"),
                         ("rotate", "give a token a new secret (printed once); the old is refused")):
        a = actions.add_parser(action, help=text, description=text[0].upper() + text[1:] + ".")
        client_options(a)
        if action != "list":
            a.add_argument("name", help="token name (letters, digits, '-', '_', '.')")
        if action == "add":
            a.add_argument("--role", required=True, choices=("read", "call", "admin"))
        a.add_argument("--json", action="store_true", help="print JSON")
        a.set_defaults(func=cmd_token)

    p = sub.add_parser("demo", help="a tour: bridge + remote client + streaming tool + shutdown")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--epochs", type=int, default=5)
    p.add_argument("--seconds", type=float, default=0.3, help="seconds per epoch")
    p.set_defaults(func=cmd_demo)

    from .cli_jobs import add_parsers as add_jobs  # submit, jobs, job, cancel: cli_jobs.py
    add_jobs(sub, client_options)
    from .doctor import add_parser as add_doctor  # `kernelpit doctor`: bridge/doctor.py
    add_doctor(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return args.func(args)
    except UsageError as exc:
        parser.exit(2, f"kernelpit {args.command}: error: {exc}\n")
    except (BridgeError, StartError, CallError, JobsDisabled, FileExistsError, OSError,
            ValueError) as exc:
        print(f"kernelpit {args.command}: error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"kernelpit {args.command}: interrupted", file=sys.stderr)
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())
