"""Settings of a pool of workers (one named pool) and their validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, fields
from typing import Any

RAY_PROVISIONER = "kernelpit-ray-provisioner"
PLACEMENTS = ("local", "ray")

_UNITS = {"": 1, "b": 1, "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9,
          "gb": 10**9, "t": 10**12, "tb": 10**12, "kib": 2**10, "mib": 2**20, "gib": 2**30,
          "tib": 2**40}


def parse_size(value: int | float | str | None) -> int | None:
    """``2GB`` / ``512MiB`` / ``1_000_000`` -> bytes; None stays None."""
    if value is None or isinstance(value, (int, float)) and not isinstance(value, bool):
        return None if value is None else int(value)
    m = re.fullmatch(r"\s*([\d_.]+)\s*([a-zA-Z]*)\s*", str(value))
    if not m or m.group(2).lower() not in _UNITS:
        raise ValueError(f"cannot read {value!r} as a size; write bytes or e.g. '512MB', '2GiB'")
    return int(float(m.group(1).replace("_", "")) * _UNITS[m.group(2).lower()])


@dataclass
class PoolConfig:
    """One named pool: which kernels to start and how to use them.

    adapters      dotted module names imported in each worker; their @tool functions are served
    workers       number of worker kernels
    kernelspec    an installed ipykernel kernelspec to launch (default: this Python)
    python        a Python executable to launch workers with (kernelpit must be installed there)
    env           extra environment variables for the workers
    cwd           working directory of the workers (default: the caller's)
    path          extra directories put in front of the workers' sys.path
    concurrency   threads per worker; >1 runs tools marked thread_safe side by side
    queue_size    calls that may wait for a free worker before QueueFull
    start_timeout seconds a worker may take to become ready
    cancel_grace  seconds a cancelled tool may take to stop before its worker is restarted
    max_calls     recycle a worker after this many calls
    max_age       recycle a worker after this many seconds
    max_memory    recycle a worker above this RSS (bytes or "2GB")
    spares        pre-started kernels kept ready to replace crashed or recycled workers
    thread_limits cap OMP/OpenBLAS/MKL/NumExpr threads to 1 in workers (env overrides win)
    retries       times an idempotent call is retried on a fresh worker after a crash
    retry_backoff seconds before the first retry (doubles each time)
    health_interval  seconds between health checks (heartbeat, ping, RSS, age)
    health_timeout   seconds without an answer before a worker is unhealthy and replaced
    taint_threshold  crashes of workers running one tool, within taint_window seconds,
                     that quarantine the tool for taint_period seconds
    shm_threshold    values (Arrow tables, arrays) at least this big go through shared memory
                     by reference instead of inline (bytes or "1MB")
    pickle           let objects of other types travel pickled (unpickling runs code: enable it
                     only for code you trust)
    placement     "local" (this machine) or "ray" (nodes of a Ray cluster: shorthand for
                  provisioner="kernelpit-ray-provisioner"; docs/scale-out.md)
    resources     Ray resources per worker, e.g. {"CPU": 1, "GPU": 1, "my_label": 1}
    provisioner   a jupyter_client kernel provisioner (entry point name) that launches the
                  workers; its kernels must run ipykernel (the agent is swapped in)
    provisioner_config  that provisioner's settings (the kernelspec's provisioner "config")
    """

    name: str = "default"
    adapters: list[str] = field(default_factory=list)
    workers: int = 2
    kernelspec: str | None = None
    python: str | None = None
    env: dict[str, str] = field(default_factory=dict)
    cwd: str | None = None
    path: list[str] = field(default_factory=list)
    concurrency: int = 1
    queue_size: int = 10_000
    start_timeout: float = 60.0
    cancel_grace: float = 5.0
    max_calls: int | None = None
    max_age: float | None = None
    max_memory: int | str | None = None
    spares: int = 0
    thread_limits: bool = True
    retries: int = 2
    retry_backoff: float = 0.1
    health_interval: float = 1.0
    health_timeout: float = 10.0
    taint_threshold: int = 3
    taint_window: float = 60.0
    taint_period: float = 60.0
    shm_threshold: int | str = 1 << 20
    pickle: bool = False
    placement: str = "local"
    resources: dict[str, float] = field(default_factory=dict)
    provisioner: str | None = None
    provisioner_config: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self._check_placement()
        if isinstance(self.adapters, str):
            self.adapters = [self.adapters]
        self.adapters = list(self.adapters)
        for name in self.adapters:
            if not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][\w]*(\.[A-Za-z_]\w*)*", name):
                raise ValueError(f"adapter {name!r} is not a dotted module name like 'mypkg.tools'")
        if not isinstance(self.workers, int) or self.workers < 1:
            raise ValueError(f"workers must be a positive integer, got {self.workers!r}")
        if not isinstance(self.concurrency, int) or self.concurrency < 1:
            raise ValueError(f"concurrency must be a positive integer, got {self.concurrency!r}")
        if self.queue_size < 0:
            raise ValueError(f"queue_size must be >= 0, got {self.queue_size!r}")
        if self.kernelspec and self.python:
            raise ValueError("give either kernelspec or python, not both")
        if self.spares < 0:
            raise ValueError(f"spares must be >= 0, got {self.spares!r}")
        self.max_memory = parse_size(self.max_memory)
        self.shm_threshold = parse_size(self.shm_threshold)
        for name in ("max_calls", "max_age", "max_memory"):
            value = getattr(self, name)
            if value is not None and value <= 0:
                raise ValueError(f"{name} must be positive (or None to disable), got {value!r}")
        if self.health_interval <= 0 or self.health_timeout <= 0:
            raise ValueError("health_interval and health_timeout must be positive")
        self.env = {str(k): str(v) for k, v in self.env.items()}
        self.path = [str(p) for p in self.path]

    def _check_placement(self) -> None:
        if self.placement not in PLACEMENTS:
            raise ValueError(f"placement must be one of {', '.join(PLACEMENTS)}, got "
                             f"{self.placement!r}")
        if self.placement == "ray":
            if self.provisioner not in (None, RAY_PROVISIONER):
                raise ValueError(f"placement='ray' is provisioner={RAY_PROVISIONER!r}; give "
                                 f"one of placement and provisioner, not both")
            self.provisioner = RAY_PROVISIONER
        elif self.provisioner == RAY_PROVISIONER:
            self.placement = "ray"
        if not isinstance(self.resources, dict) or not all(
                isinstance(k, str) and isinstance(v, (int, float)) and not isinstance(v, bool)
                and v >= 0 for k, v in self.resources.items()):
            raise ValueError(f"resources must map resource names to numbers >= 0, e.g. "
                             f'{{"CPU": 1, "my_label": 1}}, got {self.resources!r}')
        if self.resources and self.placement != "ray":
            raise ValueError("resources are Ray resources: they need placement='ray'")
        if self.provisioner is not None and not isinstance(self.provisioner, str):
            raise ValueError(f"provisioner must be a provisioner's name, got {self.provisioner!r}")
        self.provisioner_config = dict(self.provisioner_config or {})

    @classmethod
    def from_dict(cls, name: str, data: dict[str, Any]) -> "PoolConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"pool '{name}': unknown setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(known - {'name'}))}")
        return cls(name=name, **{k: v for k, v in data.items() if k != "name"})
