"""Example tools for the notebooks in this folder (the workers import it: the bridge is
started from this folder, which is on the workers' ``sys.path``)."""

from __future__ import annotations

import os
import signal
import time

from kernelpit.kernels import progress, session_state, tool

_leaked: list[bytes] = []


@tool
def fit(xs: list[float], ys: list[float], epochs: int = 20) -> dict:
    """Fit y = a*x + b by gradient descent; the model stays in the session (session_state)."""
    state = session_state()
    a, b = state.get("a", 0.0), state.get("b", 0.0)
    n = len(xs)
    for epoch in range(1, epochs + 1):
        da = sum((a * x + b - y) * x for x, y in zip(xs, ys)) * 2 / n
        db = sum((a * x + b - y) for x, y in zip(xs, ys)) * 2 / n
        a, b = a - 0.05 * da, b - 0.05 * db
        progress(epoch, epochs, f"epoch {epoch}")
        time.sleep(0.01)
    state.update(a=a, b=b, epochs=state.get("epochs", 0) + epochs)
    return {"a": round(a, 4), "b": round(b, 4), "epochs": state["epochs"]}


@tool
def predict(x: float) -> float:
    """Predict with the session's model (fit it first)."""
    state = session_state()
    if "a" not in state:
        raise LookupError("no model in this session yet: call fit first")
    return round(state["a"] * x + state["b"], 4)


@tool
def leak(mb: int = 50) -> int:
    """Keep ``mb`` MiB more alive in this worker (a leaking tool); returns MiB leaked so far."""
    _leaked.append(os.urandom(mb * 1024 * 1024))
    return sum(len(b) for b in _leaked) // (1024 * 1024)


@tool
def crash() -> None:
    """Kill this worker's kernel process (like a segfault would)."""
    os.kill(os.getpid(), signal.SIGKILL)


@tool
def plot(n: int = 5) -> int:
    """Show a rich display (an HTML table) and some output while counting to ``n``."""
    from IPython.display import HTML, display
    rows = "".join(f"<tr><td>{i}</td><td>{i * i}</td></tr>" for i in range(n))
    display(HTML(f"<table><tr><th>i</th><th>i²</th></tr>{rows}</table>"))
    for i in range(n):
        print(f"row {i}")
        progress(i + 1, n, "rows")
    return n
