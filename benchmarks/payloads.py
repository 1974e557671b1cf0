"""Payload builders shared by the Kernelpit tools and the peers' task functions.

Importable without Kernelpit (Dask and ipyparallel workers import it too).
Results are cached per process and size, so a timed call moves an existing
object instead of building it.
"""

from __future__ import annotations

import os

_cache: dict[tuple[str, int], object] = {}

COLUMNS = 4


def make_bytes(nbytes: int) -> bytes:
    key = ("bytes", nbytes)
    if key not in _cache:
        _cache.clear()
        _cache[key] = os.urandom(min(nbytes, 1 << 16)) * (nbytes >> 16) + os.urandom(nbytes & 0xFFFF)
    return _cache[key]  # type: ignore[return-value]


def make_table(nbytes: int) -> dict:
    """``{"c0": [floats], ...}``: ``nbytes`` of float64 values as the raw data size."""
    key = ("table", nbytes)
    if key not in _cache:
        _cache.clear()
        rows = max(1, nbytes // (8 * COLUMNS))
        _cache[key] = {f"c{j}": [i * 0.5 + j + 0.25 for i in range(rows)] for j in range(COLUMNS)}
    return _cache[key]  # type: ignore[return-value]


def make_arrow(nbytes: int):
    """A ``pyarrow.Table`` of 4 float64 columns holding ``nbytes`` of data (built from NumPy)."""
    key = ("arrow", nbytes)
    if key not in _cache:
        import numpy as np
        import pyarrow as pa
        _cache.clear()
        rows = max(1, nbytes // (8 * COLUMNS))
        _cache[key] = pa.table({f"c{j}": np.arange(rows, dtype=np.float64) * 0.5 + j
                                for j in range(COLUMNS)})
    return _cache[key]


def arrow_nbytes(table) -> int:
    return table.num_rows * 8 * COLUMNS if hasattr(table, "num_rows") else -1


def clear() -> int:
    n = len(_cache)
    _cache.clear()
    return n


def table_nbytes(table: dict) -> int:
    return sum(len(col) for col in table.values()) * 8
