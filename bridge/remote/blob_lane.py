"""The client end of the blob lane (the bridge's end and the protocol:
:mod:`kernelpit.service.blob_lane`): a result blob received straight into the value's memory
over a plain TCP connection, or the lane's Unix socket beside the local transport, instead
of as gRPC or local transport messages.

A :class:`LaneReader` keeps its connections open for the next blob (one per thread reading
at a time).  :meth:`LaneReader.read` answers False when the lane cannot be reached (a
firewall, a bridge behind a proxy): the blob is untouched, and the caller reads it with
``ReadBlob``; after such a failure the lane is not tried again for :data:`RETRY_AFTER`
seconds.  An error the bridge answers (an unknown blob, a refused token) raises what
``ReadBlob`` would have raised.
"""

from __future__ import annotations

import logging
import socket
import threading
import time
from typing import Any, Callable

from ..contract import errors
from ..contract import lane as lines
from ..contract.streamed import HEAD, StreamReader
from ..exceptions import BridgeError, Cancelled
from ..kernels import wire
from .abort import Abort

log = logging.getLogger("kernelpit.client")

CONNECT_TIMEOUT = 3.0  # seconds
RETRY_AFTER = 30.0     # seconds without trying the lane after it could not be reached
_HEADER_MAX = 4096


class LaneReader:
    """Reads result blobs from the blob lane at ``where``: ``(host, port)``, or the path of
    its Unix socket; ``token()`` is the client's token now (it follows a rotation),
    ``address`` the bridge's, for messages."""

    def __init__(self, where: tuple[str, int] | str, token: Callable[[], str | None],
                 address: str) -> None:
        self.where = where
        self._token = token
        self._address = address
        self._idle: list[socket.socket] = []
        self._lock = threading.Lock()
        self._unreachable_until = 0.0

    def read(self, blob_id: str, receiver: Any, abort: Abort | None = None) -> bool:
        """Receive blob ``blob_id`` into ``receiver`` (its ``free()`` view, then
        ``advance(n)``), or for a streamed result (``receiver`` a
        :class:`~kernelpit.contract.streamed.StreamReader`) call it with each record's head
        and body; False when the lane could not be reached (read it with ReadBlob).
        ``abort`` can cut the read short from another thread (then it raises ``Cancelled``)."""
        if not self.usable:
            return False
        request = lines.request(blob_id, self._token())
        if request is None:
            return False  # a token the one-line request cannot carry: ReadBlob can
        for attempt in (0, 1):
            sock = self._connection()
            if sock is None:
                return False
            if abort is not None:
                abort.on(lambda: _shut(sock))
            try:
                sock.sendall(request)
                size, extra = self._header(sock)
            except (ConnectionError, _Closed):
                sock.close()
                if abort is not None and abort.fired:
                    raise _cut_short(blob_id) from None
                if attempt == 0:
                    continue  # a kept connection the bridge closed meanwhile: once more
                self._unreachable(f"connection closed before the reply to {blob_id}")
                return False
            except BaseException:
                sock.close()
                raise
            try:
                if isinstance(receiver, StreamReader) != (size < 0):
                    raise self._garbled(f"{'no ' if size < 0 else ''}stream for blob {blob_id}")
                if size < 0:
                    _receive_stream(sock, receiver, blob_id, extra)
                else:
                    _receive(sock, receiver, size, blob_id, extra)
            except BaseException:
                sock.close()  # cut short (Ctrl-C, the bridge gone): the stream is unusable
                if abort is not None and abort.fired:
                    raise _cut_short(blob_id) from None
                raise
            if abort is not None:
                abort.on(None)  # this connection is kept for the next read: not to be cut
            with self._lock:
                self._idle.append(sock)
            return True
        return False

    @property
    def usable(self) -> bool:
        """False for a while after the lane could not be reached (blobs go by ReadBlob)."""
        return time.monotonic() >= self._unreachable_until

    def close(self) -> None:
        with self._lock:
            idle, self._idle = self._idle, []
        for sock in idle:
            sock.close()

    def _connection(self) -> socket.socket | None:
        with self._lock:
            if self._idle:
                return self._idle.pop()
        try:
            if isinstance(self.where, str):
                sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                try:
                    sock.settimeout(CONNECT_TIMEOUT)
                    sock.connect(self.where)
                except OSError:
                    sock.close()
                    raise
            else:
                sock = socket.create_connection(self.where, timeout=CONNECT_TIMEOUT)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        except OSError as exc:
            self._unreachable(str(exc))
            return None
        sock.settimeout(None)
        return sock

    def _unreachable(self, why: str) -> None:
        where = self.where if isinstance(self.where, str) else f"port {self.where[1]}"
        log.info("the blob lane of the bridge at %s (%s) cannot be used (%s): reading "
                 "blobs with ReadBlob for %g s", self._address, where, why, RETRY_AFTER)
        self._unreachable_until = time.monotonic() + RETRY_AFTER

    def _header(self, sock: socket.socket) -> tuple[int, bytes]:
        """The reply's first line: (the blob's size, the bytes read past the line: the start
        of its data); the bridge's ERR raised as ReadBlob's error would be."""
        got = b""
        while b"\n" not in got:
            if len(got) >= _HEADER_MAX:
                raise self._garbled(got[:80])
            more = sock.recv(_HEADER_MAX)
            if not more:
                raise _Closed()
            got += more
        line, _, extra = got.partition(b"\n")
        reply = lines.parse_reply(line)
        if reply is None:
            raise self._garbled(line[:80])
        size, refused = reply
        if refused is not None:
            raise errors.from_status(*refused, self._address)
        return size, extra

    def _garbled(self, what: Any) -> BridgeError:
        return BridgeError(f"the blob lane of the bridge at {self._address} sent a reply that "
                           f"is not its protocol: {what!r}")


