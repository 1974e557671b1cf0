"""The call channel: one Unix socket that every worker agent's threads connect to.

It listens inside the run's private (0700) directory, so only this user's
processes can reach it.  Each agent thread connects and introduces itself as
``<worker>`` (io thread) or ``<worker>.<n>`` (executor n).  A call goes to the
executor that is to run it (:meth:`Channel.send_call`), so the thread its arrival
wakes is the one that runs it; cancels, pings and stops go to the io thread
(:meth:`Channel.send`), which serves them while tools run.  Every incoming message
is handed to ``on_message(worker_id, msg)`` on the event loop as soon as it is read.

Frames travel as :mod:`kernelpit.kernels.wire` lays them out; a plain socket
read by the event loop costs one wake-up per hop, where a ZMQ socket would add
its I/O thread at both ends.

Workers on other machines (Ray nodes other than this one) cannot reach that socket:
for them :meth:`Channel.listen_tcp` adds a TCP listener whose connections are signed
with the run key (:mod:`kernelpit.kernels.signing`): each opens with a challenge, and
a connection whose answer or any later message is not signed with the key is dropped
(logged), while everything else goes on serving.  ``endpoint`` stays the Unix socket;
``tcp_endpoint`` is the TCP one.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
from typing import Any, Callable, NamedTuple

from ..kernels import signing, wire
from ..kernels.arrow import DecodeError, Transport
from ..kernels.protocol import Decoder, encode

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
        self._io: dict[int, _Peer] = {}  # worker id -> its io thread's connection
        self._executors: dict[tuple[int, int], _Peer] = {}  # (worker id, n) -> executor n's
        # calls for an executor whose connection has not introduced itself yet (a worker
        # that has just said hello: its executors connected first, but nothing orders the
        # reads of two connections), sent when it does
        self._held: dict[tuple[int, int], list[list[Any]]] = {}
        self._server: asyncio.AbstractServer | None = None
        self._tcp: asyncio.AbstractServer | None = None
        self.tcp_endpoint: str | None = None
        self.key: bytes | None = None  # the run key signing the TCP channel
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

    async def listen_tcp(self, host: str) -> str:
        """Also listen on TCP at ``host`` (a port the OS picks), signed with a new run key;
        returns ``tcp://host:port``.  Once per channel."""
        if self._tcp is None:
            self.key = signing.new_key()
            self._tcp = await asyncio.get_running_loop().create_server(
                lambda: _Connection(self, signed=True), host, 0, backlog=512)
            port = self._tcp.sockets[0].getsockname()[1]
            self.tcp_endpoint = f"tcp://{'[' + host + ']' if ':' in host else host}:{port}"
        assert self.tcp_endpoint is not None
        return self.tcp_endpoint

    def send(self, worker_id: int, msg: dict[str, Any] | list[Any]) -> bool:
        """Send a message (or its encoded frames) to a worker's io thread.

        Returns False when the worker is not connected (yet, or any more).
        """
        peer = self._io.get(worker_id)
        if peer is None or peer.transport.is_closing():
            return False
        peer.write(msg if isinstance(msg, list) else encode(msg))
        return True

    def send_call(self, worker_id: int, executor: int, frames: list[Any]) -> bool:
        """Send a call's frames to executor ``executor`` of a worker.

        Returns False when the worker is not connected (yet, or any more).
        """
        peer = self._executors.get((worker_id, executor))
        if peer is None:
            if worker_id not in self._io:
                return False
            self._held.setdefault((worker_id, executor), []).append(frames)
            return True
        if peer.transport.is_closing():
            return False
        peer.write(frames)
        return True

    def _received(self, worker_id: int, frames: list[Any], decoder: Decoder) -> None:
        try:
            msg = decoder.decode(frames)
        except DecodeError as exc:
            msg = _undecodable(frames[0], exc)
        except ValueError:
            log.warning("worker %s sent a message that is not Kernelpit's; ignored", worker_id)
            return
        if msg is not None:  # None: a list that came ahead of its message
            self._on_message(worker_id, msg)

    @property
    def transport(self) -> Transport | None:
        return self._transport

    def close(self) -> None:
        for server in (self._server, self._tcp):
            if server is not None:
                server.close()
        for peer in [*self._io.values(), *self._executors.values()]:
            peer.transport.close()
        self._io.clear()
        self._executors.clear()
        self._held.clear()
        wire.drop_kept()  # large received frames kept for reuse that nobody holds any more
        with contextlib.suppress(OSError):
            os.unlink(self.path)


