"""The bundled example adapter (``kernelpit.kernels.demo``), used by ``kernelpit demo``."""

from __future__ import annotations

import time

from . import progress, tool


@tool(thread_safe=True, idempotent=True)
def add(a: float, b: float) -> float:
    """Add two numbers."""
    return a + b


@tool(thread_safe=True, idempotent=True)
def noop() -> None:
    """Do nothing; for measuring call overhead."""


@tool
def train(epochs: int = 5, seconds_per_epoch: float = 0.2) -> dict:
    """Pretend to train a model, reporting progress and a line of output per epoch."""
    loss = 1.0
    for epoch in range(1, epochs + 1):
        time.sleep(seconds_per_epoch)
        loss *= 0.6
        print(f"epoch {epoch}/{epochs}: loss={loss:.4f}")
        progress(epoch, epochs, f"epoch {epoch}")
    return {"epochs": epochs, "loss": round(loss, 6)}


@tool
def count(n: int = 10):
    """Stream the numbers 0..n-1 as partial results; return their sum."""
    total = 0
    for i in range(n):
        total += i
        yield i
    return total


@tool
def spin(seconds: float = 60.0) -> int:
    """Busy-loop in Python for up to ``seconds`` (cancel and deadline stop it)."""
    end = time.monotonic() + seconds
    n = 0
    while time.monotonic() < end:
        n += 1
    return n


@tool
def progress_flood(n: int = 10000) -> int:
    """Emit ``n`` progress events as fast as possible."""
    for i in range(n):
        progress(i + 1, n)
    return n
