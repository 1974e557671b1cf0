"""Parent-death detection: a worker kernel ends itself when its controller dies.

The pool's process (the *controller*: a script, a notebook kernel, ``kernelpit
serve``) passes its pid and create time in ``KERNELPIT_CONTROLLER_PID`` and
``KERNELPIT_CONTROLLER_START``. A daemon thread waits on a pidfd of that process
(Linux >= 5.3; it becomes readable the moment the process exits, even when
nobody reaps it) or, without pidfd, polls every 0.5 s whether the parent
changed or the pid vanished. When the controller is gone it sends SIGTERM to
the kernel's own process group (the kernel is its leader: jupyter_client starts
it in a new session), so a tool's subprocesses go too, then SIGKILL after
``GRACE`` seconds if anything, this process included, is still there.

ipykernel has a parent poller of its own (``JPY_PARENT_PID``, checked once a
second), but it ends only the kernel process: a tool's subprocesses outlive it.

On another node (a kernel placed by Ray) the controller's pid means nothing: the
kernel's host actor stands in for it there (the actor dies with the controller), and
the call channel is watched too: when the agent's TCP connection to the pool ends
without a stop request, :func:`channel_lost` ends the kernel's group the same way.

``KERNELPIT_LIFELINE=0`` turns both off (for tests of the reaper, which must then
find the survivors). Only the standard library is used here.
"""

from __future__ import annotations

import os
import select
import signal
import sys
import threading
import time

GRACE = 2.0
POLL = 0.5


def _start_time(pid: int) -> float | None:
    """Process create time in seconds since the epoch, as psutil computes it (Linux only)."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            stat = f.read()
        ticks = int(stat[stat.rindex(b")") + 2:].split()[19])
        with open("/proc/stat", "rb") as f:
            for line in f:
                if line.startswith(b"btime"):
                    return int(line.split()[1]) + ticks / os.sysconf("SC_CLK_TCK")
    except (OSError, ValueError, IndexError):
        pass
    return None


def is_same(pid: int, start: float | None) -> bool:
    """True when ``pid`` is (still) the controller that started at ``start``."""
    if start is None:
        return True
    now = _start_time(pid)
    return now is None or abs(now - start) < 1.0


def _wait_pidfd(pid: int, start: float | None) -> bool:
    """Block until the controller exits; False when pidfd is unavailable."""
    try:
        fd = os.pidfd_open(pid)  # type: ignore[attr-defined]
    except ProcessLookupError:
        return True  # already gone
    except (AttributeError, OSError):
        return False
    try:
        if not is_same(pid, start):
            return True  # the pid was reused: our controller is long gone
        poller = select.poll()
        poller.register(fd, select.POLLIN)
        while not poller.poll():
            pass
        return True
    finally:
        os.close(fd)


def _wait_polling(pid: int, start: float | None) -> None:
    parent = os.getppid()
    while True:
        if parent == pid and os.getppid() != parent:
            return  # reparented: the controller exited (even if it is an unreaped zombie)
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return
        except PermissionError:
            pass
        if not is_same(pid, start):
            return
        time.sleep(POLL)


def _end_group(why: str = "the controller of this worker is gone") -> None:
    try:
        sys.stderr.write(f"kernelpit: {why}; ending process group {os.getpgrp()}\n")
        sys.stderr.flush()
    except Exception:  # noqa: BLE001
        pass
    group = os.getpgrp()
    mine = group == os.getpid()  # never signal a group we do not lead (e.g. a shell's job)
    try:
        if mine:
            os.killpg(group, signal.SIGTERM)
        else:
            os.kill(os.getpid(), signal.SIGTERM)
    except OSError:
        pass
    time.sleep(GRACE)  # only reached when SIGTERM is handled or ignored here
    try:
        if mine:
            os.killpg(group, signal.SIGKILL)
    finally:
        os._exit(1)


def channel_lost() -> None:
    """The pool's call channel is gone without a stop: end this kernel's process group
    (SIGTERM, then SIGKILL after ``GRACE``), unless the lifeline is turned off."""
    if os.environ.get("KERNELPIT_LIFELINE", "1") == "0":
        return
    threading.Thread(target=_end_group, args=("the pool's call channel is gone",),
                     name="kernelpit-lifeline-channel", daemon=True).start()


def _watch(pid: int, start: float | None) -> None:
    if not _wait_pidfd(pid, start):
        _wait_polling(pid, start)
    _end_group()


def controller() -> tuple[int, float | None] | None:
    """The controller's (pid, create time) named in the environment; None without one or
    when the lifeline is disabled (the fork-server's zygote watches it too)."""
    pid = os.environ.get("KERNELPIT_CONTROLLER_PID", "")
    if os.environ.get("KERNELPIT_LIFELINE", "1") == "0" or not pid.isdigit():
        return None
    try:
        return int(pid), float(os.environ.get("KERNELPIT_CONTROLLER_START", ""))
    except ValueError:
        return int(pid), None


def start() -> threading.Thread | None:
    """Watch the controller named in the environment; a no-op without one or when disabled."""
    if os.environ.get("KERNELPIT_LIFELINE", "1") == "0":
        # a kernel with no parent-death detection at all: ipykernel's own parent poller
        # (JPY_PARENT_PID, 1 s polling, ends the kernel but not its children) is off too
        os.environ.pop("JPY_PARENT_PID", None)
        return None
    found = controller()
    if found is None:
        return None
    thread = threading.Thread(target=_watch, args=found,
                              name="kernelpit-lifeline", daemon=True)
    thread.start()
    return thread
