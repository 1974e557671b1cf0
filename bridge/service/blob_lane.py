"""The blob lane: result blobs over a plain TCP connection, beside gRPC.

Python gRPC carries a stream of 4 MiB messages at about 2 GB/s on a 2-core machine, each
message copied once more on each side; a plain socket carries 4 to 5 GB/s, received straight
into the value's memory (docs/performance.md, S7).  So beside its gRPC port the bridge
listens on a second TCP port on the same host, from which a client reads result blobs:
``ServerInfo.blob_lane_port`` names it (0: no lane).  ``ReadBlob`` stays the contract, and
every blob can be read there by any client; the lane is what Kernelpit's Python client uses
when it can reach it (:mod:`kernelpit.remote.blob_lane`), falling back to ``ReadBlob``.

The protocol, one request at a time on a connection that stays open for the next::

    request   READ <blob id> <token, or - without one>\\n      (ASCII, at most 1 KiB)
    reply     OK <size>\\n, then exactly <size> bytes: the blob
         or   STREAM\\n, then a streamed result's records as they are made, each its 14-byte
              head and its body back to back, up to its last (kernelpit.contract.streamed)
         or   ERR <gRPC status name> <message>\\n

Each request is checked as ``ReadBlob`` over gRPC is: the same token store and the same role
(:meth:`~kernelpit.service.auth.TokenAuth.check`), so a revoked or rotated token is refused
at once.  A blob read here is freed as one read by ``ReadBlob`` is: when it has been sent, or
when the connection breaks.  A request that is not this protocol is answered
``ERR INVALID_ARGUMENT`` and its connection closed; the lane goes on serving the others.  A
connection idle for :data:`IDLE_TIMEOUT` seconds is closed (the client makes a new one).

The lane is plaintext, so a bridge that serves TLS does not open its TCP port (its clients
read blobs with ``ReadBlob``).  Beside the local transport the lane also listens on a Unix
socket, ``lane.sock`` in the run's private directory (mode 0600), which the local
transport's greeting names: a client on the bridge's machine reads streamed results there,
with the same protocol and checks, whether or not the bridge serves TLS.  ``kernelpit serve
--no-blob-lane`` turns both off (docs/security.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import Any

import grpc

from ..addresses import private_unix_listener
from ..contract import lane as lines
from ..contract.framing import CHUNK, pieces
from .auth import Refused, TokenAuth
from .blobs import BlobError, BlobStore

log = logging.getLogger("kernelpit.service")

READ_BLOB = "/kernelpit.v1.Bridge/ReadBlob"  # the method whose role a lane read needs
SOCKET_NAME = "lane.sock"  # the Unix socket's name in the run's private directory
IDLE_TIMEOUT = 300.0  # seconds a connection may wait for its next request before it is closed


class BlobLane:
    """Serves the bridge's result blobs on a TCP port of their own; see the module docstring.

    ``auth``: the token check of the gRPC transports (None on a bridge without auth);
    ``activity``: the idle monitor, held up while a blob is sent (None: not counted).
    """

    def __init__(self, blobs: BlobStore, auth: TokenAuth | None, activity: Any = None) -> None:
        self._blobs = blobs
        self._auth = auth
        self._activity = activity
        self._listeners: list[socket.socket] = []
        self._accepting: list[asyncio.Task[None]] = []
        self._connections: set[asyncio.Task[None]] = set()
        self.port = 0  # the TCP port (0: none)
        self.path: str | None = None  # the Unix socket (None: none)
        self.served = 0        # blobs sent whole (kernelpit_blob_lane_blobs)
        self.served_bytes = 0  # their bytes (kernelpit_blob_lane_bytes)
        self.refused: dict[str, int] = {}  # requests refused, by status name

    async def start(self, host: str) -> int:
        """Listen on ``host`` (the gRPC server's host), on a port the OS picks; returns it."""
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        listener = socket.socket(family, socket.SOCK_STREAM)
        try:
            listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            listener.bind((host, 0))
        except OSError:
            listener.close()
            raise
        self._listen(listener)
        self.port = listener.getsockname()[1]
        return self.port

    async def start_unix(self, run_dir: str) -> str:
        """Listen on :data:`SOCKET_NAME` in ``run_dir`` (the run's private directory), for
        clients of the local transport; returns the socket's path."""
        path = os.path.join(run_dir, SOCKET_NAME)
        self._listen(private_unix_listener(path))
        self.path = path
        return path

    def _listen(self, listener: socket.socket) -> None:
        try:
            listener.listen(64)
            listener.setblocking(False)
        except OSError:
            listener.close()
            raise
        self._listeners.append(listener)
        self._accepting.append(asyncio.ensure_future(self._accept(listener)))

    async def stop(self) -> None:
        """Stop accepting, and cut the reads in progress (their blobs are freed)."""
        tasks = [*self._accepting, *self._connections]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        for listener in self._listeners:
            listener.close()
        self._listeners, self._accepting = [], []
        if self.path is not None:
            with contextlib.suppress(OSError):
                os.unlink(self.path)

    async def _accept(self, listener: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        while True:
            try:
                conn, _ = await loop.sock_accept(listener)
            except OSError as exc:  # out of file descriptors, say: the lane goes on
                log.warning("the blob lane could not accept a connection: %s", exc)
                await asyncio.sleep(0.1)
                continue
            conn.setblocking(False)
            if conn.family != socket.AF_UNIX:
                conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            task = asyncio.ensure_future(self._serve(conn))
            self._connections.add(task)
            task.add_done_callback(self._connections.discard)

    async def _serve(self, conn: socket.socket) -> None:
        loop = asyncio.get_running_loop()
        pending = b""
        try:
            while True:
                while b"\n" not in pending:
                    if len(pending) > lines.MAX_LINE:
                        await self._refuse(loop, conn, grpc.StatusCode.INVALID_ARGUMENT,
                                           "a blob lane request is one line of at most "
                                           f"{lines.MAX_LINE} bytes: {lines.USAGE}")
                        return
                    try:
                        data = await asyncio.wait_for(loop.sock_recv(conn, 4096), IDLE_TIMEOUT)
                    except asyncio.TimeoutError:
                        return  # idle: the client reconnects when it next needs the lane
                    if not data:
                        return  # the client closed the connection
                    pending += data
                line, _, pending = pending.partition(b"\n")
                if not await self._answer(loop, conn, line):
                    return
        except (ConnectionError, OSError):
            return  # the client went away: a blob it was reading is freed
        finally:
            conn.close()

    async def _answer(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                      line: bytes) -> bool:
        """Serve one request; False when the connection must close (not this protocol)."""
        asked = lines.parse_request(line)
        if asked is None:
            await self._refuse(loop, conn, grpc.StatusCode.INVALID_ARGUMENT,
                               f"not a blob lane request: send '{lines.USAGE}' and a newline "
                               "(see kernelpit.service.blob_lane), or read blobs with ReadBlob")
            return False
        blob_id, token = asked
        if self._auth is not None:
            metadata = () if token is None else (("authorization", f"Bearer {token}"),)
            try:
                self._auth.check(READ_BLOB, metadata)
            except Refused as refused:
                await self._refuse(loop, conn, refused.code, refused.message)
                return True
        if self._activity is not None:
            self._activity.enter()
        try:
            if self._blobs.is_streamed(blob_id):
                await self._stream(loop, conn, blob_id)
                return True
            with self._blobs.reading(blob_id) as (size, segments):
                await loop.sock_sendall(conn, lines.ok(size))
                for piece in pieces(segments, CHUNK):
                    await loop.sock_sendall(conn, piece)
                self.served += 1  # before the blob is freed: a freed blob was counted
                self.served_bytes += size
        except BlobError as exc:
            await self._refuse(loop, conn, grpc.StatusCode.NOT_FOUND, str(exc))
        finally:
            if self._activity is not None:
                self._activity.exit()
        return True

    async def _stream(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                      blob_id: str) -> None:
        """Send a streamed result's records; a client that closes the connection meanwhile
        (its call was cancelled) stops it at once, not at the next record, which may be a
        long way off: the result is freed, and its call cancelled."""
        sending = asyncio.ensure_future(self._send_records(loop, conn, blob_id))
        closing = asyncio.ensure_future(_closed(loop, conn))
        try:
            await asyncio.wait((sending, closing), return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (closing, sending):
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError, ConnectionError, OSError):
                    await task
        if not sending.cancelled():
            sending.result()  # its error (BlobError: refused) or nothing
        else:
            raise ConnectionResetError(f"the client closed the blob lane while it read {blob_id}")

    async def _send_records(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                            blob_id: str) -> None:
        reply: bytes | None = lines.STREAM  # once the first record is there: till then the
        # read may still be refused (BlobError: read already, expired)
        async with contextlib.aclosing(self._blobs.records(blob_id)) as records:
            async for head, body in records:
                if reply is not None:
                    await loop.sock_sendall(conn, reply)
                    reply = None
                await loop.sock_sendall(conn, head)
                for piece in pieces([body], CHUNK):
                    await loop.sock_sendall(conn, piece)
                self.served_bytes += len(head) + memoryview(body).nbytes
                del head, body
            self.served += 1

    async def _refuse(self, loop: asyncio.AbstractEventLoop, conn: socket.socket,
                      code: grpc.StatusCode, message: str) -> None:
        self.refused[code.name] = self.refused.get(code.name, 0) + 1
        await loop.sock_sendall(conn, lines.refusal(code, message))


async def _closed(loop: asyncio.AbstractEventLoop, conn: socket.socket) -> None:
    """Returns once the client has closed ``conn``.  Nothing is read: the client sends
    nothing while it reads a stream, and should it send (its next request) that stays."""
    while True:
        readable = loop.create_future()
        loop.add_reader(conn, lambda: readable.done() or readable.set_result(None))
        try:
            await readable
        finally:
            loop.remove_reader(conn)
        try:
            if not conn.recv(1, socket.MSG_PEEK):
                return  # its end: closed
        except BlockingIOError:
            continue
        except OSError:
            return  # reset
        await loop.create_future()  # data waits unread: watch no more (till cancelled)
