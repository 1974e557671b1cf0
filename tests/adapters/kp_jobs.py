"""Tools for the job tests and benchmarks."""

import time

from kernelpit.kernels import progress, tool


@tool
def ticks(n: int = 5, delay: float = 0.0) -> int:
    """n rounds of a printed line and a progress update, ``delay`` seconds apart."""
    for i in range(n):
        print(f"tick {i}")
        progress(i + 1, n, f"tick {i + 1}")
        if delay:
            time.sleep(delay)
    return n


@tool
def counted(path: str, seconds: float = 1.0) -> str:
    """Append a line to ``path`` when it starts (so a test counts runs), then work for
    ``seconds`` in short steps (interruptible), with progress."""
    with open(path, "a") as f:
        f.write("run\n")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        progress(seconds - (end - time.monotonic()), seconds)
        time.sleep(0.02)
    return "done"


@tool
def busy(seconds: float = 30.0, path: str = "") -> str:
    """Sleep in short steps (a cancel interrupts it at once); write ``path`` if it ends."""
    print("busy")
    end = time.monotonic() + seconds
    while time.monotonic() < end:
        time.sleep(0.01)
    if path:
        with open(path, "w") as f:
            f.write("finished")
    return "finished"


@tool
def flood(n: int = 1000):
    """Yield n small partial values as fast as it can."""
    for i in range(n):
        yield i
    return n


@tool
def blob(nbytes: int = 1024) -> bytes:
    """A byte string of that size."""
    return bytes(range(256)) * (nbytes // 256) + bytes(nbytes % 256)


@tool
def table(n: int = 10):
    """A pyarrow Table of n rows."""
    import pyarrow as pa

    return pa.table({"i": list(range(n)), "s": [str(i) for i in range(n)]})


@tool
def plus(a: int, b: int = 0) -> int:
    return a + b


@tool
def fails(message: str = "boom") -> None:
    raise ValueError(message)


@tool
def same(value=None):
    """Return its argument itself."""
    return value
