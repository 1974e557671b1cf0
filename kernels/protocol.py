"""The wire format between the pool and its worker kernels.

Every message is a ZMQ multipart message: the first frame is a UTF-8 JSON
object (the header), the following frames are raw binary buffers that the
header refers to.  ``bytes`` values anywhere inside a message travel as
their own frame, never as base64, and are replaced in the JSON by a marker
``{"$kp": "bytes", "i": N}`` (N = index among the buffers).

Host -> worker ops::

    {"op": "call", "id": 7, "tool": "add", "args": [...], "kwargs": {...}}
    {"op": "cancel", "id": 7}
    {"op": "ping", "id": 8}
    {"op": "stop"}

Worker -> host ops::

    {"op": "hello", "pid": 123, "tools": [...]}            # ready
    {"op": "hello", "pid": 123, "error": {...}}            # cannot serve
    {"op": "ev", "id": 7, "k": "progress", "done": 1, "total": 3, "message": ""}
    {"op": "ev", "id": 7, "k": "stdout", "text": "..."}
    {"op": "ev", "id": 7, "k": "display", "data": {...}, "metadata": {...}}
    {"op": "ev", "id": 7, "k": "partial", "value": ...}
    {"op": "ev", "id": 7, "k": "result", "value": ...}      # last event of a call
    {"op": "ev", "id": 7, "k": "error", "error": {...}}     # last event of a call
    {"op": "pong", "id": 8}

This module is imported on both sides, so it depends on the standard
library only.
"""

from __future__ import annotations

import json
from typing import Any

MARKER = "$kp"

SUPPORTED = "None, bool, int, float, str, bytes, list, tuple and dict with str keys"


class EncodeError(TypeError):
    """A value that the wire format cannot carry."""


def encode(msg: dict[str, Any]) -> list[bytes]:
    """Turn a message into frames: one JSON header plus one frame per bytes value."""
    buffers: list[bytes] = []

    def default(obj: Any) -> Any:
        if isinstance(obj, (bytes, bytearray, memoryview)):
            buffers.append(bytes(obj) if not isinstance(obj, bytes) else obj)
            return {MARKER: "bytes", "i": len(buffers) - 1}
        raise EncodeError(
            f"type {type(obj).__module__}.{type(obj).__qualname__} cannot be sent; "
            f"supported types are {SUPPORTED}"
        )

    header = json.dumps(msg, default=default, separators=(",", ":"), ensure_ascii=False)
    return [header.encode(), *buffers]


def decode(frames: list[bytes]) -> dict[str, Any]:
    """Inverse of :func:`encode`."""
    buffers = frames[1:]
    if not buffers:
        return json.loads(frames[0])

    def hook(obj: dict[str, Any]) -> Any:
        if obj.get(MARKER) == "bytes" and len(obj) == 2:
            return bytes(buffers[obj["i"]])
        return obj

    return json.loads(frames[0], object_hook=hook)
