"""Busy polling: an event loop that polls for a short while before it sleeps.

A loop with nothing to run sleeps in ``epoll_wait``; when its next event comes, the kernel
wakes the thread, and on a virtual machine that wake-up (an inter-processor interrupt, a
VM exit, the scheduler) costs tens of microseconds each time.  A bridge serving one caller
at a time sleeps three or four times per call: for the request, for the worker's reply,
for gRPC's completions.  Each of those waits is usually shorter than the wake-up it ends.

:class:`BusyPollSelector` polls without sleeping for up to ``budget`` seconds before it
sleeps, as Linux's ``net.core.busy_poll`` does for sockets, under two conditions:

- **The waits are short.**  It keeps a running share of the waits that ended within the
  budget, and polls only while that share is over nine in ten.  A loop whose waits are
  long (an idle bridge, a caller that thinks between calls) soon stops polling; at most a
  few budgets are spent learning it.  So does one with a long wait every few short ones, as
  while a large result is sent: there a poll runs its whole budget while the worker, gRPC's
  threads and the client need the CPU (measured: a 1 MB table took 7 % longer when it
  polled from one half of short waits, and a 1 MB Arrow result missed its target when it
  polled from three quarters).  A lone caller's waits are short all but a few in a
  hundred.
- **A CPU is spare.**  Where it would poll, it reads how many tasks are runnable on the
  machine (``/proc/loadavg``), and keeps a running share of the readings in which they,
  its own thread included, outnumber the CPUs it may use; it polls only while that share
  is under one half.  The count jumps from one reading to the next as threads wake and
  sleep around each call; CPU-bound tools keep it up.  Polling on a busy machine would
  take a CPU from the workers' tools (measured: two CPU-bound workers on two CPUs lost a
  third of their work to an unchecked poll), as the kernel's own busy polling stops when
  another task wants the CPU.

Without ``/proc/loadavg`` (not Linux) it never polls.  In a cgroup whose CPU quota
(``cpu.max``, or ``cpu.cfs_quota_us`` in cgroup v1: a container's, a systemd unit's
``CPUQuota=``) is below its CPUs, it counts the whole CPUs of the quota instead
(:func:`usable_cpus`): polling there would spend the quota that the workers share.

While it polls, the loop's thread holds the GIL but for the moments of each poll, and
another Python thread seldom gets it in those.  So :class:`BusyPollLoop`, the loop on such
a selector, does not poll while work it handed to threads (``run_in_executor``,
``asyncio.to_thread``) is running: that work would wait for the end of each poll.

:func:`new_event_loop` makes a :class:`BusyPollLoop`, and :func:`run` runs a coroutine on
one as :func:`asyncio.run` does.  ``kernelpit serve`` runs on it (``--busy-poll``; measured
in docs/performance.md, "The remote hot path").
"""

from __future__ import annotations

import asyncio
import math
import os
import selectors
import sys
import time
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")

#: the default budget: polling longer than a call's usual waits only spends CPU
#: (measured against 100 and 1000 µs in docs/performance.md)
BUDGET = 250e-6

_LEARN = 1 / 8  # weight of the newest wait (or reading) in a running share
_POLL_FROM = 0.9  # the share of short waits over which it polls


