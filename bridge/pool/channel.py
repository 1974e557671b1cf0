"""The call channel: one ZMQ ROUTER socket that every worker agent connects to.

It listens on an ``ipc://`` socket inside a private (0700) directory, so only
this user's processes can reach it.  Each agent thread connects a DEALER with
identity ``<worker>`` (io thread) or ``<worker>.<n>`` (executor n); incoming
messages are handed to ``on_message(worker_id, msg)`` on the event loop.

The socket is a plain (non-asyncio) pyzmq socket read from ``add_reader`` on
its FD and drained completely each time, which costs far less per message
than a future per ``recv``.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import tempfile
from typing import Any, Callable

import zmq

from ..kernels.arrow import DecodeError, Transport
from ..kernels.protocol import decode, encode


def _undecodable(header: bytes, exc: Exception) -> dict[str, Any]:
    """An event whose value could not be read becomes that call's error."""
    msg = json.loads(header)
    if msg.get("op") != "ev":
        return {"op": "ignored"}
    return {"op": "ev", "id": msg.get("id"), "k": "error", "error": {
        "kind": "tool", "type": "RuntimeError", "module": "builtins", "args": None,
        "traceback": "", "message": f"the worker's {msg.get('k')} could not be read: {exc}"}}


class Channel:
    def __init__(self, on_message: Callable[[int, dict[str, Any]], None],
                 transport: Transport | None = None) -> None:
        self._on_message = on_message
        self._transport = transport
        self._dir = tempfile.mkdtemp(prefix="kp-")
        os.chmod(self._dir, 0o700)
        self.endpoint = f"ipc://{self._dir}/calls"
        self._ctx = zmq.Context()
        self._sock = self._ctx.socket(zmq.ROUTER)
        self._sock.setsockopt(zmq.LINGER, 0)
        self._sock.setsockopt(zmq.ROUTER_MANDATORY, 1)
        self._sock.bind(self.endpoint)
        self._loop = asyncio.get_running_loop()
        self._loop.add_reader(self._sock.getsockopt(zmq.FD), self._drain)
        self._drain_scheduled = False

    def send(self, worker_id: int, msg: dict[str, Any] | list[bytes]) -> bool:
        """Send a message (or its encoded frames) to a worker's io thread.

        Returns False when the worker is not connected (yet, or any more).
        """
        frames = msg if isinstance(msg, list) else encode(msg)
        try:
            self._sock.send_multipart([str(worker_id).encode(), *frames], copy=False)
        except zmq.ZMQError:  # EHOSTUNREACH: not connected (yet, or any more)
            return False
        finally:
            # A send can consume the FD's edge while messages are waiting: drain soon.
            if not self._drain_scheduled:
                self._drain_scheduled = True
                self._loop.call_soon(self._drain)
        return True

    def _drain(self) -> None:
        self._drain_scheduled = False
        sock = self._sock
        while sock.getsockopt(zmq.EVENTS) & zmq.POLLIN:
            frames = sock.recv_multipart(zmq.NOBLOCK)
            identity = frames[0].split(b".", 1)[0]
            try:
                worker_id = int(identity)
            except ValueError:
                continue  # not one of ours
            try:
                msg = decode(frames[1:], self._transport)
            except DecodeError as exc:
                msg = _undecodable(frames[1], exc)
            except ValueError:
                continue  # not a message of ours
            self._on_message(worker_id, msg)

    @property
    def transport(self) -> Transport | None:
        return self._transport

    def close(self) -> None:
        try:
            self._loop.remove_reader(self._sock.getsockopt(zmq.FD))
        except Exception:
            pass
        self._sock.close(linger=0)
        self._ctx.term()
        shutil.rmtree(self._dir, ignore_errors=True)
