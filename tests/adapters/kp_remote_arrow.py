"""Tools for the Arrow-through-the-bridge tests (with kp_arrow)."""

import os
import signal

import pyarrow.compute as pc

from kernelpit.kernels import tool


@tool
def checksum(table) -> dict:
    """Rows and the sum of the first column of a table the worker received."""
    return {"rows": table.num_rows, "sum": pc.sum(table.column(0)).as_py(),
            "type": type(table).__name__}


@tool
def die_holding(table) -> None:
    """Die (SIGKILL) with a table argument in hand."""
    os.kill(os.getpid(), signal.SIGKILL)


@tool
def digest(data: bytes) -> dict:
    """Size and SHA-256 of the bytes the worker received."""
    import hashlib
    return {"size": len(data), "sha256": hashlib.sha256(data).hexdigest()}


@tool
def pattern(size: int) -> bytes:
    """``size`` bytes of a known pattern (0, 1, ..., 250, 0, 1, ...)."""
    return (bytes(range(251)) * (size // 251 + 1))[:size]
