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

Over TCP (workers on other Ray nodes) the connection is signed (:mod:`.signing`): the
pool opens it with a challenge, the agent answers with its identity and an HMAC of
both nonces under the run key, and from then on every message carries a tag as its
last frame.  :class:`SignedReader` verifies each message as it completes and refuses
(:class:`~.signing.SignatureError`) anything not signed with the run's key.  A frame
larger than :data:`CHUNK` is not sent in one message there: it goes ahead of its
message as signed *parts* of at most :data:`CHUNK` bytes, which the reader receives
straight into the frame's final buffer; the message itself then carries an empty
placeholder in that frame's place.  So a 1 GB table is 256 messages of 4 MiB, each
verified as it arrives; the sender's tags are hashed on a helper thread while it writes
(:func:`_write_hashed_ahead`), and a large frame is received into memory kept from an
earlier one that nobody holds any more (:class:`_Kept`), not into fresh pages.  A
connection that ends mid-value leaves only memory behind, dropped with the connection.

This module is imported on both sides, so it depends on the standard library only.
"""

from __future__ import annotations

import ctypes
import os
import socket
import struct
import sys
import threading
import time
from typing import Any, Callable, Iterator

from . import signing

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


def fill_in_place(size: int) -> tuple[Any, memoryview]:
    """A frame of ``size`` bytes and a writable view of it, to receive into.

    On CPython the frame is a ``bytes`` object made uninitialized with
    ``PyBytes_FromStringAndSize(NULL, size)`` (the C API's way to build a bytes
    object in place) and filled before anyone else sees it: no zero-fill, and
    decoding a ``bytes`` value costs no copy.  Elsewhere it is a ``bytearray``.
    A large frame is received into one kept from earlier that nobody holds any more,
    and is kept for reuse itself (:class:`_Kept`).
    """
    if _new_bytes is None:
        frame = bytearray(size)
        return frame, memoryview(frame)
    keep = size >= KEEP_FROM
    frame = _kept.reuse(size) if keep else None
    if frame is None:
        frame = _new_bytes(None, size)
        if size >= _HUGE_FROM:
            _huge_pages(id(frame) + _BYTES_DATA, size)
        if keep:
            _kept.add(frame, size)
    data = (ctypes.c_char * size).from_address(id(frame) + _BYTES_DATA)
    return frame, memoryview(data).cast("B")



_HUGE = 2 << 20  # a transparent huge page on x86-64 and most arm64 kernels
_HUGE_FROM = 8 << 20  # frames this big ask for huge pages (at least 3 whole ones inside)
_MADV_HUGEPAGE = 14
_madvise: Any = None
if sys.platform.startswith("linux") and sys.implementation.name == "cpython":
    try:
        _madvise = ctypes.CDLL(None, use_errno=True).madvise
        _madvise.argtypes = (ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int)
        _madvise.restype = ctypes.c_int
    except (OSError, AttributeError):  # pragma: no cover - no libc symbol to call
        _madvise = None


def _huge_pages(start: int, size: int) -> None:
    """Ask for transparent huge pages under a large frame that is about to be received.

    Its memory is new (a large allocation is its own mapping) and untouched: filling it
    would take a page fault, and the kernel's zeroing of a fresh page, every 4 KiB
    (25,600 of them for 100 MB: about a third of receiving it over loopback TCP here).
    With huge pages it takes one per 2 MiB (docs/performance.md, S9).  Only the whole
    huge pages inside the frame are advised; where the kernel has none to give (THP
    off, fragmented memory) nothing changes."""
    if _madvise is None:
        return
    lo, hi = (start + _HUGE - 1) & ~(_HUGE - 1), (start + size) & ~(_HUGE - 1)
    if hi > lo:
        _madvise(lo, hi - lo, _MADV_HUGEPAGE)  # advice only: an error changes nothing


_new_bytes: Any = None
_BYTES_DATA = bytes.__basicsize__ - 1  # offset of ob_sval in PyBytesObject
if sys.implementation.name == "cpython":
    _new_bytes = ctypes.pythonapi.PyBytes_FromStringAndSize
    _new_bytes.restype = ctypes.py_object
    _new_bytes.argtypes = (ctypes.c_void_p, ctypes.c_ssize_t)


KEEP_FROM = 8 << 20  # received frames this big are kept for reuse once nobody holds them
KEPT_SECONDS = 10.0  # a kept frame nobody has held or been handed for this long is let go


def _kept_budget() -> int:
    """Bytes of kept frames tracked at most: an eighth of the machine's memory, at least
    256 MiB (enough for a 1 GB frame on a machine of 8 GB or more)."""
    try:
        physical = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (AttributeError, ValueError, OSError):  # pragma: no cover - no sysconf
        physical = 0
    return max(256 << 20, physical // 8)


KEPT_BYTES = _kept_budget()


class _Kept:
    """Large received frames, kept so that the next one is received into memory that is
    already there.

    A fresh 100 MB frame costs 25,600 page faults (50 with huge pages) and the kernel's
    zeroing of every page before a single byte of it is received: on the 2-core VM of
    docs/performance.md (S7, S9) that zeroing alone took 37 % of the machine's CPU during a
    transfer, and made transfers 3-5x slower whenever the hypervisor had taken the freed
    pages back (a VM's free page reporting: then each page is faulted in on the host too).
    So a frame is not let go when its receiver is done with it: once only this list holds
    it (its reference count says so: no buffer, view or value made from it is alive, so
    nobody can see it change), the next large frame is received into it.  A ``bytes``
    object's memory is its own allocation, freed whatever its size says, so a frame of
    capacity C is reused for any size from C/2 to C: its size, hash cache and terminating
    NUL are set as a new object's would be.

    The frames kept at most add up to :data:`KEPT_BYTES` (the oldest are let go first),
    and one is let go once nobody has held it, and it has not been handed out, for
    :data:`KEPT_SECONDS` (a daemon timer looks every half of that, as an allocator's decay
    returns idle memory): a process keeps the memory of its last large values only while
    it keeps using them.  :func:`drop_kept` lets the unused ones go at once (a pool or a
    client that closes)."""

    def __init__(self) -> None:
        self._frames: list[list[Any]] = []  # [frame, capacity, last used], oldest first
        self._lock = threading.Lock()
        self._timer: threading.Timer | None = None

    def reuse(self, size: int) -> bytes | None:
        with self._lock:
            for entry in sorted(self._frames, key=lambda e: e[1]):
                if entry[1] // 2 <= size <= entry[1] and sys.getrefcount(entry[0]) <= _UNHELD:
                    frame = entry[0]
                    self._frames.remove(entry)
                    entry[2] = time.monotonic()
                    self._frames.append(entry)  # newest last: the last to be let go
                    address = id(frame)
                    ctypes.c_ssize_t.from_address(address + _SIZE_AT).value = size
                    ctypes.c_ssize_t.from_address(address + _HASH_AT).value = -1
                    ctypes.c_char.from_address(address + _BYTES_DATA + size).value = b"\0"
                    return frame
        return None

    def add(self, frame: bytes, capacity: int) -> None:
        with self._lock:
            self._frames.append([frame, capacity, time.monotonic()])
            total = sum(e[1] for e in self._frames)
            while total > KEPT_BYTES and self._frames:
                total -= self._frames.pop(0)[1]  # one still in use lives on, untracked
            self._expire_later()

    def drop(self) -> None:
        """Let go of the frames nobody holds."""
        with self._lock:
            self._frames = [e for e in self._frames if sys.getrefcount(e[0]) > _UNHELD]
            if not self._frames and self._timer is not None:
                self._timer.cancel()  # nothing left to let go
                self._timer = None

    def held(self) -> int:
        """Bytes of kept frames that nobody else holds (for tests and reports)."""
        with self._lock:
            return sum(e[1] for e in self._frames if sys.getrefcount(e[0]) <= _UNHELD)

    def _expire_later(self) -> None:
        if self._timer is None and self._frames:  # under the lock
            self._timer = threading.Timer(KEPT_SECONDS / 2, self._expire)
            self._timer.daemon = True
            self._timer.start()

    def _expire(self) -> None:
        """Every KEPT_SECONDS / 2: a frame seen held counts as used now; one nobody has held
        (or been handed) for more than KEPT_SECONDS is let go."""
        now = time.monotonic()
        with self._lock:
            for entry in self._frames:
                if sys.getrefcount(entry[0]) > _UNHELD:
                    entry[2] = now
            self._frames = [e for e in self._frames if now - e[2] <= KEPT_SECONDS]
            self._timer = None
            self._expire_later()

    def _after_fork(self) -> None:
        """In a forked child: the parent's timer thread does not exist there."""
        self._lock = threading.Lock()
        self._timer = None
        self._expire_later()


_UNHELD = 2  # sys.getrefcount of a kept frame nobody else holds: its entry, and the call
_SIZE_AT = 2 * ctypes.sizeof(ctypes.c_ssize_t)  # ob_size in PyVarObject (after refcnt, type)
_HASH_AT = _BYTES_DATA - ctypes.sizeof(ctypes.c_ssize_t)  # ob_shash, just before the data
_kept = _Kept()
if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_kept._after_fork)


