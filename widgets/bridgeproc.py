"""Starting a bridge (``kernelpit serve``) as a background process for ``%kp start``.

The bridge is its own process, in its own session (``start_new_session``), not
a thread of the notebook's kernel: it outlives a restart of that kernel, and
every notebook (and script) of the user finds it through the discovery file.
Its output goes to ``kernelpit-bridge.log`` in the Jupyter runtime directory.

So that it does not run forever after every notebook is closed, it is started
with an idle timeout (:data:`DEFAULT_IDLE_TIMEOUT`): it stops by itself once it
has had no calls and no connected client (a notebook holds a lease while its
kernel runs) for that long.  30 minutes outlasts a coffee break or a notebook's
restart, and frees the kernels' memory well before the end of a working day.
"""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Sequence

LOG_NAME = "kernelpit-bridge.log"
DEFAULT_IDLE_TIMEOUT = 1800.0  # seconds; see the module docstring


class StartFailed(RuntimeError):
    """The bridge process ended before it was serving; the message has its log tail."""


def log_path() -> Path:
    from kernelpit import discovery
    return discovery.default_path().with_name(LOG_NAME)


def serve_command(adapters: Sequence[str], workers: int | None, pool: str | None,
                  config: str | None = None, paths: Sequence[str] = (),
                  idle_timeout: float | None = DEFAULT_IDLE_TIMEOUT) -> list[str]:
    cmd = [sys.executable, "-m", "kernelpit", "serve"]
    if idle_timeout is not None:
        cmd += ["--idle-timeout", f"{idle_timeout:g}"]
    for a in adapters:
        cmd += ["--adapter", a]
    if workers is not None:
        cmd += ["--workers", str(workers)]
    if pool:
        cmd += ["--pool", pool]
    if config:
        cmd += ["--config", config]
    for p in paths:
        cmd += ["--path", p]
    return cmd


def stop_policy(idle_timeout: float | None) -> str:
    """How a bridge with this idle timeout stops, for ``%kp start``'s output."""
    if not idle_timeout:
        return "it runs until `%kp stop` (no idle timeout)"
    minutes = idle_timeout / 60
    after = (f"{minutes:g} min" if idle_timeout >= 120 and minutes == int(minutes)
             else f"{idle_timeout:g} s")
    return (f"it stops by itself after {after} with no calls and no connected notebook; "
            "`%kp stop` stops it now")


def write_config(pool: str, adapters: Sequence[str], workers: int, paths: Sequence[str],
                 limits: dict) -> Path:
    """A ``--config`` TOML file for one pool with recycling limits (flags serve cannot take)."""
    import json
    path = log_path().with_name(f"kernelpit-notebook-{os.getpid()}.toml")
    path.parent.mkdir(parents=True, exist_ok=True)
    lines = [f"[pools.{json.dumps(pool)}]", f"adapters = {json.dumps(list(adapters))}",
             f"workers = {int(workers)}", f"path = {json.dumps(list(paths))}"]
    lines += [f"{key} = {json.dumps(value)}" for key, value in limits.items()]
    path.write_text("\n".join(lines) + "\n")
    return path


def _reap(proc: subprocess.Popen) -> None:
    """Collect the exit status when the bridge ends, so no zombie is left behind."""
    threading.Thread(target=proc.wait, name="kernelpit-bridge-reaper", daemon=True).start()


def start(cmd: list[str], timeout: float = 180.0, cwd: str | None = None) -> dict:
    """Start ``cmd`` (a ``kernelpit serve``) in the background; wait until its discovery file
    names a live bridge, and return that file's contents."""
    from kernelpit import discovery
    path = discovery.default_path()
    log = log_path()
    log.parent.mkdir(parents=True, exist_ok=True)
    # Not a child of the notebook's kernel in spirit: no Jupyter parent-pid watch, own session.
    env = {k: v for k, v in os.environ.items() if not k.startswith("JPY_")}
    env.pop("MPLBACKEND", None)
    with open(log, "ab") as out:
        out.write(f"\n--- {time.ctime()}: {' '.join(cmd)}\n".encode())
        out.flush()
        proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=out, stderr=out,
                                cwd=cwd or os.getcwd(), env=env, start_new_session=True,
                                close_fds=True)
    _reap(proc)
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = discovery.read(path)
        if info is not None and info.get("pid") == proc.pid:
            return info
        if proc.poll() is not None:
            raise StartFailed(f"the bridge exited with code {proc.returncode} before serving; "
                              f"the end of its log ({log}):\n{tail(log)}")
        time.sleep(0.1)
    proc.terminate()
    raise StartFailed(f"the bridge did not start within {timeout:g} s; see {log}:\n{tail(log)}")


def tail(path: Path, lines: int = 20) -> str:
    try:
        text = path.read_text(errors="replace")
    except OSError:
        return "(no log)"
    chunk = text.rsplit("\n--- ", 1)[-1]
    return "\n".join(chunk.splitlines()[-lines:])
