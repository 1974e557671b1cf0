"""The discovery file: how ``kernelpit.connect()`` finds the running bridge and its token.

``<jupyter runtime dir>/kernelpit-bridge.json``, mode 0600::

    {"address": "127.0.0.1:40123", "pid": 4242, "token": "...", "started": ..., "version": "0.1.0"}

A file whose process is gone (or whose pid now belongs to another process)
is stale: it is ignored by clients and replaced by the next ``kernelpit serve``.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import Any

import psutil
from jupyter_core.paths import jupyter_runtime_dir

FILENAME = "kernelpit-bridge.json"


def default_path() -> Path:
    return Path(jupyter_runtime_dir()) / FILENAME


def _process_started(pid: int) -> float | None:
    try:
        return psutil.Process(pid).create_time()
    except psutil.Error:
        return None


def is_live(info: dict[str, Any]) -> bool:
    """True when the process that wrote ``info`` is still running."""
    pid = info.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    started = _process_started(pid)
    if started is None:
        return False
    wrote = info.get("process_started")
    return not isinstance(wrote, (int, float)) or abs(wrote - started) < 1.0


def read(path: Path | None = None) -> dict[str, Any] | None:
    """The live bridge's discovery info, or None (no file, unreadable, or stale)."""
    path = path or default_path()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    if not isinstance(info, dict) or "address" not in info or not is_live(info):
        return None
    return info


def write(address: str, token: str | None, path: Path | None = None, **extra: Any) -> Path:
    """Write the file for this process, mode 0600, atomically; refuses to replace a live one."""
    path = path or default_path()
    path.parent.mkdir(parents=True, exist_ok=True)
    other = read(path)
    if other is not None and other.get("pid") != os.getpid():
        raise FileExistsError(
            f"a bridge is already running at {other['address']} (pid {other['pid']}, discovery "
            f"file {path}); stop it with `kernelpit stop`, or start this one with --no-discovery")
    pid = os.getpid()
    info = {"address": address, "pid": pid, "token": token, "started": time.time(),
            "process_started": _process_started(pid), **extra}
    tmp = path.with_name(f".{path.name}.{pid}.tmp")
    with contextlib.suppress(FileNotFoundError):
        tmp.unlink()
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(info, f, indent=1)
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def remove(path: Path | None = None) -> None:
    """Delete the file if it is this process's."""
    path = path or default_path()
    try:
        info = json.loads(path.read_text())
    except (OSError, ValueError):
        return
    if isinstance(info, dict) and info.get("pid") == os.getpid():
        with contextlib.suppress(OSError):
            path.unlink()