def drop_kept() -> None:
    """Let go of the large received frames kept for reuse that nobody holds any more."""
    _kept.drop()


class WireError(ValueError):
    """Bytes on the channel that are not a message (a foreign or broken peer)."""


class Gather(list):
    """One frame made of several buffers written back to back, never joined: a large Arrow
    value's IPC stream as pyarrow hands it out (its pieces point into the value's own
    memory), so sending it costs no copy.  The receiver gets one contiguous frame."""


def _buffers(frame: Any) -> list[Any]:
    """A frame as a list of byte views (one, or a :class:`Gather`'s pieces)."""
    if type(frame) is Gather:
        return [b if type(b) is bytes else memoryview(b).cast("B") for b in frame]
    return [frame if type(frame) is bytes else memoryview(frame).cast("B")]


def _size(views: list[Any]) -> int:
    return sum(len(v) for v in views)


def pieces(frames: list[Any]) -> list[Any]:
    """What to write for ``frames``: one joined buffer for a small message, else the
    count and lengths followed by the frames themselves."""
    try:
        views = [f if type(f) is bytes else memoryview(f).cast("B") for f in frames]
    except TypeError:  # a Gather among them (only large values: off the hot path)
        return _gathered_pieces(frames)
    lengths = [len(v) for v in views]
    head = _COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *lengths)
    if sum(lengths) <= _JOIN:
        return [b"".join([head, *views])]
    return [head, *views]


