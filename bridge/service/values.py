"""Python values <-> ``kernelpit.v1.Value``: JSON text plus binary buffers, or raw bytes.

The JSON uses the core's wire convention (:mod:`kernelpit.kernels.protocol`):
``bytes`` nested anywhere inside a structure travel in ``Value.buffers`` and
are replaced by the marker ``{"$kp": "bytes", "i": N}``.  A value that is a
byte string as a whole travels in ``Value.raw``.  An unset Value is ``None``.
"""

from __future__ import annotations

import json
from typing import Any

from ..kernels.protocol import MARKER, SUPPORTED
from ..v1 import values_pb2 as pb

_EMPTY = pb.Value()


class BadValue(ValueError):
    """A value that cannot be sent, or a received Value that cannot be read."""


def to_value(obj: Any) -> pb.Value:
    """Encode a Python value (None, bool, int, float, str, bytes, list, tuple, dict)."""
    if obj is None:
        return _EMPTY
    if isinstance(obj, (bytes, bytearray, memoryview)):
        return pb.Value(raw=bytes(obj))
    buffers: list[bytes] = []

    def default(o: Any) -> Any:
        if isinstance(o, (bytes, bytearray, memoryview)):
            buffers.append(bytes(o))
            return {MARKER: "bytes", "i": len(buffers) - 1}
        raise BadValue(f"a value of type {type(o).__module__}.{type(o).__qualname__} cannot be "
                          f"sent to or from a bridge; supported types are {SUPPORTED}")

    try:
        text = json.dumps(obj, default=default, separators=(",", ":"), ensure_ascii=False)
    except (TypeError, ValueError) as exc:
        if isinstance(exc, BadValue):
            raise
        raise BadValue(f"cannot encode value: {exc}") from None
    return pb.Value(json=text, buffers=buffers) if buffers else pb.Value(json=text)


def from_value(value: pb.Value, what: str = "value") -> Any:
    """Decode a Value; a malformed one raises ValueError naming ``what`` it was."""
    kind = value.WhichOneof("kind")
    if kind is None:
        return None
    if kind == "raw":
        if value.encoding not in ("", "bytes"):
            raise BadValue(f"{what}: encoding '{value.encoding}' is not supported by this "
                              "bridge; send JSON or raw bytes")
        return value.raw
    if value.encoding not in ("", "json"):
        raise BadValue(f"{what}: a json value with encoding '{value.encoding}'; "
                          "leave encoding empty or set it to 'json'")
    buffers = value.buffers
    try:
        if not buffers and MARKER not in value.json:
            return json.loads(value.json)

        def hook(obj: dict[str, Any]) -> Any:
            if obj.get(MARKER) == "bytes" and len(obj) == 2:
                return bytes(buffers[obj["i"]])
            return obj

        return json.loads(value.json, object_hook=hook)
    except json.JSONDecodeError as exc:
        raise BadValue(f"{what} is not valid JSON: {exc}") from None
    except RecursionError:
        raise BadValue(f"{what} is nested too deeply to decode (JSON arrays/objects more "
                       "than about 1,000 levels deep); flatten it") from None
    except (IndexError, TypeError) as exc:
        raise BadValue(f"{what} has a bytes marker {{\"$kp\": \"bytes\", \"i\": N}} with no "
                          f"matching buffer ({len(buffers)} buffer(s) sent): {exc}") from None
