"""``kernelpit doctor``: check what Kernelpit needs, and say how to fix what is wrong.

::

    kernelpit doctor          # report; exit code 1 when a problem was found
    kernelpit doctor --fix    # also end orphaned kernels and delete stale files
    kernelpit doctor --json   # the same as JSON

Checks: the Python environment (version, executable, the packages Kernelpit
imports), that a worker kernel module can start (``python -m kernelpit.kernels``
imports in a subprocess), the installed kernelspecs and whether they launch
ipykernel (only those can be a pool's ``kernelspec=``), that a loopback port can
be bound, the Jupyter runtime directory, the run registry, stale discovery files
of bridges that are gone, connection files of kernels that are gone, and
orphaned kernels of earlier runs whose controller is gone (see
``pool/reaper.py``).

Use from Python: ``run_checks(fix=False)`` returns a list of :class:`Check`;
``format_report(checks)`` renders them.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, Callable, TextIO

OK, WARN, PROBLEM, FIXED = "ok", "warn", "problem", "fixed"
MARKS = {OK: "ok     ", WARN: "warn   ", PROBLEM: "PROBLEM", FIXED: "fixed  "}
STALE_AFTER = 60.0  # seconds: a connection file this young may belong to a kernel being started

PACKAGES = (  # (distribution, import name, why)
    ("kernelpit", "kernelpit", "this package"),
    ("ipykernel", "ipykernel", "every worker is an ipykernel"),
    ("jupyter_client", "jupyter_client", "launches and manages the kernels"),
    ("pyzmq", "zmq", "the call channel between the pool and its workers"),
    ("psutil", "psutil", "worker health and orphan detection"),
    ("grpcio", "grpc", "the bridge service (kernelpit serve / kernelpit.connect)"),
)


@dataclass
class Check:
    """One line of the report; ``fix`` says what to do when ``status`` is not ok."""

    name: str
    status: str
    summary: str
    fix: str | None = None
    details: list[str] = field(default_factory=list)


# -- the checks ------------------------------------------------------------------------------

def check_python() -> list[Check]:
    version = ".".join(map(str, sys.version_info[:3]))
    if sys.version_info < (3, 10):
        return [Check("python", PROBLEM, f"Python {version} at {sys.executable}",
                      "Kernelpit needs Python 3.10 or newer: install it into a Python >= 3.10 "
                      "environment")]
    return [Check("python", OK, f"Python {version} at {sys.executable}")]


def check_packages() -> list[Check]:
    out = []
    for dist, module, why in PACKAGES:
        try:
            version = metadata.version(dist)
        except metadata.PackageNotFoundError:
            version = None
        try:
            __import__(module)
        except Exception as exc:  # noqa: BLE001 - any import failure is the finding
            out.append(Check(f"package {dist}", PROBLEM,
                             f"{dist} {version or '(not installed)'} cannot be imported: "
                             f"{type(exc).__name__}: {exc}",
                             f"{sys.executable} -m pip install --upgrade {dist}  ({why})"))
            continue
        out.append(Check(f"package {dist}", OK, f"{dist} {version or '(version unknown)'}"))
    return out


def check_kernel_module(timeout: float = 60.0) -> list[Check]:
    """Can ``python -m kernelpit.kernels`` start here? Import it in a fresh interpreter."""
    code = "import kernelpit.kernels.__main__, kernelpit.kernels.agent, ipykernel.kernelapp"
    env = {k: v for k, v in os.environ.items() if not k.startswith("KERNELPIT_")}
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True,
                              text=True, timeout=timeout)
    except (OSError, subprocess.TimeoutExpired) as exc:
        return [Check("worker kernel", PROBLEM, f"`{sys.executable} -m kernelpit.kernels` "
                      f"could not be tried: {exc}", "check that this Python runs and is not "
                      "blocked (antivirus, a hung import)")]
    if proc.returncode != 0:
        tail = (proc.stderr.strip().splitlines() or ["(no output)"])[-1]
        return [Check("worker kernel", PROBLEM, f"`python -m kernelpit.kernels` fails to "
                      f"import: {tail}", f"{sys.executable} -m pip install --upgrade "
                      "--force-reinstall kernelpit ipykernel", proc.stderr.strip().splitlines()[-15:])]
    return [Check("worker kernel", OK, f"`{Path(sys.executable).name} -m kernelpit.kernels` "
                  f"imports ({time.perf_counter() - t0:.1f} s in a fresh interpreter)")]


def check_kernelspecs() -> list[Check]:
    from jupyter_client.kernelspec import KernelSpecManager

    try:
        specs = KernelSpecManager().get_all_specs()
    except Exception as exc:  # noqa: BLE001
        return [Check("kernelspecs", WARN, f"the installed kernelspecs cannot be listed: {exc}",
                      "check `jupyter kernelspec list`; pools without kernelspec= do not need one")]
    usable, other, broken = [], [], []
    for name, entry in sorted(specs.items()):
        argv = list(entry.get("spec", {}).get("argv", []))
        launches = any(a == "-m" and b in ("ipykernel_launcher", "ipykernel", "kernelpit.kernels")
                       for a, b in zip(argv, argv[1:]))
        exe = argv[0] if argv else ""
        found = bool(exe) and (os.path.isfile(exe) if os.sep in exe else
                               bool(__import__("shutil").which(exe)))
        if launches and not found:
            broken.append(f"{name}: its Python {exe!r} does not exist")
        elif launches:
            usable.append(name)
        else:
            other.append(f"{name} ({' '.join(argv[:3])}...)")
    details = ([f"usable as kernelspec=: {', '.join(usable)}"] if usable else []) + \
              [f"not an ipykernel (cannot be a pool's kernelspec): {o}" for o in other] + broken
    if broken:
        return [Check("kernelspecs", WARN, f"{len(specs)} installed; {len(broken)} point to a "
                      "missing Python", "reinstall them from the right environment: "
                      "`python -m ipykernel install --user --name NAME`, or remove them with "
                      "`jupyter kernelspec remove NAME`", details)]
    summary = (f"{len(specs)} installed, {len(usable)} launch ipykernel" if specs else
               "none installed (not needed: workers run this Python unless a pool sets "
               "kernelspec=)")
    return [Check("kernelspecs", OK, summary, None, details)]


def check_loopback() -> list[Check]:
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind(("127.0.0.1", 0))
            s.listen(1)
            port = s.getsockname()[1]
    except OSError as exc:
        return [Check("loopback port", PROBLEM, f"cannot bind a port on 127.0.0.1: {exc}",
                      "`kernelpit serve` needs a local TCP port: check that the loopback "
                      "interface is up (`ip addr show lo`) and no policy forbids listening")]
    return [Check("loopback port", OK, f"127.0.0.1:{port} can be bound")]


def check_runtime_dir() -> tuple[list[Check], Path | None]:
    from jupyter_core.paths import jupyter_runtime_dir

    runtime = Path(jupyter_runtime_dir())
    how = "JUPYTER_RUNTIME_DIR" if os.environ.get("JUPYTER_RUNTIME_DIR") else "jupyter default"
    fix = (f"make it writable (`mkdir -p {runtime} && chmod 700 {runtime}`) or point "
           "JUPYTER_RUNTIME_DIR at a writable directory")
    try:
        runtime.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=runtime, prefix=".kernelpit-doctor-"):
            pass
    except OSError as exc:
        return [Check("runtime dir", PROBLEM, f"{runtime} ({how}) is not usable: {exc}", fix)], None
    return [Check("runtime dir", OK, f"{runtime} ({how}) exists and is writable")], runtime


def check_registry() -> tuple[list[Check], Any]:
    from .pool.registry import RunRegistry, default_path

    try:
        reg = RunRegistry()
        runs, kernels = reg.runs(), reg.kernels()
    except Exception as exc:  # noqa: BLE001
        path = default_path()
        return [Check("run registry", PROBLEM, f"{path} cannot be used: {type(exc).__name__}: "
                      f"{exc}", f"delete it (`rm {path}*`; it only records running kernels) "
                      "or fix the runtime dir's permissions")], None
    damage = reg.damage()
    if damage:
        return [Check("run registry", PROBLEM, f"{reg.path} is damaged: {damage}",
                      f"once no Kernelpit pool or bridge of this user runs, move it aside "
                      f"(`mv {reg.path} {reg.path}.damaged`, and its -wal and -shm files if "
                      "any); it only records running kernels, and the next start makes a new "
                      "one")], reg
    live = sum(r.controller_alive and r.closed is None for r in runs)
    return [Check("run registry", OK, f"{reg.path}: {len(runs)} run(s) ({live} with a live "
                  f"controller), {len(kernels)} kernel row(s)")], reg


def check_placed_kernels(reg: Any) -> list[Check]:
    """Kernels of live runs placed on Ray nodes: where each one is (the registry's record).

    Nothing here reaches into the cluster: Ray ends them with their controller (their host
    actors are owned by it), so they are listed, never reaped from this machine."""
    placed = [k for k in reg.kernels() if k.node and k.state == "active"]
    if not placed:
        return []
    details = [f"run {k.run_id} worker {k.worker_id}: node {k.node} ({k.host or '?'}), pid "
               f"{k.remote_pid or '?'} there, actor {k.actor or '?'}"
               + ("" if k.controller_alive else "; its controller is gone: Ray ends it")
               for k in placed]
    where = ", ".join(f"worker {k.worker_id} on {k.host or '?'} {k.node[:8]}" for k in placed[:6])
    more = f" and {len(placed) - 6} more (--verbose)" if len(placed) > 6 else ""
    return [Check("Ray-placed kernels", OK, f"{len(placed)} kernel(s) on "
                  f"{len({k.node for k in placed})} Ray node(s): {where}{more}",
                  details=details)]


def check_discovery(runtime: Path, fix: bool) -> list[Check]:
    from . import discovery

    out = []
    now = time.time()
    for path in sorted(runtime.glob("kernelpit-bridge*.json")) + sorted(
            runtime.glob(".kernelpit-bridge*.tmp")):
        with contextlib.suppress(OSError):
            if path.suffix == ".tmp" and now - path.stat().st_mtime < STALE_AFTER:
                continue  # being written right now
        try:
            info = json.loads(path.read_text())
        except (OSError, ValueError) as exc:
            info, why = None, f"unreadable ({type(exc).__name__})"
        if isinstance(info, dict) and discovery.is_live(info):
            out.append(Check("discovery file", OK, f"{path}: bridge at {info.get('address')} "
                             f"(pid {info.get('pid')}) is running"))
            continue
        if isinstance(info, dict):
            why = f"its bridge (pid {info.get('pid')}, {info.get('address')}) is not running"
        elif info is not None:
            why = "not a discovery file"
        out.append(_fixable("discovery file", f"stale {path}: {why}",
                            f"delete it: `rm {path}` (or `kernelpit doctor --fix`); clients "
                            "ignore it, and the next `kernelpit serve` replaces it",
                            (lambda p=path: p.unlink()) if fix else None))
    if not out:
        out.append(Check("discovery file", OK, "no discovery file (no bridge running here)"))
    return out


def check_connection_files(runtime: Path, live_runs: set[str], reg: Any, fix: bool) -> list[Check]:
    """``kernel-kernelpit-<run>-<worker>.json`` of runs with no live process and no live controller."""
    keep = set(live_runs)
    if reg is not None:
        with contextlib.suppress(Exception):
            keep |= {r.run_id for r in reg.runs() if r.controller_alive and r.closed is None}
    stale = []
    now = time.time()
    for path in runtime.glob("kernel-kernelpit-*-*.json"):
        run_id = path.name[len("kernel-kernelpit-"):].rsplit("-", 1)[0]
        with contextlib.suppress(OSError):
            if run_id not in keep and now - path.stat().st_mtime > STALE_AFTER:
                stale.append(path)
    if not stale:
        return [Check("connection files", OK, "no stale kernel connection files")]
    runs = sorted({p.name[len("kernel-kernelpit-"):].rsplit("-", 1)[0] for p in stale})

    def remove() -> None:
        for p in stale:
            p.unlink(missing_ok=True)

    return [_fixable("connection files", f"{len(stale)} connection file(s) of kernels that are "
                     f"gone (runs {', '.join(runs[:5])}{'...' if len(runs) > 5 else ''})",
                     f"delete them: `rm {runtime}/kernel-kernelpit-<run>-*.json` (or "
                     "`kernelpit doctor --fix`)", remove if fix else None,
                     [str(p) for p in sorted(stale)[:20]])]


def check_orphans(reg: Any, fix: bool) -> tuple[list[Check], set[str]]:
    from .pool import reaper

    scan = reaper.find_orphans(reg)
    cost = (f"scanned {scan.processes} processes, {scan.marked} kernelpit ones, in "
            f"{scan.seconds * 1000:.1f} ms")
    out = []
    if not scan.orphans:
        out.append(Check("orphans", OK, f"no kernel left by an earlier run ({cost})"))
    else:
        details = [o.describe() for o in scan.orphans]
        groups = sorted({o.pgid for o in scan.orphans if o.pgid == o.pid})
        by_hand = f"`kill -TERM {' '.join(f'-{g}' for g in groups[:6])}`" if groups else "kill them"
        if fix:
            result = reaper.cleanup(reg, reaper.reap(scan))
            if result.survivors:
                out.append(Check("orphans", PROBLEM, f"{len(result.survivors)} orphaned process(es) "
                                 f"survived SIGKILL: {result.survivors}", "look at them with "
                                 f"`ps -o pid,stat,cmd -p {','.join(map(str, result.survivors))}` "
                                 "(stuck in the kernel, state D?)", details))
            else:
                out.append(Check("orphans", FIXED, f"ended {len(result.terminated) + len(result.killed)} "
                                 f"process(es) of {len(scan.orphans)} orphan(s) of earlier runs "
                                 f"({len(result.killed)} needed SIGKILL) in {result.seconds:.2f} s",
                                 None, details))
        else:
            out.append(Check("orphans", PROBLEM, f"{len(scan.orphans)} process(es) of earlier runs "
                             f"whose controller is gone ({cost})", f"`kernelpit doctor --fix` ends "
                             f"them (SIGTERM, then SIGKILL), or by hand: {by_hand}; the next pool "
                             "start would end them too", details))
    if scan.undetermined:
        out.append(Check("orphans", WARN, f"{len(scan.undetermined)} kernelpit process(es) without "
                         "a recorded controller (started by an older kernelpit?): "
                         f"{scan.undetermined[:10]}", "check them with `ps -o pid,ppid,etime,cmd "
                         f"-p {','.join(map(str, scan.undetermined[:10]))}` and kill those "
                         "that are stale; doctor never kills what it cannot attribute"))
    return out, scan.runs_seen


def _fixable(name: str, summary: str, fix: str, do: Callable[[], None] | None,
             details: list[str] | None = None) -> Check:
    if do is None:
        return Check(name, PROBLEM, summary, fix, details or [])
    try:
        do()
    except OSError as exc:
        return Check(name, PROBLEM, f"{summary}; could not fix: {exc}", fix, details or [])
    return Check(name, FIXED, f"{summary}: removed", None, details or [])


def run_checks(fix: bool = False, kernel_check: bool = True) -> list[Check]:
    """Run every check; with ``fix``, end orphans and delete stale files on the way."""
    checks = check_python() + check_packages()
    if kernel_check:
        checks += check_kernel_module()
    checks += check_kernelspecs() + check_loopback()
    runtime_checks, runtime = check_runtime_dir()
    checks += runtime_checks
    reg = None
    if runtime is not None:
        reg_checks, reg = check_registry()
        checks += reg_checks
        if reg is not None:
            checks += check_placed_kernels(reg)
        checks += check_discovery(runtime, fix)
    orphan_checks, live_runs = check_orphans(reg, fix)
    if runtime is not None:
        checks += check_connection_files(runtime, live_runs, reg, fix)
    checks += orphan_checks
    if reg is not None:
        reg.close()
    return checks


# -- output ----------------------------------------------------------------------------------

def problems(checks: list[Check]) -> list[Check]:
    return [c for c in checks if c.status == PROBLEM]


def format_report(checks: list[Check], verbose: bool = False) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{MARKS.get(c.status, c.status)}] {c.name}: {c.summary}")
        if c.fix and c.status != OK:
            lines.append(f"          fix: {c.fix}")
        if c.details and (verbose or c.status != OK):
            lines.extend(f"          - {d}" for d in c.details[:20])
    bad, warn = problems(checks), [c for c in checks if c.status == WARN]
    fixed = [c for c in checks if c.status == FIXED]
    lines.append("")
    if bad:
        lines.append(f"kernelpit doctor: {len(bad)} problem(s) found; each says what to do "
                     "(`kernelpit doctor --fix` fixes orphans and stale files)")
    else:
        lines.append(f"kernelpit doctor: no problem found ({len(warn)} warning(s)"
                     f"{f', {len(fixed)} fixed' if fixed else ''})")
    return "\n".join(lines)


def main(fix: bool = False, as_json: bool = False, verbose: bool = False,
         out: TextIO | None = None) -> int:
    """Run the checks, print them; 1 when a problem remains, else 0."""
    out = out or sys.stdout
    checks = run_checks(fix=fix)
    if as_json:
        out.write(json.dumps({"ok": not problems(checks), "checks": [asdict(c) for c in checks]},
                             indent=1) + "\n")
    else:
        out.write(format_report(checks, verbose) + "\n")
    return 1 if problems(checks) else 0


def add_parser(sub: Any) -> None:
    """The ``kernelpit doctor`` subcommand (``sub``: the CLI's subparsers)."""
    p = sub.add_parser("doctor", help="check the environment, find orphaned kernels and stale "
                       "files (exit 1 when a problem is found)",
                       description="Check the Python environment, the worker kernel, "
                       "kernelspecs, a loopback port, the Jupyter runtime dir, stale discovery "
                       "and connection files, and kernels left by earlier runs whose controller "
                       "is gone. Each problem says what to do. Exit code 1 when a problem "
                       "remains.")
    p.add_argument("--fix", action="store_true", help="end orphaned kernels (SIGTERM, then "
                   "SIGKILL) and delete stale discovery/connection files")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.add_argument("-v", "--verbose", action="store_true", help="details of passing checks too")
    p.set_defaults(func=lambda args: main(fix=args.fix, as_json=args.json, verbose=args.verbose))
