"""The crash barrier: why a worker died, in words; whether the tool may have caused it; and
which tools keep killing workers.

Everything here is pure (no kernels, no event loop), so the barrier's decisions are unit
tested in milliseconds (tests/test_pool_unit.py).
"""

from __future__ import annotations

import signal
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import psutil


def _fmt_bytes(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000 or unit == "TB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000  # type: ignore[assignment]
    return f"{n} B"


def _cgroup_dir() -> Path | None:
    try:
        for line in Path("/proc/self/cgroup").read_text().splitlines():
            if line.startswith("0::"):
                return Path("/sys/fs/cgroup") / line[3:].lstrip("/")
    except OSError:
        pass
    return None


def oom_kills() -> int | None:
    """The cgroup's count of OOM kills so far (cgroup v2), or None where unknown."""
    d = _cgroup_dir()
    if d is None:
        return None
    for path in (d / "memory.events", Path("/sys/fs/cgroup/memory.events")):
        try:
            for line in path.read_text().splitlines():
                if line.startswith("oom_kill "):
                    return int(line.split()[1])
        except OSError:
            continue
    return None


def memory_limit() -> int:
    """The memory this process tree may use: the cgroup limit, else physical memory."""
    d = _cgroup_dir()
    if d is not None:
        try:
            text = (d / "memory.max").read_text().strip()
            if text != "max":
                return int(text)
        except OSError:
            pass
    return psutil.virtual_memory().total


# Signals a process raises against itself (a fault in its own code): the tool may be to blame.
SELF_INFLICTED = {
    signal.SIGSEGV: "segfault",
    signal.SIGABRT: "abort",
    signal.SIGBUS: "bus_error",
    signal.SIGFPE: "fpe",
    signal.SIGILL: "illegal_instruction",
}
# Reasons of deaths the running tool may have caused: the taint rule, in the classifier's terms.
TOOL_MAY_CAUSE = frozenset({*SELF_INFLICTED.values(), "oom", "exit"})


@dataclass
class Death:
    """How a worker process ended."""

    # segfault | abort | bus_error | fpe | illegal_instruction | oom | killed | terminated |
    # signal | exit | node_lost | actor_lost (a Ray-placed kernel's node or host actor is gone)
    reason: str
    returncode: int | None
    signal: str | None
    rss: int             # last RSS seen, bytes (0 when never sampled)
    detail: str = ""     # what Ray reported, for node_lost and actor_lost

    def describe(self) -> str:
        words = {
            "segfault": "crashed with a segmentation fault (SIGSEGV)",
            "abort": "aborted (SIGABRT)",
            "bus_error": "crashed with a bus error (SIGBUS)",
            "fpe": "crashed with a floating-point exception (SIGFPE)",
            "illegal_instruction": "crashed on an illegal instruction (SIGILL)",
            "oom": "was killed by the OOM killer",
            "killed": "was killed (SIGKILL)",
            "terminated": "was terminated (SIGTERM)",
            "signal": f"was killed by {self.signal}",
            "exit": f"exited with code {self.returncode}",
            "node_lost": f"was lost with its Ray node ({self.detail})",
            "actor_lost": f"was lost with its Ray host actor ({self.detail})",
        }
        if self.reason == "exit" and self.returncode is None:
            return "exited"
        return words.get(self.reason, "exited")

    @property
    def from_outside(self) -> bool:
        """Killed by a signal another process sent: SIGKILL not attributed to the OOM killer,
        SIGTERM, or a signal a process does not raise against itself."""
        return self.reason in ("killed", "terminated", "signal", "node_lost", "actor_lost")


def lost(detail: str, rss: int) -> Death:
    """A Ray-placed kernel that went with its node or its host actor (``detail``: Ray's words);
    never the tool's fault."""
    reason = "node_lost" if "node" in detail.lower() else "actor_lost"
    return Death(reason, -signal.SIGKILL, "SIGKILL", rss, detail)


def classify(returncode: int | None, rss: int, oom_before: int | None,
             oom_now: Callable[[], int | None] = oom_kills,
             limit: Callable[[], int] = memory_limit) -> Death:
    """Name a worker's death from its return code, last RSS and the cgroup's OOM counter
    (``oom_before``: the counter when the worker started; ``oom_now`` and ``limit`` read the
    counter and the memory limit now)."""
    if returncode is None or returncode >= 0:
        return Death("exit", returncode, None, rss)
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum in SELF_INFLICTED:
        reason = SELF_INFLICTED[signal.Signals(signum)]
    elif signum == signal.SIGKILL:
        now = oom_now()
        by_counter = now is not None and oom_before is not None and now > oom_before
        by_memory = rss > 0 and rss >= 0.9 * limit()
        reason = "oom" if by_counter or by_memory else "killed"
    elif signum == signal.SIGTERM:
        reason = "terminated"
    else:
        reason = "signal"
    return Death(reason, returncode, name, rss)


def counts_toward_taint(death: Death, killed_by_pool: bool) -> bool:
    """True when the tool a worker was running may have caused its ``death``, so that the
    death counts toward quarantining the tool.

    Counted: a signal the process raised itself (SIGSEGV, SIGABRT, SIGBUS, SIGFPE, SIGILL),
    the kernel exiting on its own (a known exit status), and a SIGKILL the classifier
    attributes to the OOM killer.  Never counted: any other SIGKILL or SIGTERM (someone else
    sent it), other signals, and every kill the pool made itself (cancel grace, unhealthy,
    restart, recycle).
    """
    if killed_by_pool:
        return False
    if death.reason == "exit":
        return death.returncode is not None
    return death.reason in TOOL_MAY_CAUSE


def start_failure_backs_off(death: Death | None, killed_by_pool: bool) -> bool:
    """True when a worker that failed to start should delay the next start attempt.

    A kernel killed from outside (or by the pool) while it started says nothing about the
    next start, so the refill goes on at once.  An import error or exit on its own, an OOM
    kill, or a start timeout (no death: ``None``) would fail the same way again: back off.
    """
    if death is None:
        return True
    return not (killed_by_pool or death.from_outside)


def should_retry(idempotent: bool, pinned: bool, attempts: int, retries: int) -> bool:
    """True when a call whose worker died may be resubmitted to another worker: it is
    idempotent, not bound to that worker (a session or a pin), and has retries left."""
    return idempotent and not pinned and attempts < retries


def crash_message(worker_id: int, death: Death, activity: str) -> str:
    """"worker 3 was killed by the OOM killer while running train(); RSS was 3.9 GB"."""
    text = f"worker {worker_id} {death.describe()} {activity}"
    if death.rss:
        text += f"; RSS was {_fmt_bytes(death.rss)}"
    return text


class TaintTracker:
    """Counts, per tool, the worker deaths it may have caused; a tool with ``threshold`` of
    them within ``window`` seconds is quarantined for ``period`` seconds.

    ``clock`` gives monotonic seconds (a parameter so that tests need not wait).
    """

    def __init__(self, threshold: int = 3, window: float = 60.0, period: float = 60.0,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self.threshold = threshold
        self.window = window
        self.period = period
        self._clock = clock
        self._crashes: dict[str, deque[float]] = defaultdict(deque)
        self._until: dict[str, float] = {}

    def record(self, tool: str) -> bool:
        """Note a crash while running ``tool``; True when that taints the tool."""
        now = self._clock()
        times = self._crashes[tool]
        times.append(now)
        while times and now - times[0] > self.window:
            times.popleft()
        if len(times) >= self.threshold and tool not in self._until:
            self._until[tool] = now + self.period
            return True
        return False

    def tainted(self, tool: str) -> float | None:
        """Seconds left in ``tool``'s quarantine, or None."""
        until = self._until.get(tool)
        if until is None:
            return None
        left = until - self._clock()
        if left <= 0:
            del self._until[tool]
            self._crashes.pop(tool, None)
            return None
        return left

    def untaint(self, tool: str) -> bool:
        """Lift ``tool``'s quarantine now and forget its crashes; True when it was quarantined."""
        self._crashes.pop(tool, None)
        return self._until.pop(tool, None) is not None

    def count(self, tool: str) -> int:
        return len(self._crashes.get(tool, ()))
