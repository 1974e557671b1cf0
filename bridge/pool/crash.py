"""The crash barrier: why a worker died, in words, and which tools keep killing workers."""

from __future__ import annotations

import signal
import time
from collections import defaultdict, deque
from dataclasses import dataclass
from pathlib import Path

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


@dataclass
class Death:
    """How a worker process ended."""

    reason: str          # segfault | abort | oom | killed | terminated | signal | exit
    returncode: int | None
    signal: str | None
    rss: int             # last RSS seen, bytes (0 when never sampled)

    def describe(self) -> str:
        words = {
            "segfault": "crashed with a segmentation fault (SIGSEGV)",
            "abort": "aborted (SIGABRT)",
            "oom": "was killed by the OOM killer",
            "killed": "was killed (SIGKILL)",
            "terminated": "was terminated (SIGTERM)",
            "signal": f"was killed by {self.signal}",
            "exit": f"exited with code {self.returncode}",
        }
        return words.get(self.reason, "exited")


def classify(returncode: int | None, rss: int, oom_before: int | None) -> Death:
    """Name a worker's death from its return code, last RSS and the cgroup's OOM counter."""
    if returncode is None or returncode >= 0:
        return Death("exit", returncode, None, rss)
    signum = -returncode
    try:
        name = signal.Signals(signum).name
    except ValueError:
        name = f"signal {signum}"
    if signum == signal.SIGSEGV:
        reason = "segfault"
    elif signum == signal.SIGABRT:
        reason = "abort"
    elif signum == signal.SIGKILL:
        now = oom_kills()
        by_counter = now is not None and oom_before is not None and now > oom_before
        by_memory = rss > 0 and rss >= 0.9 * memory_limit()
        reason = "oom" if by_counter or by_memory else "killed"
    elif signum == signal.SIGTERM:
        reason = "terminated"
    else:
        reason = "signal"
    return Death(reason, returncode, name, rss)


def crash_message(worker_id: int, death: Death, activity: str) -> str:
    """"worker 3 was killed by the OOM killer while running train(); RSS was 3.9 GB"."""
    text = f"worker {worker_id} {death.describe()} {activity}"
    if death.rss:
        text += f"; RSS was {_fmt_bytes(death.rss)}"
    return text


class TaintTracker:
    """Counts worker crashes per tool; a tool that keeps crashing workers is quarantined."""

    def __init__(self, threshold: int = 3, window: float = 60.0, period: float = 60.0) -> None:
        self.threshold = threshold
        self.window = window
        self.period = period
        self._crashes: dict[str, deque[float]] = defaultdict(deque)
        self._until: dict[str, float] = {}

    def record(self, tool: str) -> bool:
        """Note a crash while running ``tool``; True when that taints the tool."""
        now = time.monotonic()
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
        left = until - time.monotonic()
        if left <= 0:
            del self._until[tool]
            self._crashes.pop(tool, None)
            return None
        return left

    def count(self, tool: str) -> int:
        return len(self._crashes.get(tool, ()))
