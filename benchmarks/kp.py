"""Kernelpit under test: the embedded pool, and the remote client when the service exists."""

from __future__ import annotations

import importlib.util
import inspect
import math
from typing import Any

from .peers import ROOT

ADAPTER = "benchmarks.adapters"


def pool_settings(workers: int = 2, **extra: Any) -> dict[str, Any]:
    """Arguments for ``kernelpit.Pool`` / ``kernelpit.aio.Pool`` serving the benchmark tools."""
    return {"adapters": [ADAPTER], "workers": workers, "path": [str(ROOT)], **extra}


def chunksize_for(n_items: int, workers: int) -> int:
    """multiprocessing.Pool.map's default: about 4 chunks per worker."""
    return max(1, math.ceil(n_items / (workers * 4)))


def map_options(map_fn: Any, n_items: int, workers: int) -> dict[str, Any]:
    """``{"chunksize": k}`` when ``Pool.map`` accepts it (a batched map), else ``{}``."""
    try:
        params = inspect.signature(map_fn).parameters
    except (TypeError, ValueError):
        return {}
    if "chunksize" in params:
        return {"chunksize": chunksize_for(n_items, workers)}
    return {}


def remote_unavailable() -> str | None:
    """Why the remote (gRPC) client cannot be benchmarked in this tree, or None."""
    import kernelpit
    if not hasattr(kernelpit, "connect"):
        return "kernelpit.connect does not exist yet in this tree (gRPC service not landed)"
    if importlib.util.find_spec("kernelpit.service") is None:
        return "kernelpit.service does not exist yet in this tree"
    return None
