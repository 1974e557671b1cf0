"""Stored values: a Python value <-> bytes, in the pool's own wire format.

A value (a job's request, an event's fields) is encoded with
:func:`kernelpit.kernels.protocol.encode` (a JSON header plus one raw frame per
``bytes`` value and per Arrow IPC stream) and the frames are laid out as on the
call channel (:func:`kernelpit.kernels.wire.pieces`).  So everything a call can
carry round-trips exactly: bytes stay bytes, Arrow tables come back as tables.
"""

from __future__ import annotations

import hashlib
import struct
from typing import Any

from ..exceptions import InvalidArguments
from ..kernels import wire
from ..kernels.protocol import EncodeError, decode, encode

_COUNT = struct.Struct("<I")
_LENGTH = struct.Struct("<Q")
_ONE = _COUNT.pack(1)


def pack(value: dict[str, Any], what: str = "value") -> bytes:
    """``value`` as one byte string; a value the wire cannot carry raises InvalidArguments."""
    try:
        frames = encode(value)
    except (EncodeError, ValueError, RecursionError) as exc:
        raise InvalidArguments(f"{what} cannot be stored: {exc}") from None
    if len(frames) == 1:  # most events: the JSON header alone
        return _ONE + _LENGTH.pack(len(frames[0])) + frames[0]
    return b"".join(bytes(p) if not isinstance(p, bytes) else p for p in wire.pieces(frames))


def unpack(data: bytes | memoryview) -> dict[str, Any]:
    """Inverse of :func:`pack`."""
    view = memoryview(data)
    (count,) = _COUNT.unpack_from(view, 0)
    lengths = struct.unpack_from(f"<{count}Q", view, 4)
    at, frames = 4 + 8 * count, []
    for n in lengths:
        frames.append(view[at:at + n].tobytes())
        at += n
    return decode(frames)


def digest_of(tool: str, request: bytes) -> str:
    """A fingerprint of a packed request (its keyword arguments sorted), to tell whether a
    reused idempotency key names the same work."""
    return hashlib.sha256(tool.encode() + b"\0" + request).hexdigest()
