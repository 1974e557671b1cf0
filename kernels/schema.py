"""Parameter schemas derived from a tool's signature, and argument checks.

:func:`describe_parameters` turns a Python signature with type hints into a
JSON Schema object (what other languages and the ``tools`` listing see) plus
the ordered parameter list needed to bind positional arguments.
:func:`check_arguments` validates a call against that description; the pool
runs it before a call is queued, so bad arguments never reach a worker.

Only the standard library is used: this module is imported inside kernels.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from typing import Any, Callable

from .shared_bytes import BINARY

_SIMPLE = {
    int: {"type": "integer"},
    float: {"type": "number"},
    str: {"type": "string"},
    bool: {"type": "boolean"},
    bytes: {"type": "string", "format": "binary"},
    type(None): {"type": "null"},
    list: {"type": "array"},
    tuple: {"type": "array"},
    dict: {"type": "object"},
}


def type_schema(hint: Any) -> dict[str, Any]:
    """JSON Schema for one type hint; ``{}`` (anything) where no check applies."""
    if hint is inspect.Parameter.empty or hint is Any:
        return {}
    if hint in _SIMPLE:
        return dict(_SIMPLE[hint])
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if origin is typing.Union or (hasattr(types, "UnionType") and origin is types.UnionType):
        parts = [type_schema(a) for a in args]
        if any(p == {} for p in parts):
            return {}
        return {"anyOf": parts}
    if origin is typing.Literal:
        return {"enum": list(args)}
    if origin in (list, tuple, set, frozenset) or origin in (typing.List, typing.Sequence):
        schema: dict[str, Any] = {"type": "array"}
        if origin is list and args:
            schema["items"] = type_schema(args[0])
        return schema
    if origin is dict:
        schema = {"type": "object"}
        if len(args) == 2:
            schema["additionalProperties"] = type_schema(args[1])
        return schema
    name = getattr(hint, "__qualname__", None) or str(hint)
    return {"x-python-type": name}


def _jsonable(value: Any) -> bool:
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


def describe_parameters(func: Callable[..., Any]) -> dict[str, Any]:
    """Describe ``func``'s parameters: ``{"schema": JSON Schema, "params": [...]}``."""
    sig = inspect.signature(func)
    try:
        hints = typing.get_type_hints(func)
    except Exception:  # unresolvable string annotations: fall back to raw ones
        hints = {n: p.annotation for n, p in sig.parameters.items()}
    properties: dict[str, Any] = {}
    required: list[str] = []
    params: list[dict[str, Any]] = []
    extra = False
    for name, p in sig.parameters.items():
        schema = type_schema(hints.get(name, inspect.Parameter.empty))
        entry: dict[str, Any] = {"name": name, "kind": p.kind.name, "schema": schema}
        if p.kind is p.VAR_KEYWORD:
            extra = True
        elif p.kind is not p.VAR_POSITIONAL:
            prop = dict(schema)
            if p.default is p.empty:
                required.append(name)
            elif _jsonable(p.default):
                prop["default"] = p.default
            properties[name] = prop
        entry["required"] = p.default is p.empty and p.kind not in (p.VAR_KEYWORD, p.VAR_POSITIONAL)
        params.append(entry)
    schema = {"type": "object", "properties": properties, "required": required,
              "additionalProperties": extra}
    return {"schema": schema, "params": params}


def _matches(value: Any, schema: dict[str, Any]) -> bool:
    if not schema:
        return True
    if "anyOf" in schema:
        return any(_matches(value, s) for s in schema["anyOf"])
    if "enum" in schema:
        return value in schema["enum"]
    kind = schema.get("type")
    if kind is None:
        return True
    if kind == "integer":
        return isinstance(value, int) and not isinstance(value, bool)
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "null":
        return value is None
    if kind == "string":
        if schema.get("format") == "binary":
            return isinstance(value, BINARY)
        return isinstance(value, str)
    if kind == "array":
        if not isinstance(value, (list, tuple)):
            return False
        items = schema.get("items")
        return not items or all(_matches(v, items) for v in value)
    if kind == "object":
        if not isinstance(value, dict):
            return False
        inner = schema.get("additionalProperties")
        return not isinstance(inner, dict) or all(_matches(v, inner) for v in value.values())
    return True


