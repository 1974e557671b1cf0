"""Signed messages for the call channel when it runs over TCP (workers on other Ray nodes).

A Unix socket in a private directory is reachable only by this user on this machine;
a TCP port is reachable by anyone who can route to it.  So over TCP every message
carries a tag, HMAC-SHA256 under a key made for the run, and a message whose tag
does not verify is refused.  It is authentication, not encryption: tool arguments
and results cross the network readable (docs/scale-out.md says what to do when that
matters).

Why HMAC-SHA256 over every byte (``python -m benchmarks.signing``; numbers from a
2-core AMD EPYC VM, 100 MB buffers): with the SHA extensions of current x86 and ARM
CPUs hashlib's SHA-256 runs faster than an allocating copy (1.57 GB/s against
0.58), and faster than keyed BLAKE2b (0.77 GB/s), so a MAC over the header plus a
separate digest of the buffers saves nothing (1.53 GB/s with SHA-256) and only adds
a second construction.  AES-256-GCM (``cryptography``, not in the standard library,
so not in every kernel) makes 0.78 GB/s on 100 MB, since it writes a ciphertext;
TLS with a per-run certificate made 0.45 GB/s over loopback where a signed stream
made 0.76 (plain TCP: 1.83).  hashlib releases the GIL on large buffers, so signing
does not stall the kernel's other threads.

**Handshake.**  The listening side (the pool) opens every connection with
``[MAGIC, server_nonce]`` (:func:`challenge`).  The connecting side (an agent
thread) answers ``[identity, client_nonce, tag]`` (:func:`answer`), the tag made
with the run key over both nonces and the identity; the pool checks it
(:func:`accept`) and drops the connection if it does not verify.  Both sides then
derive the connection's key from the run key and both nonces, so a message
recorded on one connection is worthless on any other.

**Messages.**  A signed message is a :mod:`.wire` message with one more frame at
the end, the 32-byte tag::

    <u32 n+1> <u64 len(f1)> ... <u64 len(fn)> <u64 32> <f1> ... <fn> <tag>

    tag = HMAC-SHA256(connection key,
                      direction (b"c>s" or b"s>c") || u64 sequence number ||
                      u32 n || u64 len(f1) ... u64 len(fn) || f1 || ... || fn)

The sequence number counts the messages sent in that direction on that connection
(from 0) and is not sent: a dropped, replayed, reordered or reflected message fails
to verify.  The frame count and lengths are inside the tag, so no bytes can move
from one frame to another.  :class:`Link` keeps one connection's key and counters;
:meth:`Link.signer` and :meth:`Link.verifier` let a writer and a reader feed large
frames to the MAC piece by piece while they travel, so that hashing at both ends
overlaps with the transfer instead of adding to it.

Only the standard library is used: this module runs inside every kernel.
"""

from __future__ import annotations

import hmac
import importlib.util
import secrets
import struct
from typing import Any, Iterable

MAGIC = b"kernelpit-signed/1"
KEY_BYTES = 32
NONCE_BYTES = 16
TAG_BYTES = 32  # HMAC-SHA256: the handshake's tag, and each message's on an "hmac-sha256" link
DIGEST = "sha256"
HMAC_SHA256, POLY1305 = "hmac-sha256", "poly1305"
_TAG_BYTES = {HMAC_SHA256: TAG_BYTES, POLY1305: 16}
_TO_SERVER, _TO_CLIENT = b"c>s", b"s>c"
_SEQ = struct.Struct("<Q")
_COUNT = struct.Struct("<I")


#: the message MACs this process can use, fastest first; a link takes the first one both
#: ends have (the pool offers its list in the greeting, the agent picks).  Poly1305 comes
#: from ``cryptography`` (installed with kernelpit[ray]), imported by the first link that
#: uses it, not by every kernel's start; HMAC-SHA256 is the standard library's.
MACS: tuple[str, ...] = ((POLY1305, HMAC_SHA256) if importlib.util.find_spec("cryptography")
                         else (HMAC_SHA256,))


class SignatureError(ValueError):
    """A message or handshake that is not signed with this run's key (or was altered,
    replayed, reordered or cut short); the connection it came on should be dropped."""


def new_key() -> bytes:
    """A fresh run key (32 random bytes); give it to workers the way the channel's address goes."""
    return secrets.token_bytes(KEY_BYTES)


