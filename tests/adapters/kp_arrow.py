"""Tools for the Arrow data plane tests."""

import os

import numpy as np
import pandas as pd
import psutil
import pyarrow as pa

from kernelpit.kernels import tool


@tool
def echo(value):
    return value


@tool
def numeric_table(rows: int, cols: int = 4):
    """A table of float64 columns: rows * cols * 8 bytes."""
    return pa.table({f"c{i}": np.arange(rows, dtype=np.float64) + i for i in range(cols)})


@tool
def describe(table) -> dict:
    """Read a table without touching its data; report how this worker's RSS changed."""
    return {"rows": table.num_rows, "type": type(table).__name__,
            "rss": psutil.Process().memory_info().rss}


@tool
def rss() -> int:
    return psutil.Process().memory_info().rss


@tool
def batches(n: int, rows: int = 10):
    for i in range(n):
        yield pa.record_batch({"i": pa.array(range(i * rows, (i + 1) * rows))})
    return n


@tool
def die_after_writing(rows: int):
    """Write a big result into shared memory, then die before it is received."""
    import signal
    from kernelpit.kernels import arrow, protocol
    t = pa.table({"x": np.zeros(rows)})
    transport = arrow.Transport.from_env(prefix=f"w{os.environ['KERNELPIT_WORKER']}")
    protocol.encode({"v": t}, transport)
    os.kill(os.getpid(), signal.SIGKILL)


@tool
def frame_info(df) -> dict:
    return {"type": type(df).__name__, "dtypes": {str(k): str(v) for k, v in df.dtypes.items()},
            "index": str(df.index.dtype)}


@tool
def blob(n: int, seed: int = 0) -> bytes:
    """``n`` bytes that depend on ``seed`` (a byte string result)."""
    return (seed.to_bytes(4, "little") + bytes(range(252))) * (n // 256) + bytes(n % 256)


@tool
def blob_info(data) -> dict:
    """What a byte string argument arrived as."""
    import hashlib
    return {"type": type(data).__name__, "len": len(data),
            "sha256": hashlib.sha256(data).hexdigest()}


@tool
def table_then_unsendable(rows: int):
    """A large table (written to shared memory first), then a set, which cannot be sent."""
    return {"t": numeric_table(rows), "z": {1, 2}}
