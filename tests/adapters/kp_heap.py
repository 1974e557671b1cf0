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
