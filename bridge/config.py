"""Settings of a pool of workers (one named pool) and their validation."""

from __future__ import annotations

import os
import re
import sys
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


SPAWNS = ("fork", "exec")


def fork_supported() -> bool:
    """Forking workers from a zygote needs fork and pidfds (Linux >= 5.3)."""
    return sys.platform.startswith("linux") and hasattr(os, "fork") and hasattr(os, "pidfd_open")


def default_spawn() -> str:
    """``KERNELPIT_SPAWN`` when set (so a test suite can run both ways), else "fork" where
    :func:`fork_supported`, else "exec".  Fork replaces workers ~6x faster than exec and
    halves their memory (docs/performance.md, S4)."""
    return os.environ.get("KERNELPIT_SPAWN", "").strip().lower() or (
        "fork" if fork_supported() else "exec")


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
    shm_arena        bytes of shared memory kept for reuse once received values are dropped
                     (their pages are rewritten instead of allocated again; 0: free at once)
    pickle           let objects of other types travel pickled (unpickling runs code: enable it
                     only for code you trust)
    spawn         "fork": workers are forked from a per-pool zygote that has imported the
                  kernel and the adapters once (fast starts, shared memory); "exec": each
                  worker is a fresh ``python -m kernelpit.kernels``.  Default: $KERNELPIT_SPAWN,
                  else "fork" where supported (Linux >= 5.3), else "exec".  Fork needs Linux; pools with ``python``, ``kernelspec`` or a
                  provisioner (``placement="ray"`` among them) always exec.
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
    shm_arena: int | str = 2 << 30
    pickle: bool = False
    spawn: str = field(default_factory=default_spawn)
    placement: str = "local"
    resources: dict[str, float] = field(default_factory=dict)
    provisioner: str | None = None
    provisioner_config: dict[str, Any] = field(default_factory=dict)

    @property
    def forks(self) -> bool:
        """True when this pool's workers are forked from a zygote: asked for, supported,
        and the workers run this very Python on this machine (no ``python``, no kernelspec,
        no provisioner: a Ray node's kernel is started by its host actor)."""
        return (self.spawn == "fork" and fork_supported() and not self.python
                and not self.kernelspec and self.provisioner is None)

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
        if self.spawn not in SPAWNS:
            raise ValueError(f"spawn must be 'fork' or 'exec', got {self.spawn!r} (check "
                             f"KERNELPIT_SPAWN in the environment)")
        if self.provisioner is not None:
            self.spawn = "exec"  # the provisioner starts each kernel (issue 16): say so
        if self.spares < 0:
            raise ValueError(f"spares must be >= 0, got {self.spares!r}")
        self.max_memory = parse_size(self.max_memory)
        self.shm_threshold = parse_size(self.shm_threshold)
        self.shm_arena = parse_size(self.shm_arena)
        if self.shm_arena is None or self.shm_arena < 0:
            raise ValueError(f"shm_arena must be a size >= 0 (bytes or '2GB'), got "
                             f"{self.shm_arena!r}")
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


#: the tenant of calls that name none (an embedded pool's single user)
DEFAULT_TENANT = "default"
SCHEDULERS = ("fair", "fifo")
QUOTAS = ("quota_running", "quota_queued", "quota_sessions")


def tenant_name(tenant: str) -> str:
    """The configured name a tenant answers to: a bridge tenant is ``TOKEN`` or, for a
    token several clients share, ``TOKEN/CLIENT``; settings are looked up by ``TOKEN``."""
    return tenant.partition("/")[0]


@dataclass(frozen=True)
class TenantSettings:
    """One tenant's share and limits; None: unset (the default applies, else no limit).

    weight          its share of busy workers against other waiting tenants (default 1)
    quota_running   calls it may run at once in a pool; more wait in the queue
    quota_queued    calls it may have waiting in a pool; more fail at once with QueueFull
    quota_sessions  sessions it may hold open in a pool; more fail with QueueFull
    """

    weight: float | None = None
    quota_running: int | None = None
    quota_queued: int | None = None
    quota_sessions: int | None = None

    def __post_init__(self) -> None:
        w = self.weight
        if w is not None and (isinstance(w, bool) or not isinstance(w, (int, float)) or not w > 0):
            raise ValueError(f"a tenant weight must be a number > 0, got {w!r}")
        for name in QUOTAS:
            value, least = getattr(self, name), 1 if name == "quota_running" else 0
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < least):
                raise ValueError(f"{name} must be an integer >= {least} (or unset: no limit), "
                                 f"got {value!r}")

    def over(self, default: "TenantSettings") -> "TenantSettings":
        """These settings, with ``default``'s where these are unset."""
        return TenantSettings(*(getattr(default, f.name) if getattr(self, f.name) is None
                                else getattr(self, f.name) for f in fields(self)))


