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
