"""The local transport's messages: gRPC's RPC model on the pool's socket framing.

A client on the bridge's own machine (same host, same user) can reach the bridge through a
Unix socket in the bridge's private run directory instead of gRPC.  It carries the same
RPCs with the same protobuf messages, methods, metadata and statuses; only the framing is
the pool's own (:mod:`kernelpit.kernels.wire`: a message is a list of frames).  Both ends
encode and decode with this module.

The first message on a connection is the client's greeting ``[GREETING]``; the bridge
answers ``[GREETING, <JSON: shm_dir, prefix, threshold, lane>]``: where the pool's shared
memory is, the file-name prefix of this connection's values (see
:mod:`kernelpit.kernels.arena`), and the blob lane's Unix socket (null without one), on
which the client reads large results (:mod:`kernelpit.service.blob_lane`).
Every later message starts with a header, ``<op: u8> <stream: u32>``; streams are numbered
by the client:

=================  ===============================  ====================================
op                 frames after the header          meaning
=================  ===============================  ====================================
``OPEN``           method, *metadata                a new RPC (requests follow)
``UNARY``          method, request, *metadata       a new RPC with its one request
``MESSAGE``        message                          a request or a response
``HALF_CLOSE``                                      no more requests
``CANCEL``                                          the client gives up on the RPC
``HEADERS``        *metadata                        the server's initial metadata
``STATUS``         status JSON, *metadata           the end: code, details, trailers
``REPLY``          response, *metadata              one response and OK, in one message
=================  ===============================  ====================================

Metadata travel as alternating key and value frames; values of ``-bin`` keys stay bytes.
"""

from __future__ import annotations

import json
import struct
from typing import Any, Iterable, Sequence

import grpc

from ..kernels import wire

GREETING = b"kernelpit-local/1"
SOCKET_NAME = "bridge.sock"

OPEN, UNARY, MESSAGE, HALF_CLOSE, CANCEL, HEADERS, STATUS, REPLY = range(1, 9)
_HEAD = struct.Struct("<BI")
_CODES = {code.value[0]: code for code in grpc.StatusCode}


class ProtocolError(ValueError):
    """A message that does not follow this protocol (the connection is dropped)."""


def head(op: int, stream: int) -> bytes:
    return _HEAD.pack(op, stream)


def parse_head(frames: Sequence[Any]) -> tuple[int, int]:
    if not frames or len(frames[0]) != _HEAD.size:
        raise ProtocolError("a message without a header")
    return _HEAD.unpack(frames[0])


def metadata_frames(metadata: Iterable[tuple[str, Any]] | None) -> list[bytes]:
    out: list[bytes] = []
    for key, value in metadata or ():
        out.append(key.encode())
        out.append(value if isinstance(value, bytes) else str(value).encode())
    return out


def metadata_from(frames: Sequence[Any]) -> tuple[tuple[str, Any], ...]:
    if len(frames) % 2:
        raise ProtocolError("metadata frames must come in key/value pairs")
    pairs = []
    for i in range(0, len(frames), 2):
        key = bytes(frames[i]).decode()
        value = bytes(frames[i + 1])
        pairs.append((key, value if key.endswith("-bin") else value.decode()))
    return tuple(pairs)


def status_frames(code: grpc.StatusCode, details: str) -> bytes:
    return json.dumps({"code": code.value[0], "details": details}).encode()


def status_from(frame: Any) -> tuple[grpc.StatusCode, str]:
    try:
        status = json.loads(bytes(frame))
        return _CODES[status["code"]], str(status.get("details", ""))
    except (ValueError, KeyError, TypeError):
        raise ProtocolError("a malformed status") from None


def write(transport: Any, frames: list[Any]) -> None:
    """Write one message on an asyncio transport (one buffer when it is small)."""
    pieces = wire.pieces(frames)
    if len(pieces) == 1:
        transport.write(pieces[0])
    else:
        transport.writelines(pieces)


def serialize(serializer: Any, message: Any) -> Any:
    """A message as a frame (``serializer`` None: it is bytes already)."""
    return message if serializer is None else serializer(message)


def deserialize(deserializer: Any, frame: Any) -> Any:
    return frame if deserializer is None else deserializer(frame)