@dataclass(frozen=True)
class SchedulerConfig:
    """How the tenants (users) of a pool share its workers (docs/architecture.md, "The
    scheduler").

    scheduler   "fair": weighted fair queuing between tenants; "fifo": one queue in arrival
                order (no weights, no priorities), as before tenants existed
    default     the settings of every tenant (weight, quotas) not named in ``tenants``
    tenants     settings by tenant (token) name, over ``default``

    The defaults (weight 1, no quotas) keep a single user's behaviour: one tenant, its
    calls in arrival order, priority first.
    """

    scheduler: str = "fair"
    default: TenantSettings = field(default_factory=TenantSettings)
    tenants: dict[str, TenantSettings] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.scheduler not in SCHEDULERS:
            raise ValueError(f"scheduler must be one of {', '.join(SCHEDULERS)}, "
                             f"got {self.scheduler!r}")

    def settings(self, tenant: str) -> TenantSettings:
        """The effective settings of ``tenant`` (its name's, over the defaults, weight 1)."""
        own = self.tenants.get(tenant_name(tenant))
        merged = self.default if own is None else own.over(self.default)
        return merged if merged.weight is not None else \
            TenantSettings(1.0, merged.quota_running, merged.quota_queued, merged.quota_sessions)

    @property
    def limits_running(self) -> bool:
        return any(s.quota_running is not None for s in (self.default, *self.tenants.values()))

    def with_flags(self, scheduler: str | None = None, weights: list[str] = (),  # type: ignore[assignment]
                   **quotas: list[str]) -> "SchedulerConfig":
        """These settings with ``kernelpit serve``'s flags applied: ``weights`` as
        ``NAME=W``, each quota (``quota_running=[...]``...) as ``N`` (the default) or
        ``NAME=N``.  Raises ValueError saying which flag is wrong."""
        default, named = self.default, dict(self.tenants)

        def put(name: str | None, key: str, value: Any) -> None:
            nonlocal default
            if name is None:
                default = TenantSettings(**{**default.__dict__, key: value})
            else:
                own = named.get(name, TenantSettings())
                named[name] = TenantSettings(**{**own.__dict__, key: value})

        for item in weights:
            name, sep, text = item.partition("=")
            try:
                if not sep or not name:
                    raise ValueError
                put(name, "weight", float(text))
            except ValueError:
                raise ValueError(f"--tenant-weight {item!r}: write NAME=W, a token name and a "
                                 "weight > 0 (e.g. --tenant-weight ci=0.5)") from None
        for key, items in quotas.items():
            for item in items:
                name, sep, text = item.rpartition("=")
                try:
                    put(name if sep else None, key, int(text))
                except ValueError as exc:
                    flag = "--" + key.replace("_", "-")
                    raise ValueError(f"{flag} {item!r}: write N (every tenant) or NAME=N (one "
                                     f"token name), N an integer >= 0 ({exc})") from None
        return SchedulerConfig(scheduler or self.scheduler, default, named)

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> "SchedulerConfig":
        """From a ``[scheduler]`` table: ``scheduler``, ``weight`` and the quotas as defaults,
        and ``[scheduler.tenants.NAME]`` tables with the same keys for one token name."""
        own = {f.name for f in fields(TenantSettings)}
        unknown = set(data) - own - {"scheduler", "tenants"}
        if unknown:
            raise ValueError(f"unknown [scheduler] setting(s) {', '.join(sorted(unknown))}; "
                             f"known: {', '.join(sorted(own | {'scheduler', 'tenants'}))}")
        tenants = data.get("tenants", {})
        if not isinstance(tenants, dict) or not all(isinstance(v, dict) for v in tenants.values()):
            raise ValueError("[scheduler.tenants] must hold tables like [scheduler.tenants.ci]")
        named = {}
        for name, spec in tenants.items():
            bad = set(spec) - own
            if bad:
                raise ValueError(f"[scheduler.tenants.{name}]: unknown setting(s) "
                                 f"{', '.join(sorted(bad))}; known: {', '.join(sorted(own))}")
            try:
                named[name] = TenantSettings(**spec)
            except ValueError as exc:
                raise ValueError(f"[scheduler.tenants.{name}]: {exc}") from None
        return cls(scheduler=data.get("scheduler", "fair"),
                   default=TenantSettings(**{k: v for k, v in data.items() if k in own}),
                   tenants=named)
