"""What runs inside worker kernels: the ``@tool`` decorator and helpers for tools.

Adapter modules import from here::

    from kernelpit.kernels import tool, progress

    @tool
    def train(epochs: int = 3) -> float:
        for i in range(epochs):
            progress(i + 1, epochs, f"epoch {i + 1}")
        return 0.93

Everything in this package imports only the standard library, so
importing an adapter outside a kernel (for unit tests of the tool itself)
costs nothing and ``progress`` is a no-op there.
"""

from .agent import CallCancelled, current_call_id, current_session_id, progress, session_state
from .registry import tool

__all__ = ["tool", "progress", "session_state", "current_call_id", "current_session_id",
           "CallCancelled"]
