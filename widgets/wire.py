"""Values moved between the notebook and a worker kernel by ``%kp push`` / ``%kp pull``.

Only what survives a round trip exactly may move: None, bool, int, float, str,
bytes, and lists/tuples/dicts (string keys) of those.  Everything else is
refused with a message naming the variable, its type and what to do.  Standard
library only: this module is imported inside worker kernels too.
"""

from __future__ import annotations

from typing import Any

from kernelpit.kernels import markers
from kernelpit.kernels.markers import MARKER


class NotMovable(TypeError):
    """A value that cannot be moved between kernels."""


def _check(value: Any, where: str) -> Any:
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (bytes, bytearray, memoryview)):
        return markers.inline_bytes(value)
    if isinstance(value, tuple):
        return {MARKER: "tuple", "items": [_check(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [_check(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise NotMovable(f"{where} has a key of type {type(k).__name__} ({k!r}); only "
                                 "string keys can be moved")
            out[k] = _check(v, f"{where}[{k!r}]")
        if MARKER in out:
            out = {MARKER: "dict", "items": out}
        return out
    kind = f"{type(value).__module__}.{type(value).__qualname__}".removeprefix("builtins.")
    raise NotMovable(f"{where} is a {kind}, which cannot be moved: only JSON values (None, bool, "
                     "int, float, str, list, tuple, dict with str keys) and bytes can; convert it "
                     "first (e.g. arr.tolist(), df.to_dict(), pickle.dumps(obj) if you trust both "
                     "ends)")


_RESTORE: markers.Handlers = {
    "bytes": markers.read_inline_bytes,
    "tuple": lambda marker: tuple(marker["items"]),
    "dict": lambda marker: marker["items"],
}


def dumps(value: Any, name: str = "the value") -> str:
    """Strict JSON text of a movable value; raises NotMovable naming ``name`` otherwise."""
    return markers.dumps(_check(value, name))


def loads(text: str) -> Any:
    return markers.loads(text, _RESTORE)