def _views(frames: Iterable[Any]) -> list[Any]:
    return [f if type(f) is bytes else memoryview(f).cast("B") for f in frames]


def _head(context: bytes, lengths: list[int]) -> bytes:
    count = len(lengths)
    return b"".join([context, _COUNT.pack(count), struct.pack(f"<{count}Q", *lengths)])


def sign(frames: Iterable[Any], key: bytes, *, context: bytes = b"") -> bytes:
    """The tag of ``frames`` (bytes-like) under ``key``: HMAC-SHA256 over ``context``, the
    frame count and lengths, and every byte of every frame."""
    views = _views(frames)
    mac = hmac.new(key, _head(context, [len(v) for v in views]), DIGEST)
    for view in views:
        mac.update(view)
    return mac.digest()


def verify(frames: Iterable[Any], tag: bytes, key: bytes, *, context: bytes = b"") -> None:
    """Raise :class:`SignatureError` unless ``tag`` is the tag of ``frames`` (constant-time)."""
    if not hmac.compare_digest(sign(frames, key, context=context), bytes(tag)):
        raise SignatureError("a message whose signature does not match this run's key")


# -- handshake ----------------------------------------------------------------------------

def challenge(macs: Iterable[str] = MACS) -> tuple[list[bytes], bytes]:
    """The listening side's first message on a new connection (the MACs it offers, fastest
    first), and the nonce to keep for it."""
    nonce = secrets.token_bytes(NONCE_BYTES)
    return [MAGIC, nonce, ",".join(macs).encode()], nonce


def answer(frames: list[Any], key: bytes, identity: bytes,
           macs: Iterable[str] = MACS) -> tuple[list[bytes], "Link"]:
    """The connecting side: its reply to :func:`challenge`'s frames (naming the MAC it
    takes: the first of the pool's offer it has), and its :class:`Link`."""
    if len(frames) != 3 or bytes(frames[0]) != MAGIC or len(frames[1]) != NONCE_BYTES:
        raise SignatureError("the peer did not open with Kernelpit's signed-channel greeting "
                             "(an old pool, or not a Kernelpit channel at all)")
    offer = bytes(frames[2])
    mine = set(macs)
    mac = next((m for m in offer.decode("ascii", "replace").split(",") if m in mine), None)
    if mac is None:
        raise SignatureError(f"the pool offers no message MAC this kernel has (offered: "
                             f"{offer.decode('ascii', 'replace')}; here: {', '.join(mine)})")
    server_nonce, client_nonce = bytes(frames[1]), secrets.token_bytes(NONCE_BYTES)
    tag = sign([identity, client_nonce, mac.encode()], key,
               context=b"hello" + server_nonce + offer)
    return ([identity, client_nonce, mac.encode(), tag],
            Link(key, server_nonce, client_nonce, server=False, mac=mac))


def accept(frames: list[Any], key: bytes, server_nonce: bytes,
           macs: Iterable[str] = MACS) -> tuple[bytes, "Link"]:
    """The listening side: check the reply to its challenge (made with the same ``macs``);
    the peer's identity and the :class:`Link`, or :class:`SignatureError` (drop the
    connection).  The tag covers the offer and the choice, so neither can be altered."""
    if len(frames) != 4 or len(frames[1]) != NONCE_BYTES or len(frames[3]) != TAG_BYTES:
        raise SignatureError("a connection that did not answer the signed-channel greeting")
    identity, client_nonce, mac, tag = (bytes(f) for f in frames)
    offer = ",".join(macs).encode()
    try:
        verify([identity, client_nonce, mac], tag, key, context=b"hello" + server_nonce + offer)
    except SignatureError:
        raise SignatureError("a connection whose greeting is not signed with this run's key "
                             "(a stray client, or a worker of another run)") from None
    if mac.decode("ascii", "replace") not in offer.decode().split(","):
        raise SignatureError(f"a connection that chose a MAC not offered: {mac!r}")
    return identity, Link(key, server_nonce, client_nonce, server=True, mac=mac.decode())


# -- one connection -----------------------------------------------------------------------

