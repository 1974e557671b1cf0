"""The events of one executor's connection, on their way to the pool.

The thread that emits an event sends it itself while nothing waits before it, so the usual
event (a result, a line of output) costs no thread hop.  A progress event is held back while
the pool has not yet read what was sent before (the socket's send queue is not empty): it
waits in a :class:`~kernelpit.backlog.Backlog`, where the next progress of the call replaces
it.  So a tool that reports progress as fast as it can never blocks on the socket and never
fills it with stale progress; the pool gets the latest progress each time it is ready for
more.  Any other event first sends everything waiting before it, in order, and is never
dropped (a tool writing output faster than the pool reads it waits for the socket, as it
always did).  A progress still held when the tool goes quiet is sent by the outbox's own
thread once the pool has caught up.
"""

from __future__ import annotations

import socket
import struct
import sys
import threading
from typing import Any, Callable, Hashable

from ..backlog import Backlog

POLL_FIRST, POLL_LAST = 0.0001, 0.005  # seconds between checks while a progress is held


def progress_key(msg: dict[str, Any]) -> Hashable:
    """A progress event coalesces with the next progress event of the same call."""
    return msg["id"] if msg.get("k") == "progress" else None


def unread_bytes(sock: socket.socket) -> Callable[[], int] | None:
    """A function telling how many bytes sent on ``sock`` its peer has not read yet, or None
    where the platform cannot tell (then progress is never held back in the worker; the
    pool, the bridge and the client still coalesce it)."""
    fd = sock.fileno()
    probe: Callable[[], int] | None = None
    if sys.platform.startswith("linux"):
        import fcntl
        import termios
        empty = bytes(4)

        def probe() -> int:  # SIOCOUTQ: bytes in the send queue the peer has not read
            return struct.unpack("i", fcntl.ioctl(fd, termios.TIOCOUTQ, empty))[0]
    elif sys.platform == "darwin":
        def probe() -> int:
            return sock.getsockopt(socket.SOL_SOCKET, 0x1024)  # SO_NWRITE
    if probe is None:
        return None
    try:
        probe()
    except OSError:
        return None
    return probe


class Outbox:
    """Sends one connection's events with ``send`` (which encodes and writes one message)."""

    def __init__(self, send: Callable[[dict[str, Any]], None], sock: socket.socket,
                 name: str = "kernelpit-outbox") -> None:
        self._send = send
        self._unread = unread_bytes(sock)
        self._waiting: Backlog[dict[str, Any]] = Backlog(progress_key)
        self._cond = threading.Condition(threading.Lock())
        self._sender: int | None = None  # the thread sending (it sends all that waits)
        self._watching = False  # the outbox's thread is polling for a held progress
        self._closed = False
        self._thread = threading.Thread(target=self._deliver_held, name=name, daemon=True)
        self._thread.start()

    @property
    def coalesced(self) -> int:
        """Progress events replaced by a later one before they were sent."""
        return self._waiting.coalesced

    def put(self, msg: dict[str, Any]) -> None:
        """Send ``msg`` now, or leave it to the thread sending now, or hold it (a progress
        event while the pool is behind)."""
        with self._cond:
            self._waiting.push(msg)
            if self._sender is not None:
                return  # the thread sending now sends this too before it stops
            if self._unread is not None and progress_key(msg) is not None and self._unread():
                if not self._watching:
                    self._watching = True
                    self._cond.notify()
                return
            self._sender = threading.get_ident()
        self._drain()

    def _drain(self) -> None:
        """Send everything waiting, in order; the calling thread is the sender."""
        while True:
            with self._cond:
                if not self._waiting:
                    self._sender = None
                    return
                msg = self._waiting.pop()
            self._send(msg)

    def recover(self) -> None:
        """Called by the executor thread between calls, when no cancel can be pending in it:
        if a cancel (an exception raised asynchronously in the tool's thread) interrupted
        that thread while it was the sender, give the role up so the outbox goes on."""
        with self._cond:
            if self._sender == threading.get_ident():
                self._sender = None
                self._cond.notify()

    def close(self) -> None:
        with self._cond:
            self._closed = True
            self._cond.notify()

    def _deliver_held(self) -> None:
        delay = POLL_FIRST
        cond = self._cond
        while True:
            with cond:
                while not self._closed and (not self._waiting or self._sender is not None
                                            or (self._unread is not None and self._unread())):
                    if self._waiting and self._sender is None:  # held: the pool is behind
                        self._watching = True
                        cond.wait(delay)
                        delay = min(delay * 2, POLL_LAST)
                    else:
                        self._watching = False
                        delay = POLL_FIRST
                        cond.wait()
                if self._closed:
                    return
                self._watching = False
                self._sender = threading.get_ident()
            self._drain()
