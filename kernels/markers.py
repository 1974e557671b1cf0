"""The ``"$kp"`` markers: how values that JSON cannot hold travel inside JSON text.

This module owns every marker and the strict JSON that carries them; the wire
format to the workers (:mod:`.protocol`), the gRPC ``Value`` (``kernelpit.service
.values``), the CLI's ``--json`` output and ``%kp push``/``pull`` all build on it.
A marker is an object whose ``"$kp"`` key names what it stands for::

    {"$kp": "bytes", "i": N}                    bytes: binary buffer N of the message
    {"$kp": "bytes", "b64": "..."}              bytes inline as base64, where there are no buffers
    {"$kp": "array", "t": "q", "i": N}          an array.array (t: its typecode)
    {"$kp": "list", "t": "d" | "q", "i": N}     a long list of plain floats / int64, packed
    {"$kp": "arrow", "t": KIND, ..., "i": N}    Arrow data (:mod:`.arrow`), or "shm" for shared memory
    {"$kp": "pickle", "i": N}                   a pickled object (opt-in per pool)
    {"$kp": "float", "v": "NaN"}                a non-finite float ("NaN", "Infinity", "-Infinity")
    {"$kp": "tuple", "items": [...]}            a tuple, where tuples must stay tuples (%kp push/pull)
    {"$kp": "dict", "items": {...}}             a dict that has a "$kp" key of its own, escaped

The JSON text is always strict (RFC 8259): JavaScript's ``JSON.parse``, Go,
Rust's serde and Java read it.  A non-finite float becomes a ``float`` marker
and comes back as the same float; text that spells ``NaN`` or ``Infinity`` as
bare words is refused.  Standard library only: imported inside worker kernels.
"""

from __future__ import annotations

import base64
import json
import math
from typing import Any, Callable

MARKER = "$kp"
_MARKER_BYTES = MARKER.encode()

_FLOAT_NAMES = {"NaN": math.nan, "Infinity": math.inf, "-Infinity": -math.inf}
_COMPACT = {"separators": (",", ":"), "ensure_ascii": False}


class MarkerError(ValueError):
    """JSON text or a marker that cannot be read."""


def buffer_ref(kind: str, index: int, **meta: Any) -> dict[str, Any]:
    """A marker for binary buffer ``index`` of the message: ``{"$kp": kind, **meta, "i": index}``."""
    return {MARKER: kind, **meta, "i": index}


def inline_bytes(data: Any) -> dict[str, str]:
    """Bytes carried inside the JSON text itself, as base64."""
    return {MARKER: "bytes", "b64": base64.b64encode(bytes(data)).decode("ascii")}


def nonfinite(value: float) -> dict[str, str]:
    """The marker of NaN, inf or -inf."""
    name = "NaN" if value != value else ("Infinity" if value > 0 else "-Infinity")
    return {MARKER: "float", "v": name}


def finite(obj: Any) -> Any:
    """``obj`` with every non-finite float in it (at any depth) replaced by its marker;
    containers are copied only where something changed (tuples become lists, as in JSON)."""
    kind = type(obj)
    if kind is float or isinstance(obj, float):
        return obj if math.isfinite(obj) else nonfinite(obj)
    if kind is dict:
        out = None
        for key, value in obj.items():
            new = finite(value)
            if new is not value:
                if out is None:
                    out = dict(obj)
                out[key] = new
        return obj if out is None else out
    if kind is list or kind is tuple:
        out = None
        for i, value in enumerate(obj):
            new = finite(value)
            if new is not value:
                if out is None:
                    out = list(obj)
                out[i] = new
        return obj if out is None and kind is list else (list(obj) if out is None else out)
    return obj


def dumps(obj: Any, default: Callable[[Any], Any] | None = None) -> str:
    """Strict, compact JSON text of ``obj``; ``default`` turns other objects into markers.

    Non-finite floats become ``float`` markers.  Finding one costs a second pass over
    ``obj``, which ordinary values never pay; ``default`` is still called once per object
    (its results are kept), so whatever it does (append a buffer, park a blob) happens once.
    """
    if default is None:
        try:
            return json.dumps(obj, allow_nan=False, **_COMPACT)
        except ValueError as exc:
            if not _out_of_range(exc):
                raise
        return json.dumps(finite(obj), allow_nan=False, **_COMPACT)
    seen: dict[int, tuple[Any, Any]] = {}

    def once(o: Any) -> Any:
        hit = seen.get(id(o))
        if hit is None:
            result = default(o)
            if isinstance(result, float) and not math.isfinite(result):
                result = nonfinite(result)   # e.g. a NumPy float32 NaN, turned into a float
            hit = seen[id(o)] = (o, result)  # o is kept alive, so its id is not reused
        return hit[1]

    try:
        return json.dumps(obj, default=once, allow_nan=False, **_COMPACT)
    except ValueError as exc:
        if not _out_of_range(exc):
            raise
    return json.dumps(finite(obj), default=once, allow_nan=False, **_COMPACT)


def _out_of_range(exc: ValueError) -> bool:
    return str(exc).startswith("Out of range float values")


def _bare_constant(name: str) -> Any:
    raise MarkerError(f"{name} is not JSON (RFC 8259); send a non-finite float as "
                      f'{{"{MARKER}": "float", "v": "{name}"}}')


Handlers = dict[str, Callable[[dict[str, Any]], Any]]


def loads(text: str | bytes, handlers: Handlers | None = None) -> Any:
    """Parse strict JSON, turning markers back into values.

    ``float`` markers are read here; ``handlers`` maps the other marker kinds to a
    function of the marker object (kinds without a handler stay plain dicts).  Raises
    :class:`MarkerError` for bare NaN/Infinity and for an unreadable ``float`` marker, and
    ``json.JSONDecodeError`` (a ValueError) for text that is not JSON.
    """
    if (_MARKER_BYTES if isinstance(text, bytes) else MARKER) not in text:
        return json.loads(text, parse_constant=_bare_constant)
    table = handlers or {}

    def hook(obj: dict[str, Any]) -> Any:
        kind = obj.get(MARKER)
        if kind is None:
            return obj
        if kind == "float":
            try:
                return _FLOAT_NAMES[obj["v"]]
            except (KeyError, TypeError):
                raise MarkerError(f"a float marker must be {{\"{MARKER}\": \"float\", \"v\": "
                                  f"\"NaN\" | \"Infinity\" | \"-Infinity\"}}, got {obj!r}") from None
        handler = table.get(kind)
        return obj if handler is None else handler(obj)

    return json.loads(text, object_hook=hook, parse_constant=_bare_constant)


def read_inline_bytes(marker: dict[str, Any]) -> bytes | None:
    """The bytes of an inline (base64) bytes marker; None when it refers to a buffer instead."""
    data = marker.get("b64")
    if data is None:
        return None
    try:
        return base64.b64decode(data, validate=True)
    except (ValueError, TypeError) as exc:
        raise MarkerError(f"a bytes marker's base64 text cannot be read: {exc}") from None
