"""Messages as frames on a Unix stream socket: the pool's call channel.

A message is a list of frames (the JSON header and its binary buffers, see
:mod:`.protocol`).  On the socket it is::

    <u32 number of frames> <u64 length of each frame> ... <the frames, back to back>

The first message on every connection is the connecting thread's identity
(``b"<worker>"`` for an agent's io thread, ``b"<worker>.<n>"`` for executor n).

A plain socket costs one wake-up per hop: the sending thread writes, the
receiving thread wakes.  (A ZMQ socket adds its own I/O thread at both ends,
about 70 us more per round trip on this kind of machine.)  Frames above a few
KiB are received straight into their own buffer and sent without joining.

This module is imported on both sides, so it depends on the standard library only.
"""

from __future__ import annotations

import ctypes
import socket
import struct
import sys
from typing import Any, Callable

_COUNT = struct.Struct("<I")
_SMALL = 64 * 1024  # frames up to this size are copied out of the shared read buffer
_JOIN = 64 * 1024  # messages up to this size are sent as one joined buffer
_MAX_IOV = 512  # buffers per sendmsg (IOV_MAX is 1024 on Linux)
MAX_FRAMES = 1 << 20
SOCKET_BUFFER = 4 << 20  # fewer, larger reads and writes for big frames (capped by the kernel)


def tune(sock: socket.socket) -> None:
    """Ask for socket buffers of :data:`SOCKET_BUFFER` bytes each way."""
    for option in (socket.SO_SNDBUF, socket.SO_RCVBUF):
        try:
            sock.setsockopt(socket.SOL_SOCKET, option, SOCKET_BUFFER)
        except OSError:
            pass


def _fill_in_place(size: int) -> tuple[Any, memoryview]:
    """A frame of ``size`` bytes and a writable view of it, to receive into.

    On CPython the frame is a ``bytes`` object made uninitialized with
    ``PyBytes_FromStringAndSize(NULL, size)`` (the C API's way to build a bytes
    object in place) and filled before anyone else sees it: no zero-fill, and
    decoding a ``bytes`` value costs no copy.  Elsewhere it is a ``bytearray``.
    """
    if _new_bytes is None:
        frame = bytearray(size)
        return frame, memoryview(frame)
    frame = _new_bytes(None, size)
    data = (ctypes.c_char * size).from_address(id(frame) + _BYTES_DATA)
    return frame, memoryview(data).cast("B")


_new_bytes: Any = None
_BYTES_DATA = bytes.__basicsize__ - 1  # offset of ob_sval in PyBytesObject
if sys.implementation.name == "cpython":
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


class WireError(ValueError):
    """Bytes on the channel that are not a message (a foreign or broken peer)."""


def pieces(frames: list[Any]) -> list[Any]:
    """What to write for ``frames``: one joined buffer for a small message, else the
    count and lengths followed by the frames themselves."""
    views = [f if type(f) is bytes else memoryview(f).cast("B") for f in frames]
    lengths = [len(v) for v in views]
    head = _COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
    if sum(lengths) <= _JOIN:
        return [b"".join([head, *views])]
    return [head, *views]


def send(sock: socket.socket, frames: list[Any]) -> None:
    """Write one message to a blocking socket (all of it, however the kernel splits it)."""
    parts = [memoryview(p) for p in pieces(frames) if len(p)]
    while parts:
        sent = sock.sendmsg(parts[:_MAX_IOV])
        while parts and sent >= parts[0].nbytes:
            sent -= parts.pop(0).nbytes
        if sent:
            parts[0] = parts[0][sent:]


def connect(path: str, identity: str) -> socket.socket:
    """A blocking connection to the channel at ``path``, introduced as ``identity``."""
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    tune(sock)
    sock.connect(path)
    send(sock, [identity.encode()])
    return sock


class Reader:
    """Splits the bytes of one connection into messages.

    Fed like an :class:`asyncio.BufferedProtocol`: read into :meth:`buffer`,
    then call :meth:`advance` with the byte count; it returns the messages
    completed (each a list of ``bytes`` frames; a ``bytearray`` for a large one off CPython).
    """

    def __init__(self, size: int = 256 * 1024) -> None:
        self._buf = bytearray(size)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._lengths: list[int] | None = None  # frame lengths of the message being read
        self._frames: list[Any] = []
        self._big: Any = None  # a large frame being received in place
        self._big_view: memoryview | None = None  # writable view of it
        self._big_at = 0

    def buffer(self) -> memoryview:
        if self._big_view is not None:
            return self._big_view[self._big_at:]
        if self._end == len(self._buf):
            pending = self._end - self._start
            # never resized in place: the caller may still hold a view of the old buffer
            new = bytearray(len(self._buf) * 2 if pending * 2 > len(self._buf) else len(self._buf))
            new[:pending] = self._buf[self._start:self._end]
            self._buf, self._start, self._end = new, 0, pending
        return memoryview(self._buf)[self._end:]

    def advance(self, n: int) -> list[list[Any]]:
        if self._big_view is not None:
            self._big_at += n
            if self._big_at < len(self._big_view):
                return []
            self._frames.append(self._big)
            self._big = self._big_view = None
        else:
            self._end += n
        return self._parse()

    def _parse(self) -> list[list[Any]]:
        done: list[list[Any]] = []
        buf = self._buf
        while True:
            if self._lengths is not None and len(self._frames) == len(self._lengths):
                done.append(self._frames)
                self._lengths, self._frames = None, []
            avail = self._end - self._start
            if self._lengths is None:
                if avail < 4:
                    break
                (count,) = _COUNT.unpack_from(buf, self._start)
                if not 0 < count <= MAX_FRAMES:
                    raise WireError(f"a message of {count} frames")
                if avail < 4 + 8 * count:
                    break
                self._lengths = list(struct.unpack_from(f"<{count}Q", buf, self._start + 4))
                self._start += 4 + 8 * count
                continue
            size = self._lengths[len(self._frames)]
            if avail >= size:
                self._frames.append(bytes(buf[self._start:self._start + size]))
                self._start += size
                continue
            if size > _SMALL:  # the rest of it goes straight into its own buffer
                self._big, self._big_view = _fill_in_place(size)
                self._big_view[:avail] = buf[self._start:self._end]
                self._big_at = avail
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0
        return done


def receive_forever(sock: socket.socket, handle: Callable[[list[Any]], bool]) -> None:
    """Read messages from a blocking socket and pass each to ``handle`` until it returns
    False or the peer closes the connection."""
    reader = Reader()
    while True:
        try:
            n = sock.recv_into(reader.buffer())
        except OSError:
            return
        if n == 0:
            return
        for frames in reader.advance(n):
            if handle(frames) is False:
                return
