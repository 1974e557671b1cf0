"""The ``kernelpit serve --config FILE`` TOML file: named pools and bridge settings.

::

    [bridge]                 # optional; command-line flags win
    host = "127.0.0.1"
    port = 0
    grace = 30               # seconds in-flight calls may take to finish on shutdown
    max_message_size = "64MB"
    blob_ttl = 60            # seconds an unread large result (or unused upload) is kept
    idle_timeout = 1800      # stop after this many seconds with no calls and no client (0: never)
    tls_cert = "server.pem"  # TLS (docs/security.md), paths relative to this file; tls_client_ca
                             # for mutual TLS
    tls_key = "server.key"
    token_file = "tokens.json"
    ray_address = "auto"     # the Ray cluster of Ray-placed pools (one per process)
    store = "jobs.sqlite"    # the job store: a SQLite path (relative to this file) or a
                             # postgresql:// URL; false: no jobs (default: the Jupyter data dir)
    job_ttl = 604800         # seconds finished jobs are kept (7 days)
    blob_dir = "/shared/kp"  # PostgreSQL: large job values in files every bridge reaches
    busy_poll = 250          # microseconds the bridge's loop polls before it sleeps (0: never)

    [scheduler]              # how tenants (token names) share the workers; flags win
    scheduler = "fair"       # or "fifo"
    quota_queued = 1000      # defaults of every tenant: weight, quota_running, quota_queued,
                             # quota_sessions (unset: no limit)
    [scheduler.tenants.ci]   # one token name's own settings, over the defaults
    weight = 0.5
    quota_running = 1

    [pools.default]          # one table per named pool: the fields of PoolConfig
    adapters = ["mytools"]
    workers = 2

    [pools.gpu]
    adapters = ["mytools.gpu"]
    workers = 1
    env = { CUDA_VISIBLE_DEVICES = "0" }

    [pools.cluster]          # on the nodes of a Ray cluster (docs/scale-out.md)
    adapters = ["mytools"]
    workers = 8
    placement = "ray"
    resources = { CPU = 1, my_label = 1 }
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

from ..config import PoolConfig, SchedulerConfig

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

BRIDGE_KEYS = {"host", "port", "grace", "max_message_size", "auth", "blob_ttl", "idle_timeout",
               "tls_cert", "tls_key", "tls_client_ca", "tls_ca", "insecure_bind_anywhere",
               "token_file", "store", "job_ttl", "blob_dir", "ray_address", "local",
               "blob_lane", "busy_poll"}

PATH_KEYS = {"tls_cert", "tls_key", "tls_client_ca", "tls_ca", "token_file", "blob_dir"}


class ConfigError(ValueError):
    """The config file cannot be used; the message says where and why."""


def load(path: str | Path) -> tuple[list[PoolConfig], dict[str, Any]]:
    """(named pools, bridge settings) from a TOML file; ``[scheduler]`` is the bridge setting
    ``scheduler``, a :class:`SchedulerConfig`."""
    path = Path(path)
    try:
        data = tomllib.loads(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror or exc}") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {path} is not valid TOML: {exc}") from None
    unknown = set(data) - {"pools", "bridge", "scheduler"}
    if unknown:
        raise ConfigError(f"config file {path}: unknown table(s) {', '.join(sorted(unknown))}; "
                          "use [bridge], [scheduler] and [pools.NAME]")
    bridge = data.get("bridge", {})
    bad = set(bridge) - BRIDGE_KEYS
    if bad:
        raise ConfigError(f"config file {path}: unknown [bridge] setting(s) "
                          f"{', '.join(sorted(bad))}; known: {', '.join(sorted(BRIDGE_KEYS))}")
    for key in PATH_KEYS & set(bridge):  # relative to the config file, not the current dir
        if not isinstance(bridge[key], str):
            raise ConfigError(f"config file {path}: [bridge] {key} must be a file path (a string)")
        bridge[key] = str(path.parent / Path(bridge[key]).expanduser())
    if "scheduler" in data:
        try:
            bridge["scheduler"] = SchedulerConfig.from_dict(data["scheduler"])
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config file {path}: {exc}") from None
    store = bridge.get("store")
    if store is not None and not isinstance(store, (str, bool)):
        raise ConfigError(f"config file {path}: [bridge] store must be a path, a postgresql:// "
                          "URL, or false (no jobs)")
    if isinstance(store, str) and not store.startswith(("postgresql://", "postgres://")):
        bridge["store"] = str(path.parent / Path(store).expanduser())
    pools = data.get("pools", {})
    if not isinstance(pools, dict) or not all(isinstance(v, dict) for v in pools.values()):
        raise ConfigError(f"config file {path}: [pools] must hold tables like [pools.default]")
    configs = []
    for name, spec in pools.items():
        try:
            configs.append(PoolConfig.from_dict(name, spec))
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"config file {path}, [pools.{name}]: {exc}") from None
    return configs, bridge