class _Peer(NamedTuple):
    """One agent thread's connection, and its signed link when it came over TCP."""

    transport: asyncio.Transport
    link: signing.Link | None = None

    def write(self, frames: list[Any]) -> None:
        if self.link is not None:
            for message in wire.signed_messages(frames, self.link):
                for piece in wire.pieces(message):
                    self.transport.write(piece)
            return
        for piece in wire.pieces(frames):  # one write for a small message
            self.transport.write(piece)


class _Connection(asyncio.BufferedProtocol):
    """One agent thread's connection: its identity first, then its messages.  Over TCP
    (``signed``) the identity is the answer to the challenge sent on connecting, and every
    message after it must carry the run key's signature."""

    def __init__(self, channel: Channel, signed: bool = False) -> None:
        self._channel = channel
        self._reader: Any = wire.Reader()
        self._decoder = Decoder(channel.transport, self._ahead)
        self._signed = signed
        self._worker: int | None = None
        self._executor: int | None = None  # n for executor n's connection, None for the io thread's
        self._transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            wire.tune(sock)
        if self._signed:
            if sock is not None:
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            greeting, nonce = signing.challenge()
            assert self._channel.key is not None
            self._reader = wire.SignedReader(key=self._channel.key, server_nonce=nonce)
            for piece in wire.pieces(greeting):
                transport.write(piece)  # type: ignore[attr-defined]

    def get_buffer(self, sizehint: int) -> memoryview:
        return self._reader.buffer()

    def buffer_updated(self, nbytes: int) -> None:
        try:
            messages = self._reader.advance(nbytes)
        except (wire.WireError, signing.SignatureError) as exc:
            peer = self._transport.get_extra_info("peername") if self._transport else None
            log.warning("dropped a connection to the call channel%s: %s",
                        f" from {peer}" if self._signed and peer else "", exc)
            assert self._transport is not None
            self._transport.close()
            return
        for frames in messages:
            if self._transport is None or self._transport.is_closing():
                return
            if self._worker is None:
                self._introduced(frames)
            else:
                self._channel._received(self._worker, frames, self._decoder)

    def _ahead(self, head: dict[str, Any], value: Any) -> None:
        """A list that came ahead of its event, told to the pool as ``{"op": "ahead", "id":
        call, "k": the event's kind, "a": index, "value": the list}`` (see Call.on_ahead)."""
        if self._worker is not None and "id" in head:
            self._channel._on_message(self._worker, {
                "op": "ahead", "id": head["id"], "k": head.get("k"), "a": head["a"],
                "value": value})

    def _introduced(self, frames: list[Any]) -> None:
        identity = bytes(frames[0]).decode("ascii", "replace")
        worker, _, thread = identity.partition(".")
        assert self._transport is not None
        try:
            worker_id, executor = int(worker), (int(thread) if thread else None)
        except ValueError:
            log.warning("dropped a connection to the call channel that is not an agent's "
                        "(identity %r)", identity)
            self._transport.close()
            return
        self._worker, self._executor = worker_id, executor
        peer = _Peer(self._transport, self._reader.link if self._signed else None)
        channel = self._channel
        if executor is None:
            channel._io[worker_id] = peer
            return
        channel._executors[worker_id, executor] = peer
        for held in channel._held.pop((worker_id, executor), ()):
            peer.write(held)

    def connection_lost(self, exc: Exception | None) -> None:
        channel, worker = self._channel, self._worker
        if worker is None:
            return
        if self._executor is None:
            peer = channel._io.get(worker)
            if peer is not None and peer.transport is self._transport:
                del channel._io[worker]
                for key in [key for key in channel._held if key[0] == worker]:
                    del channel._held[key]  # the worker is gone: its calls end with it
            return
        peer = channel._executors.get((worker, self._executor))
        if peer is not None and peer.transport is self._transport:
            del channel._executors[(worker, self._executor)]
