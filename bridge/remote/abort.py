"""Cutting a blocking read short from another thread.

The asyncio API reads a streamed result with the blocking reader, in a thread
(``RemoteBackend._streamed``).  When the task awaiting it is cancelled, that thread may be
blocked in a socket read or a gRPC stream for as long as the tool takes to send the rest.
An :class:`Abort` lets the task end it: the reader says how its read can be cut (shut its
socket down, cancel its RPC) with :meth:`Abort.on`, and :meth:`Abort.fire` cuts it, at once
or as soon as the reader says.  The bridge sees the read cut short: it frees the result
and cancels the call.
"""

from __future__ import annotations

import threading
from typing import Callable


class Abort:
    """The way to cut one reader's read short, from any thread."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._cut: Callable[[], object] | None = None
        self.fired = False

    def on(self, cut: Callable[[], object] | None) -> None:
        """``cut`` ends the read under way (None: no read is under way); called at once
        when the abort has fired already."""
        with self._lock:
            self._cut = cut
            fired = self.fired
        if fired and cut is not None:
            cut()

    def fire(self) -> None:
        """Cut the read under way, and any the reader starts from now on."""
        with self._lock:
            self.fired = True
            cut = self._cut
        if cut is not None:
            cut()
