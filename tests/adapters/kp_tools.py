"""Tools used by the core tests."""

import os
import sys
import time

from IPython.display import HTML, display

from kernelpit.kernels import progress, session_state, tool


class CustomError(Exception):
    pass


@tool
def add(a: int, b: int = 0) -> int:
    """Add two integers."""
    return a + b


@tool(name="echo")
def echo_value(value=None, *, blob: bytes = b""):
    """Return what it was given."""
    return {"value": value, "blob": blob}


@tool
def same(value=None):
    """Return its argument itself."""
    return value


@tool
def steps(n: int = 5):
    """Progress, stdout, stderr, then a result."""
    for i in range(n):
        print(f"line {i}")
        progress(i + 1, n, f"step {i + 1}")
    print("warning!", file=sys.stderr)
    return n


@tool
def flood(n: int = 20_000, every: int = 100, done_file: str = "") -> int:
    """Progress as fast as it can, with the line ``line <i>`` printed after every ``every``-th
    progress; touches ``done_file`` once all of it is emitted."""
    for i in range(1, n + 1):
        progress(i, n)
        if i % every == 0:
            print(f"line {i}")
    if done_file:
        with open(done_file, "w") as f:
            f.write("done")
    return n


@tool
def gen(n: int):
    """Yield 0..n-1, return 'done'."""
    for i in range(n):
        yield i * i
    return "done"


@tool
def show(html: str = "<b>hi</b>"):
    """Display HTML."""
    display(HTML(html))
    return "shown"


@tool
def raise_key(key: str = "missing"):
    return {}[key]


@tool
def raise_custom(msg: str = "boom"):
    raise CustomError(msg)


@tool
def spin(seconds: float = 60.0) -> int:
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@tool
def sleep(seconds: float = 1.0) -> float:
    time.sleep(seconds)
    return seconds


@tool
def c_sleep_uninterruptible(seconds: float = 60.0) -> None:
    """Block in C (not interruptible by the async exception)."""
    import threading
    ev = threading.Event()
    ev.wait(seconds)


@tool
def pid() -> int:
    return os.getpid()


@tool
def remember(key: str, value=None):
    """Session state: store value if given, return what is stored."""
    state = session_state()
    if value is not None:
        state[key] = value
    return state.get(key)


@tool
def bump() -> int:
    """Module-global counter (visible from cells in the kernel)."""
    global COUNTER
    COUNTER = globals().get("COUNTER", 0) + 1
    return COUNTER


@tool
def not_serializable():
    return {1, 2, 3}


@tool
def float_columns(rows: int, cols: int = 3, partials: int = 0, then_unsendable: bool = False):
    """Yield ``partials`` tables of ``cols`` float columns, then return one (column j holds
    i * 0.5 + j); with ``then_unsendable``, the returned table also holds a set, after the
    columns."""
    table = {f"c{j}": [i * 0.5 + j for i in range(rows)] for j in range(cols)}
    for k in range(partials):
        yield {"k": k, **table}
    if then_unsendable:
        table["z"] = {1, 2}
    return table


class SlowToPickle:
    """An object that takes ``seconds`` to pickle (in short sleeps, so that a cancel can
    interrupt it)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds

    def __reduce__(self):
        end = time.monotonic() + self.seconds
        while time.monotonic() < end:
            time.sleep(0.01)
        return (SlowToPickle, (0,))


@tool
def column_then_slow(rows: int, seconds: float):
    """A float column, which goes ahead of the result, then an object that takes
    ``seconds`` to send (from a pool with ``pickle=True``): a result that streams for long."""
    return {"c0": [i * 0.5 for i in range(rows)], "slow": SlowToPickle(seconds)}


@tool(thread_safe=True)
def ts_sleep(seconds: float = 0.3) -> float:
    time.sleep(seconds)
    return seconds


_MEETINGS = {}


@tool(thread_safe=True)
def ts_meet(name: str, parties: int = 2, timeout: float = 30.0) -> str:
    """Wait until ``parties`` calls of the same ``name`` are all running in this worker at once;
    returns the thread it ran on (a BrokenBarrierError if they never overlap)."""
    import threading
    barrier = _MEETINGS.setdefault(name, threading.Barrier(parties))
    barrier.wait(timeout)
    return threading.current_thread().name


_HOARD = []


@tool
def leak(mb: int = 5) -> int:
    """Keep ``mb`` more megabytes alive in this worker; return how many are held."""
    _HOARD.append(bytearray(mb * 1_000_000))
    return len(_HOARD) * mb


@tool
def crash_once(marker: str) -> str:
    """Kill this worker the first time (creating ``marker``); succeed afterwards."""
    import signal
    if not os.path.exists(marker):
        open(marker, "w").close()
        os.kill(os.getpid(), signal.SIGKILL)
    return "ok"


@tool(idempotent=True)
def crash_once_idempotent(marker: str) -> str:
    return crash_once(marker)


@tool
def segfault() -> None:
    import ctypes
    ctypes.string_at(0)


@tool
def abort() -> None:
    os.abort()


@tool
def freeze() -> None:
    """Stop this whole worker process (SIGSTOP): it answers nothing any more.

    Stops again should anything continue it, so the worker stays frozen.
    """
    import signal
    while True:
        os.kill(os.getpid(), signal.SIGSTOP)


@tool
def wait_file(path: str, timeout: float = 60.0) -> str:
    """Block until ``path`` exists (the test decides when this call ends)."""
    end = time.monotonic() + timeout
    while not os.path.exists(path):
        if time.monotonic() > end:
            raise TimeoutError(f"{path} did not appear")
        time.sleep(0.005)
    return "released"