def _gathered_pieces(frames: list[Any]) -> list[Any]:
    bufs = [_buffers(f) for f in frames]
    head = _COUNT.pack(len(frames)) + struct.pack(f"<{len(frames)}Q", *map(_size, bufs))
    return [head, *(v for views in bufs for v in views)]


def _write(sock: socket.socket, frames: list[Any]) -> None:
    parts = [memoryview(p) for p in pieces(frames) if len(p)]
    while parts:
        sent = sock.sendmsg(parts[:_MAX_IOV])
        while parts and sent >= parts[0].nbytes:
            sent -= parts.pop(0).nbytes
        if sent:
            parts[0] = parts[0][sent:]


def send(sock: socket.socket, frames: list[Any]) -> None:
    """Write one message to a blocking socket (all of it, however the kernel splits it);
    on a :class:`SignedSocket` as signed messages (big frames in parts)."""
    if type(sock) is not SignedSocket:  # the local path: no attribute lookup that can miss
        _write(sock, frames)
        return
    link = sock.link
    assert link is not None
    if sum(_size(_buffers(f)) for f in frames) >= HASH_AHEAD_FROM:
        _write_hashed_ahead(sock, frames, link)
        return
    for message in signed_messages(frames, link, seal=False):
        _write_signed(sock, message, link)


HASH_AHEAD_FROM = 2 * (4 << 20)  # bytes: messages this big are hashed on a helper thread


def _write_hashed_ahead(sock: socket.socket, frames: list[Any], link: "signing.Link") -> None:
    """Write a large value's signed messages while a helper thread computes their tags.

    Sending a large value is the sender's whole job, and hashing it in the same thread
    (:func:`_write_signed`) made the sender the slower end of the transfer: the receiver
    waited in ``epoll_wait`` for 40 % of it (docs/performance.md, S9).  The tags need no
    input from the writing, so the helper hashes the parts one after another, in order,
    while this thread writes them; ``send`` releases the GIL and Poly1305 holds it, so the
    two run at once on two cores.  Each tag goes out after its message's bytes, as a
    streaming signer's does; the bytes on the wire are the same."""
    messages = []
    for message in signed_messages(frames, link, seal=False):
        bufs = [_buffers(f) for f in message]
        lengths = [_size(views) for views in bufs]
        messages.append((bufs, lengths, link.signer(lengths)))  # numbered in sending order
    tags = [_hasher().submit(_digest, mac, bufs) for bufs, _, mac in messages]
    try:
        for (bufs, lengths, _), tag in zip(messages, tags):
            sock.sendall(_COUNT.pack(len(lengths) + 1)
                         + struct.pack(f"<{len(lengths) + 1}Q", *lengths, link.tag_bytes))
            for views in bufs:
                for view in views:
                    sock.sendall(view)
            sock.sendall(tag.result())
    finally:
        for tag in tags:  # the connection failed: the rest need no hashing
            tag.cancel()


