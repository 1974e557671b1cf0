"""Files a run leaves on disk, and removing those of runs that are over.

A run owns, besides its kernels (``reaper.py`` ends those):

* its *run directory* ``<tmp>/kernelpit-<run>-XXXX`` (0700): the call channel's socket,
  the kernels' ipc sockets, the worker logs, and an ``owner`` file;
* its *shared-memory directory* ``/dev/shm/kernelpit-<run>`` and an owner file beside it,
  ``/dev/shm/kernelpit-<run>.owner`` (values in transit);
* the kernels' connection files ``<runtime dir>/kernel-kernelpit-<run>-<worker>.json``.

An owner file holds the controller's pid and create time.  A directory is removed when its
run is over by the registry (the reaper's judgement), or when its owner file names a process
that is gone, whichever registry the run used: so a run of another runtime directory (a test
session) is judged by its owner, and another live run's files are never touched.
``kp-XXXX`` directories (the call channel of older versions, without an owner file) are
removed when they are this user's, over a minute old, and no process listens on the socket
in them (Linux: ``/proc/net/unix``).
"""

from __future__ import annotations

import contextlib
import glob
import os
import shutil
import stat
import tempfile
import time
from pathlib import Path

from ..kernels.arrow import SHM_BASE, shared_dir
from .registry import controller_identity, process_alive

OWNER_SUFFIX = ".owner"    # beside a shared-memory directory
OWNER_FILE = "owner"       # inside a run directory
LEGACY_MIN_AGE = 60.0      # seconds: an older version's channel directory is judged after this


def write_owner(path: str) -> None:
    """Record in ``path`` (0600) which process owns the run: its pid and create time."""
    pid, start = controller_identity()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(f"{pid} {start!r}\n")


def owner_gone(path: str) -> bool:
    """True when the owner file ``path`` names a process that is no longer running.  False
    when it is alive, or the file is missing, unreadable or half-written (not judged)."""
    try:
        with open(path) as f:
            pid, start = f.read().split()
        return not process_alive(int(pid), float(start))
    except (OSError, ValueError):
        return False


# -- the run directory ------------------------------------------------------------------------

def make_run_dir(run_id: str) -> Path:
    """The run's private temp directory, with its owner file."""
    path = tempfile.mkdtemp(prefix=f"kernelpit-{run_id}-")
    write_owner(os.path.join(path, OWNER_FILE))
    return Path(path)


def _listening_unix_paths() -> set[str] | None:
    """Paths of the bound Unix sockets on this host (Linux), None where unknown."""
    try:
        with open("/proc/net/unix") as f:
            next(f)
            return {parts[7] for parts in (line.split() for line in f) if len(parts) >= 8}
    except (OSError, StopIteration):
        return None


def _own_dir(path: str) -> bool:
    try:
        st = os.lstat(path)
    except OSError:
        return False
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid()


def remove_run_dirs(run_ids: set[str], tmp: str | None = None) -> list[str]:
    """Remove the run directories of ``run_ids``, those whose owner is gone, and older
    versions' channel directories nobody listens on; returns what was removed."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    for path in glob.glob(os.path.join(tmp, "kernelpit-*")):
        name = os.path.basename(path)
        run_id = name[len("kernelpit-"):].rpartition("-")[0]
        if not _own_dir(path):
            continue
        if run_id in run_ids or owner_gone(os.path.join(path, OWNER_FILE)):
            shutil.rmtree(path, ignore_errors=True)
            removed.append(path)
    legacy = [p for p in glob.glob(os.path.join(tmp, "kp-*")) if _own_dir(p)]
    listening = _listening_unix_paths() if legacy else None
    if listening is not None:
        now = time.time()
        for path in legacy:
            with contextlib.suppress(OSError):
                if now - os.stat(path).st_mtime < LEGACY_MIN_AGE:
                    continue
                if os.path.join(path, "calls") in listening:
                    continue  # a live run's call channel
                shutil.rmtree(path, ignore_errors=True)
                removed.append(path)
    return removed


# -- the shared-memory directory ---------------------------------------------------------------

def mark_shared_dir(path: str) -> None:
    """Write beside a run's shared-memory directory which process owns it."""
    write_owner(path + OWNER_SUFFIX)


def remove_shared_dir(path: str) -> None:
    """Remove a run's shared-memory directory and its owner file."""
    shutil.rmtree(path, ignore_errors=True)
    with contextlib.suppress(OSError):
        os.unlink(path + OWNER_SUFFIX)


def remove_shared_dirs(run_ids: set[str]) -> list[str]:
    """The shared-memory directories of ``run_ids``, and any whose owner is gone."""
    paths = {shared_dir(run_id) for run_id in run_ids}
    for marker in glob.glob(os.path.join(SHM_BASE, "kernelpit-*" + OWNER_SUFFIX)):
        if owner_gone(marker):
            paths.add(marker[:-len(OWNER_SUFFIX)])
    removed = []
    for path in sorted(paths):
        if os.path.isdir(path) or os.path.exists(path + OWNER_SUFFIX):
            remove_shared_dir(path)
            removed.append(path)
    return removed


# -- connection files ---------------------------------------------------------------------------

def remove_connection_files(runtime: Path, run_ids: set[str]) -> list[str]:
    """Connection files (``kernel-kernelpit-<run>-<worker>.json``) of runs that are over."""
    removed = []
    for run_id in run_ids:
        for path in runtime.glob(f"kernel-kernelpit-{run_id}-*.json"):
            with contextlib.suppress(OSError):
                path.unlink()
                removed.append(str(path))
    return removed
