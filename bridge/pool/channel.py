"""The call channel: one Unix socket that every worker agent's threads connect to.

It listens inside the run's private (0700) directory, so only this user's
processes can reach it.  Each agent thread connects and introduces itself as
``<worker>`` (io thread) or ``<worker>.<n>`` (executor n); messages go to a
worker's io thread, and every incoming message is handed to
``on_message(worker_id, msg)`` on the event loop as soon as it is read.

Frames travel as :mod:`kernelpit.kernels.wire` lays them out; a plain socket
read by the event loop costs one wake-up per hop, where a ZMQ socket would add
its I/O thread at both ends.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from typing import Any, Callable

from ..kernels import wire
from ..kernels.arrow import DecodeError, Transport
from ..kernels.protocol import decode, encode

log = logging.getLogger("kernelpit.pool")


def _undecodable(header: bytes, exc: Exception) -> dict[str, Any]:
    """An event whose value could not be read becomes that call's error."""
    msg = json.loads(header)
    if msg.get("op") != "ev":
        return {"op": "ignored"}
    return {"op": "ev", "id": msg.get("id"), "k": "error", "error": {
        "kind": "tool", "type": "RuntimeError", "module": "builtins", "args": None,
        "traceback": "", "message": f"the worker's {msg.get('k')} could not be read: {exc}"}}


class Channel:
    """Listens for worker agents; see the module docstring.  Made with :meth:`open`."""

    def __init__(self, directory: str | os.PathLike[str],
                 on_message: Callable[[int, dict[str, Any]], None],
                 transport: Transport | None = None) -> None:
        self._on_message = on_message
        self._transport = transport
        self.path = f"{directory}/calls"
        self.endpoint = f"unix://{self.path}"
        self._io: dict[int, asyncio.Transport] = {}  # worker id -> its io thread's connection
        self._server: asyncio.AbstractServer | None = None

    @classmethod
    async def open(cls, directory: str | os.PathLike[str],
                   on_message: Callable[[int, dict[str, Any]], None],
                   transport: Transport | None = None) -> "Channel":
        """Listen on ``<directory>/calls`` (``directory``: private to this user, 0700)."""
        channel = cls(directory, on_message, transport)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        listener.bind(channel.path)
        channel._server = await asyncio.get_running_loop().create_unix_server(
            lambda: _Connection(channel), sock=listener, backlog=512)
        return channel

    def send(self, worker_id: int, msg: dict[str, Any] | list[Any]) -> bool:
        """Send a message (or its encoded frames) to a worker's io thread.

        Returns False when the worker is not connected (yet, or any more).
        """
        conn = self._io.get(worker_id)
        if conn is None or conn.is_closing():
            return False
        frames = msg if isinstance(msg, list) else encode(msg)
        for piece in wire.pieces(frames):  # one write for a small message
            conn.write(piece)
        return True

    def _received(self, worker_id: int, frames: list[Any]) -> None:
        try:
            msg = decode(frames, self._transport)
        except DecodeError as exc:
            msg = _undecodable(frames[0], exc)
        except ValueError:
            log.warning("worker %s sent a message that is not Kernelpit's; ignored", worker_id)
            return
        self._on_message(worker_id, msg)

    @property
    def transport(self) -> Transport | None:
        return self._transport

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for conn in list(self._io.values()):
            conn.close()
        self._io.clear()
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class _Connection(asyncio.BufferedProtocol):
    """One agent thread's connection: its identity first, then its messages."""

    def __init__(self, channel: Channel) -> None:
        self._channel = channel
        self._reader = wire.Reader()
        self._worker: int | None = None
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            wire.tune(sock)

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            messages = self._reader.advance(nbytes)
        except wire.WireError as exc:
            log.warning("dropped a connection to the call channel: %s", exc)
            assert self._transport is not None
            self._transport.close()
            return
        for frames in messages:
            if self._transport is None or self._transport.is_closing():
                return
            if self._worker is None:
                self._introduced(frames)
            else:
                self._channel._received(self._worker, frames)

    def _introduced(self, frames: list[Any]) -> None:
        identity = bytes(frames[0]).decode("ascii", "replace")
        worker, _, thread = identity.partition(".")
        try:
            self._worker = int(worker)
        except ValueError:
            log.warning("dropped a connection to the call channel that is not an agent's "
                        "(identity %r)", identity)
            assert self._transport is not None
            self._transport.close()
            return
        if not thread:
            assert self._transport is not None
            self._channel._io[self._worker] = self._transport

    def connection_lost(self, exc: Exception | None) -> None:
        if self._worker is not None and self._channel._io.get(self._worker) is self._transport:
            del self._channel._io[self._worker]