def _digest(mac: Any, bufs: list[list[Any]]) -> bytes:
    for views in bufs:
        for view in views:
            mac.update(view)
    return mac.digest()


_helper: tuple[int, Any] = (0, None)  # (the pid it belongs to, its executor)


def _hasher() -> Any:
    """This process's tag-hashing thread (made on first use; a forked child makes its own:
    threads do not survive a fork)."""
    global _helper
    pid, executor = _helper
    if pid != os.getpid() or executor is None:
        import concurrent.futures

        executor = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="kernelpit-mac")
        _helper = (os.getpid(), executor)
    return executor


STREAM_PIECE = 256 << 10  # bytes hashed, then written, at a time by a streaming signer


def _write_signed(sock: socket.socket, frames: list[Any], link: "signing.Link") -> None:
    """Sign and write one message; a large one piece by piece (hash a piece, write it), so
    that the signing overlaps the transfer and the receiver's verification."""
    bufs = [_buffers(f) for f in frames]
    lengths = [_size(views) for views in bufs]
    mac = link.signer(lengths)
    if sum(lengths) <= _JOIN:
        for views in bufs:
            for view in views:
                mac.update(view)
        _write(sock, [*frames, mac.digest()])
        return
    head = _COUNT.pack(len(frames) + 1) + struct.pack(f"<{len(frames) + 1}Q", *lengths,
                                                        link.tag_bytes)
    sock.sendall(head)
    for views in bufs:
        for view in views:
            for at in range(0, len(view), STREAM_PIECE):
                piece = view[at:at + STREAM_PIECE]
                mac.update(piece)
                sock.sendall(piece)
    sock.sendall(mac.digest())


class SignedSocket(socket.socket):
    """A TCP connection to the pool's channel whose messages are signed with ``link``."""

    link: "signing.Link | None" = None


def connect(endpoint: str, identity: str, key: bytes | None = None) -> socket.socket:
    """A blocking connection to the channel at ``endpoint``, introduced as ``identity``.

    ``unix://PATH`` (or a bare path): the run's private Unix socket.  ``tcp://HOST:PORT``:
    a :class:`SignedSocket`, after answering the pool's challenge with ``key`` (the run key).
    """
    if not endpoint.startswith("tcp://"):
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        tune(sock)
        sock.connect(endpoint.removeprefix("unix://"))
        send(sock, [identity.encode()])
        return sock
    if key is None:
        raise ValueError("a TCP channel needs the run key (KERNELPIT_CHANNEL_KEY)")
    host, _, port = endpoint.removeprefix("tcp://").rpartition(":")
    tcp = SignedSocket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_STREAM)
    tune(tcp)
    tcp.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    tcp.connect((host.strip("[]"), int(port)))
    reader = Reader()
    greeting: list[list[Any]] = []
    while not greeting:
        n = tcp.recv_into(reader.buffer())
        if n == 0:
            tcp.close()
            raise ConnectionError(f"the pool at {endpoint} closed the connection before its "
                                  "greeting")
        greeting = reader.advance(n)
    reply, tcp.link = signing.answer(greeting[0], key, identity.encode())
    _write(tcp, reply)
    return tcp


# -- signed connections: parts of big frames, and the reader that verifies ------------------

CHUNK = 4 << 20  # bytes: larger frames travel as parts of this size on a signed connection
PART = b"\x00kp-part"
_PART_HEAD = struct.Struct("<IQQ")  # frame index in its message, frame size, offset of the part


def signed_messages(frames: list[Any], link: "signing.Link",
                    seal: bool = True) -> Iterator[list[Any]]:
    """The signed wire messages that carry ``frames``: a part message per :data:`CHUNK`
    of each larger frame (slices, not copies), then the message with empty placeholders
    for those frames.  Send them in this order; each is sealed when it is taken (with
    ``seal=False`` they come unsealed, for a writer that signs while it sends)."""
    finish = (lambda message: _seal(link, message)) if seal else (lambda message: message)
    out: list[Any] = list(frames)
    for index, frame in enumerate(frames):
        if type(frame) is bytes and len(frame) <= CHUNK:
            continue
        views = _buffers(frame)
        size = _size(views)
        if size <= CHUNK:
            continue
        for at, piece in _cut(views, CHUNK):
            yield finish([PART + _PART_HEAD.pack(index, size, at), piece])
        out[index] = b""
    yield finish(out)