def usable_cpus(cgroup: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") -> int:
    """The CPUs this process may use: those it has affinity to, but no more than the whole
    CPUs of its cgroup's CPU quota (:func:`cpu_quota`)."""
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") \
        else os.cpu_count() or 1
    quota = cpu_quota(cgroup, membership)
    return cpus if quota is None else max(1, min(cpus, math.floor(quota)))


def cpu_quota(cgroup: str = "/sys/fs/cgroup", membership: str = "/proc/self/cgroup") \
        -> float | None:
    """The tightest CPU quota over this process's cgroup and its ancestors, in CPUs, or None
    without one.  It looks at the root of the cgroup mount, where a container sees its own
    cgroup (as loky does), and along the path that ``membership`` names (a systemd unit's
    ``CPUQuota=``, a container without a cgroup namespace): ``cpu.max`` in cgroup v2 ("max
    100000" or "150000 100000"), ``cpu.cfs_quota_us`` ("-1": none) over ``cpu.cfs_period_us``
    in v1's ``cpu`` controller."""
    quotas = [q for q in (_quota_in(d, v2) for d, v2 in _cgroup_dirs(cgroup, membership))
              if q is not None]
    return min(quotas, default=None)


def _cgroup_dirs(cgroup: str, membership: str) -> list[tuple[str, bool]]:
    """(directory, is cgroup v2) to read a quota in: the roots of v2 and of v1's ``cpu``, then
    every directory on this process's path below each."""
    paths = {True: "", False: ""}
    try:
        with open(membership) as f:
            for line in f:  # "0::/path" (v2), "4:cpu,cpuacct:/path" (v1)
                _, controllers, path = line.rstrip("\n").split(":", 2)
                if not controllers:
                    paths[True] = path
                elif "cpu" in controllers.split(","):
                    paths[False] = path
    except (OSError, ValueError):
        pass
    dirs = []
    for v2, root in ((True, cgroup), (False, os.path.join(cgroup, "cpu"))):
        here = root
        dirs.append((here, v2))
        for part in paths[v2].strip("/").split("/"):
            if part:
                here = os.path.join(here, part)
                dirs.append((here, v2))
    return dirs


def _quota_in(directory: str, v2: bool) -> float | None:
    try:
        if v2:
            with open(os.path.join(directory, "cpu.max")) as f:
                quota, period = f.read().split()[:2]
        else:
            with open(os.path.join(directory, "cpu.cfs_quota_us")) as f:
                quota = f.read().strip()
            with open(os.path.join(directory, "cpu.cfs_period_us")) as f:
                period = f.read().strip()
        microseconds, per = int(quota), int(period)
    except (OSError, ValueError):  # no such file, or "max"
        return None
    return microseconds / per if microseconds > 0 and per > 0 else None


class BusyPollSelector(selectors.DefaultSelector):  # type: ignore[misc,valid-type]
    """The platform's default selector, polling for up to ``budget`` seconds before it
    sleeps while nearly all recent waits have been that short and a CPU is spare."""

    def __init__(self, budget: float = BUDGET) -> None:
        if not budget >= 0:
            raise ValueError(f"the busy-poll budget must be >= 0 seconds, got {budget!r}")
        super().__init__()
        self.budget = budget
        self.short_share = 0.0  # running share of waits that ended within the budget
        self.busy_share = 0.0  # running share of readings with more tasks runnable than CPUs
        self.polls = 0  # waits that started by polling
        self.threads_at_work = 0  # the loop's work in threads, which needs the GIL (no polls)
        self.cpus = usable_cpus()
        try:
            self._loadavg: int | None = os.open("/proc/loadavg", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            self._loadavg = None

    @property
    def polling(self) -> bool:
        """Whether the waits have been short enough to poll (when a CPU is spare)."""
        return self.short_share > _POLL_FROM

    def cpu_spare(self) -> bool:
        """Reads the runnable tasks: whether most recent readings found a CPU spare."""
        if self._loadavg is None:
            return False
        running = int(os.pread(self._loadavg, 64, 0).split()[3].partition(b"/")[0])
        self.busy_share += ((1.0 if running > self.cpus else 0.0) - self.busy_share) * _LEARN
        return self.busy_share < 0.5

    def select(self, timeout: float | None = None) -> list[tuple[Any, int]]:
        budget = self.budget
        if (timeout is not None and timeout <= 0) or not budget:
            return super().select(timeout)
        start = time.perf_counter()
        if self.short_share > _POLL_FROM and not self.threads_at_work and self.cpu_spare():
            self.polls += 1
            end = start + (budget if timeout is None else min(budget, timeout))
            while True:
                ready = super().select(0)
                if ready:
                    self._learn(True)
                    return ready
                now = time.perf_counter()
                if now >= end:
                    break
            if timeout is not None:
                if timeout <= budget:
                    return []  # a timer is due: that says nothing about the waits
                timeout -= now - start
            ready = super().select(timeout)
            self._learn(False)
            return ready
        ready = super().select(timeout)
        if ready or timeout is None or timeout > budget:
            self._learn(time.perf_counter() - start <= budget)
        return ready

    def _learn(self, short: bool) -> None:
        self.short_share += ((1.0 if short else 0.0) - self.short_share) * _LEARN

    def close(self) -> None:
        super().close()
        if self._loadavg is not None:
            os.close(self._loadavg)
            self._loadavg = None


class BusyPollLoop(asyncio.SelectorEventLoop):
    """An asyncio loop on a :class:`BusyPollSelector` that does not poll while work it
    handed to threads is running."""

    def __init__(self, budget: float = BUDGET) -> None:
        self.busy_poll = BusyPollSelector(budget)
        super().__init__(self.busy_poll)

    def run_in_executor(self, executor: Any, func: Any, *args: Any) -> asyncio.Future[Any]:
        future = super().run_in_executor(executor, func, *args)
        self.busy_poll.threads_at_work += 1
        future.add_done_callback(self._thread_done)
        return future

    def _thread_done(self, _: asyncio.Future[Any]) -> None:
        self.busy_poll.threads_at_work -= 1


def new_event_loop(budget: float = BUDGET) -> asyncio.AbstractEventLoop:
    """A :class:`BusyPollLoop` (a plain asyncio loop when ``budget`` is 0)."""
    if not budget:
        return asyncio.new_event_loop()
    return BusyPollLoop(budget)


def run(main: Coroutine[Any, Any, T], budget: float = BUDGET) -> T:
    """:func:`asyncio.run` on a busy-polling loop (Python 3.11 and later; a plain loop on
    3.10, whose ``asyncio.run`` takes no loop factory)."""
    if sys.version_info < (3, 11) or not budget:
        return asyncio.run(main)
    with asyncio.Runner(loop_factory=lambda: new_event_loop(budget)) as runner:
        return runner.run(main)