class Link:
    """One signed connection's state: its key and a message counter each way.

    Not thread-safe: one connection is written by one thread and read by one thread
    (:meth:`seal` and :meth:`open` touch separate counters).
    """

    def __init__(self, key: bytes, server_nonce: bytes, client_nonce: bytes, *,
                 server: bool, mac: str = HMAC_SHA256) -> None:
        if mac not in _TAG_BYTES or mac not in MACS:
            raise SignatureError(f"no message MAC {mac!r} here (have: {', '.join(MACS)})")
        self._key = hmac.new(key, b"kernelpit link" + server_nonce + client_nonce,
                             DIGEST).digest()
        self._out, self._in = (_TO_CLIENT, _TO_SERVER) if server else (_TO_SERVER, _TO_CLIENT)
        self._sent = 0
        self._received = 0
        self.mac = mac
        #: bytes of each message's tag (the last frame): 32 for HMAC-SHA256, 16 for Poly1305
        self.tag_bytes = _TAG_BYTES[mac]

    def _mac(self, direction: bytes, number: int, lengths: list[int]) -> Any:
        """A MAC already fed with a message's direction, number, frame count and lengths.

        HMAC-SHA256 under the link key; or Poly1305 (about 4x faster here: 6.5 GB/s
        against 1.5, benchmarks/signing.py) under a one-time key derived for this very
        message, HMAC-SHA256(link key, "poly1305" || direction || number): the direction
        and number never repeat on a link and the link key is the connection's own, so no
        Poly1305 key is ever used twice, which is what its security needs."""
        context = direction + _SEQ.pack(number)
        if self.mac == HMAC_SHA256:
            return hmac.new(self._key, _head(context, lengths), DIGEST)
        once = hmac.new(self._key, b"poly1305" + context, DIGEST).digest()
        return _OneTime(once, _head(context, lengths))

    def seal(self, frames: list[Any]) -> list[Any]:
        """``frames`` with their tag appended: what to hand to ``wire.send``/``wire.pieces``."""
        views = _views(frames)
        mac = self.signer([len(v) for v in views])
        for view in views:
            mac.update(view)
        return [*frames, mac.digest()]

    def signer(self, lengths: list[int]) -> Any:
        """A MAC already fed with the next outgoing message's direction, number, count and
        ``lengths``; ``update()`` it with each piece of the frames as it is written, then
        send ``digest()`` as the last frame.  Signing while sending overlaps the sender's
        hashing with the receiver's (benchmarks/signing.py).  Each call stands for the next
        message sent."""
        mac = self._mac(self._out, self._sent, lengths)
        self._sent += 1
        return mac

    def open(self, frames: list[Any]) -> list[Any]:
        """The frames of a received signed message without its tag, or :class:`SignatureError`."""
        if len(frames) < 2 or len(frames[-1]) != self.tag_bytes:
            raise SignatureError("a message without a signature on the signed channel")
        views = _views(frames[:-1])
        mac = self.verifier([len(v) for v in views])
        for view in views:
            mac.update(view)
        self.check(mac, frames[-1])
        return frames[:-1]

    def verifier(self, lengths: list[int]) -> Any:
        """An HMAC already fed with this message's direction, number, count and ``lengths``
        (the data frames', without the tag); ``update()`` it with the frames' bytes as they
        arrive, then :meth:`check` it against the tag.  Each call stands for the next
        message received."""
        mac = self._mac(self._in, self._received, lengths)
        self._received += 1
        return mac

    @staticmethod
    def check(mac: Any, tag: Any) -> None:
        if not hmac.compare_digest(mac.digest(), bytes(tag)):
            raise SignatureError("a message on the signed channel that is not signed with this "
                                 "run's key, or was altered, replayed or reordered")


class _OneTime:
    """Poly1305 under a one-time key, with HMAC's ``update``/``digest`` shape."""

    __slots__ = ("_poly",)

    def __init__(self, key: bytes, head: bytes) -> None:
        from cryptography.hazmat.primitives.poly1305 import Poly1305

        self._poly = Poly1305(key)
        self._poly.update(head)

    def update(self, data: Any) -> None:
        self._poly.update(data)

    def digest(self) -> bytes:
        return self._poly.finalize()


__all__ = ["MAGIC", "MACS", "KEY_BYTES", "TAG_BYTES", "HMAC_SHA256", "POLY1305", "Link",
           "SignatureError", "accept", "answer", "challenge", "new_key", "sign", "verify"]