def _cut(views: list[Any], chunk: int) -> Iterator[tuple[int, Any]]:
    """(offset, piece) for consecutive pieces of ``chunk`` bytes of the concatenated views
    (a piece that spans views is a :class:`Gather` of slices: nothing is copied)."""
    at, piece, room = 0, Gather(), chunk
    start = 0
    for view in views:
        pos = 0
        while pos < len(view):
            take = min(room, len(view) - pos)
            piece.append(view[pos:pos + take])
            pos += take
            room -= take
            if room == 0:
                yield start, piece[0] if len(piece) == 1 else piece
                at += chunk
                start, piece, room = at, Gather(), chunk
    if piece:
        yield start, piece[0] if len(piece) == 1 else piece


def _seal(link: "signing.Link", frames: list[Any]) -> list[Any]:
    """``frames`` (a :class:`Gather` among them or not) with their tag appended."""
    bufs = [_buffers(f) for f in frames]
    mac = link.signer([_size(views) for views in bufs])
    for views in bufs:
        for view in views:
            mac.update(view)
    return [*frames, mac.digest()]


class SignedReader:
    """:class:`Reader` for a signed connection: verifies every message and joins parts.

    ``link`` is the connection's :class:`~.signing.Link`; or give ``key`` and
    ``server_nonce`` (the listening side): the first message is then the answer to
    the challenge, checked with :func:`~.signing.accept`, and comes out as the
    identity message ``[identity]`` the channel expects first.  Raises
    :class:`~.signing.SignatureError` (unsigned, forged, replayed message) or
    :class:`WireError` (parts that do not add up): drop the connection.
    """

    def __init__(self, link: "signing.Link | None" = None, *, key: bytes | None = None,
                 server_nonce: bytes | None = None) -> None:
        self.link = link
        self._key, self._nonce = key, server_nonce
        self._reader = _PlacingReader(self)
        self._blobs: dict[int, list[Any]] = {}  # frame index -> [frame, view, bytes filled]
        self.buffer = self._reader.buffer
        self.mac: Any = None  # the verifier of a message whose large frames are streamed
        self._fed = 0  # frames of that message already fed to it

    def stream(self, frames: list[Any], lengths: list[int]) -> None:
        """A large frame of the current message starts: verify from here on as bytes arrive
        (the frames before it first; the large one then piece by piece)."""
        if self.link is None or len(lengths) < 2:
            return
        if self.mac is None:
            self.mac = self.link.verifier(lengths[:-1])
        for frame in frames[self._fed:]:
            self.mac.update(frame)
        self._fed = len(frames) + 1

    def advance(self, n: int) -> list[list[Any]]:
        # one message at a time: a part must land in the blob of its own message, so the
        # message before it is accepted (and its blobs handed over) before it is parsed
        done = []
        messages = self._reader.advance(n)
        while messages:
            message = self._accept(messages[0])
            if message is not None:
                done.append(message)
            messages = self._reader.advance(0)
        return done

    def _accept(self, frames: list[Any]) -> list[Any] | None:
        if self.link is None:
            if self._key is None or self._nonce is None:
                raise signing.SignatureError("a signed reader without a link or a key")
            identity, self.link = signing.accept(frames, self._key, self._nonce)
            return [identity]
        if self.mac is None:
            data = self.link.open(frames)
        else:  # its large frames were verified while they arrived: the rest, then the tag
            mac, self.mac = self.mac, None
            if len(frames) - 1 < self._fed or len(frames[-1]) != self.link.tag_bytes:
                raise signing.SignatureError("a message without a signature on the signed "
                                             "channel")
            for frame in frames[self._fed:-1]:
                mac.update(frame)
            self._fed = 0
            self.link.check(mac, frames[-1])
            data = frames[:-1]
        head = data[0]
        if len(head) == len(PART) + _PART_HEAD.size and bytes(head[:len(PART)]) == PART:
            index, size, at = _PART_HEAD.unpack_from(head, len(PART))
            if len(data) != 2:
                raise WireError("a part message without exactly one part")
            blob = self._blob(index, size)
            piece = data[1]
            if at + len(piece) > size:
                raise WireError(f"a part past the end of its frame ({at} + {len(piece)} > {size})")
            if not isinstance(piece, memoryview):  # came small: not received in place
                blob[1][at:at + len(piece)] = piece
            blob[2] += len(piece)
            return None
        if not self._blobs:
            return data
        data = list(data)
        for index, (frame, _, filled) in self._blobs.items():
            if index >= len(data) or len(data[index]) or filled != len(frame):
                raise WireError("a message whose parts do not add up to its frames")
            data[index] = frame
        self._blobs.clear()
        return data

    def _blob(self, index: int, size: int) -> list[Any]:
        blob = self._blobs.get(index)
        if blob is None:
            if index > MAX_FRAMES:
                raise WireError(f"a part of frame {index}")
            frame, view = fill_in_place(size)
            blob = self._blobs[index] = [frame, view, 0]
        elif len(blob[0]) != size:
            raise WireError("parts of one frame that disagree on its size")
        return blob

    def place(self, frames: list[Any], size: int) -> memoryview | None:
        """Where a large frame being received goes: into its blob when it is a part."""
        if self.link is None or len(frames) != 1:
            return None
        head = frames[0]
        if len(head) != len(PART) + _PART_HEAD.size or bytes(head[:len(PART)]) != PART:
            return None
        index, total, at = _PART_HEAD.unpack_from(head, len(PART))
        if at + size > total:
            raise WireError(f"a part past the end of its frame ({at} + {size} > {total})")
        return self._blob(index, total)[1][at:at + size]