def _type_name(schema: dict[str, Any]) -> str:
    if "anyOf" in schema:
        return " or ".join(_type_name(s) for s in schema["anyOf"])
    if "enum" in schema:
        return "one of " + ", ".join(repr(v) for v in schema["enum"])
    if schema.get("format") == "binary":
        return "bytes"
    names = {"integer": "int", "number": "float", "string": "str", "boolean": "bool",
             "null": "None", "array": "list", "object": "dict"}
    base = names.get(schema.get("type", ""), "any")
    if base == "list" and schema.get("items"):
        return f"list[{_type_name(schema['items'])}]"
    return base


def check_arguments(tool: str, params: list[dict[str, Any]], args: list[Any] | tuple[Any, ...],
                    kwargs: dict[str, Any]) -> str | None:
    """Return a message naming what does not fit, or None when the call binds."""
    positional = [p for p in params if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    var_pos = next((p for p in params if p["kind"] == "VAR_POSITIONAL"), None)
    var_kw = next((p for p in params if p["kind"] == "VAR_KEYWORD"), None)
    by_name = {p["name"]: p for p in params if p["kind"] not in ("VAR_POSITIONAL", "VAR_KEYWORD")}
    bound: dict[str, Any] = {}
    if len(args) > len(positional) and var_pos is None:
        return (f"{tool}() takes {len(positional)} positional argument(s) but {len(args)} were given; "
                "pass the others by name")
    for p, value in zip(positional, args):
        bound[p["name"]] = value
    for i, value in enumerate(args[len(positional):]):
        if var_pos and not _matches(value, var_pos["schema"]):
            return (f"argument {len(positional) + i + 1} for *{var_pos['name']} of {tool}() must be "
                    f"{_type_name(var_pos['schema'])}, got {type(value).__name__}")
    for name, value in kwargs.items():
        p = by_name.get(name)
        if p is None or p["kind"] == "POSITIONAL_ONLY":
            if var_kw is not None:
                if not _matches(value, var_kw["schema"]):
                    return (f"parameter '{name}' of {tool}() must be {_type_name(var_kw['schema'])}, "
                            f"got {type(value).__name__}")
                continue
            known = ", ".join(by_name) or "no parameters"
            return f"{tool}() got an unexpected parameter '{name}'; it takes: {known}"
        if name in bound:
            return f"{tool}() got multiple values for parameter '{name}'"
        bound[name] = value
    for name, p in by_name.items():
        if name not in bound:
            if p["required"]:
                return f"{tool}() is missing the required parameter '{name}'"
            continue
        if not _matches(bound[name], p["schema"]):
            return (f"parameter '{name}' of {tool}() must be {_type_name(p['schema'])}, "
                    f"got {type(bound[name]).__name__} {_short(bound[name])}")
    return None


def _short(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


_EXACT = {"integer": frozenset({int}), "number": frozenset({int, float}),
          "string": frozenset({str}), "boolean": frozenset({bool}),
          "null": frozenset({type(None)}), "array": frozenset({list, tuple}),
          "object": frozenset({dict})}


def _exact_types(schema: dict[str, Any]) -> frozenset[type] | None | bool:
    """The exact Python types a simple schema admits; None: anything; False: not simple."""
    if not schema or set(schema) <= {"default"}:
        return None
    if set(schema) - {"type", "default"} or schema.get("type") not in _EXACT:
        return False
    return _EXACT[schema["type"]]


def check_columns(tool: str, params: list[dict[str, Any]],
                  columns: list[list[Any]]) -> tuple[int, str] | None:
    """Check ``map``'s argument columns (column i: the i-th positional argument of every
    call, all of one length): ``(index, message)`` of the first call that does not fit, or None.

    Columns of simple types are checked with one set of types per column (a few tens of
    nanoseconds an item); anything else, or any doubt, takes the exact per-call check, which
    also finds the call and words the message.
    """
    if _columns_fit(params, columns):
        return None
    for index, item in enumerate(zip(*columns)):
        problem = check_arguments(tool, params, item, {})
        if problem:
            return index, problem
    return None


def _columns_fit(params: list[dict[str, Any]], columns: list[list[Any]]) -> bool:
    positional = [p for p in params if p["kind"] in ("POSITIONAL_ONLY", "POSITIONAL_OR_KEYWORD")]
    if any(p["required"] for p in params if p["kind"] == "KEYWORD_ONLY"):
        return False
    if any(p["kind"] == "VAR_POSITIONAL" for p in params):
        return False
    required = sum(1 for p in positional if p["required"])
    if not required <= len(columns) <= len(positional):
        return False
    for p, column in zip(positional, columns):
        allowed = _exact_types(p["schema"])
        if allowed is None:
            continue
        if allowed is False or not set(map(type, column)) <= allowed:
            return False
    return True