class _Closed(Exception):
    """The connection closed before a reply began."""


def _shut(sock: socket.socket) -> None:
    """End a read under way on ``sock`` from another thread (its ``recv`` returns)."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass  # closed already


def _cut_short(blob_id: str) -> Cancelled:
    return Cancelled(f"the read of blob {blob_id} was cut short: its call was cancelled")


def _receive_stream(sock: socket.socket, reader: StreamReader, blob_id: str,
                    extra: bytes) -> None:
    """A streamed result's records, each head and body fed to ``reader`` whole (a body
    received straight into a buffer of its own), up to the last."""
    pending = memoryview(extra)

    def exactly(n: int) -> memoryview:
        nonlocal pending
        if len(pending) >= n:
            out, pending = pending[:n], pending[n:]
            return out
        buffer, view = wire.fill_in_place(n)
        have = len(pending)
        view[:have] = pending
        pending = memoryview(b"")
        while have < n:
            got = sock.recv_into(view[have:])
            if not got:
                raise BridgeError(f"the bridge's blob lane closed in the middle of streamed "
                                  f"result {blob_id}; is the bridge still running?")
            have += got
        return memoryview(buffer)

    while not reader.done:
        head = exactly(HEAD.size)
        reader(head)
        size = HEAD.unpack(head)[3]
        if size:
            reader(exactly(size))
    if pending:
        raise BridgeError(f"the bridge's blob lane sent more than streamed result {blob_id}")


def _receive(sock: socket.socket, receiver: Any, size: int, blob_id: str, extra: bytes) -> None:
    if len(extra) > size:
        raise BridgeError(f"the bridge's blob lane sent more than the {size} bytes of blob "
                          f"{blob_id}")
    if extra:
        receiver(memoryview(extra))
    left = size - len(extra)
    while left:
        view = receiver.free()[:left]
        if not view:
            raise BridgeError(f"the bridge announced {size} bytes for blob {blob_id}, more than "
                              "its reference said")
        n = sock.recv_into(view)
        if not n:
            raise BridgeError(f"the bridge's blob lane closed after {size - left} of {size} "
                              f"bytes of blob {blob_id}; is the bridge still running?")
        receiver.advance(n)
        left -= n
