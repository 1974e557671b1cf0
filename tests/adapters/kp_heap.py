"""Tools for the heap tests: calls that make and drop large buffers on a worker's heap."""

from kernelpit.kernels import heap, tool


@tool
def churn(mb: int) -> int:
    """Write ``mb`` MiB into blocks of 16 MiB (below the mmap threshold: on the heap), all
    alive at once, then drop them; returns how many blocks."""
    blocks = [bytearray(b"x") * (16 << 20) for _ in range(mb // 16)]
    return len(blocks)


@tool
def heap_idle(seconds: float) -> None:
    """How long this worker waits, idle, before it gives kept heap memory back."""
    heap.IDLE_SECONDS = seconds


@tool
def heap_never_idle() -> None:
    """This worker never counts as idle: it gives kept heap memory back only when asked."""
    heap.IDLE_CPU = 0.0


_held: list[bytearray] = []


@tool
def hold(mb: int) -> int:
    """Keep ``mb`` MiB alive in this worker (in use, unlike what ``churn`` leaves); returns
    how many MiB it holds in all."""
    _held.append(bytearray(b"x") * (mb << 20))
    return sum(len(b) for b in _held) >> 20
