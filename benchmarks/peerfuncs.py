"""Plain task functions run by the peers (ipyparallel engines, Dask workers).

They live in an importable module so they are pickled by reference, the
cheapest way for both peers; engines/workers get the repository root on
``PYTHONPATH`` from the suite.
"""

from __future__ import annotations

import os
import time

from . import payloads


def noop() -> None:
    return None


def noop_x(x):  # Dask map needs an argument per task
    return None


def inc(x):
    return x + 1


def spin(seconds: float = 30.0) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


def payload_bytes(nbytes: int) -> bytes:
    return payloads.make_bytes(nbytes)


def payload_table(nbytes: int) -> dict:
    return payloads.make_table(nbytes)


def payload_arrow(nbytes: int):
    return payloads.make_arrow(nbytes)


def drop_payloads() -> int:
    return payloads.clear()


def getpid() -> int:
    return os.getpid()