class Reader:
    """Splits the bytes of one connection into messages.

    Fed like an :class:`asyncio.BufferedProtocol`: read into :meth:`buffer`,
    then call :meth:`advance` with the byte count; it returns the messages
    completed (each a list of ``bytes`` frames; a ``bytearray`` for a large one off CPython).
    """

    _single = False  # stop after each message (a SignedReader acts on one before the next)
    _streaming = False  # hand each piece of a large frame to _received as it arrives

    def __init__(self, size: int = 256 * 1024) -> None:
        self._buf = bytearray(size)
        self._start = 0  # first unparsed byte
        self._end = 0  # end of received bytes
        self._lengths: list[int] | None = None  # frame lengths of the message being read
        self._frames: list[Any] = []
        self._big: Any = None  # a large frame being received in place
        self._big_view: memoryview | None = None  # writable view of it
        self._big_at = 0

    def _place(self, size: int) -> tuple[Any, memoryview]:
        return fill_in_place(size)

    def _received(self, piece: memoryview) -> None:
        """Bytes of a large frame just received in place (with ``_streaming``)."""

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
            if self._streaming:
                self._received(self._big_view[self._big_at - n:self._big_at])
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
                if self._single:
                    break
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
                self._big, self._big_view = self._place(size)
                self._big_view[:avail] = buf[self._start:self._end]
                self._big_at = avail
                if self._streaming:
                    self._received(self._big_view[:avail])
                self._start = self._end = 0
            break
        if self._start == self._end:
            self._start = self._end = 0
        return done


class _PlacingReader(Reader):
    """The plain reader under a :class:`SignedReader`: parts are received in place."""

    _single = True
    _streaming = True

    def __init__(self, owner: SignedReader) -> None:
        super().__init__()
        self._owner = owner

    def _place(self, size: int) -> tuple[Any, memoryview]:
        self._owner.stream(self._frames, self._lengths or [])
        view = self._owner.place(self._frames, size)
        if view is None:
            return fill_in_place(size)
        return view, view

    def _received(self, piece: memoryview) -> None:
        self._owner.mac.update(piece)  # verified while the rest still travels


def receive_forever(sock: socket.socket, handle: Callable[[list[Any]], bool]) -> None:
    """Read messages from a blocking socket and pass each to ``handle`` until it returns
    False or the peer closes the connection (or, on a signed socket, sends a message not
    signed with the run's key)."""
    link = getattr(sock, "link", None)
    reader: Any = Reader() if link is None else SignedReader(link)
    while True:
        try:
            n = sock.recv_into(reader.buffer())
        except OSError:
            return
        if n == 0:
            return
        try:
            messages = reader.advance(n)
        except (WireError, signing.SignatureError):
            return
        messages.reverse()
        while messages:  # popped: nothing of a handled message (a call's 1 GB argument)
            if handle(messages.pop()) is False:  # stays referenced here until the next one
                return
