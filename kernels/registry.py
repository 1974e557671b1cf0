"""The ``@tool`` decorator and the table of tools a worker serves."""

from __future__ import annotations

import functools
import importlib
import inspect
import sys
import traceback
from dataclasses import dataclass, field
from types import ModuleType
from typing import Any, Callable

from .schema import describe_parameters

_ATTR = "__kernelpit_tool__"


@dataclass
class ToolSpec:
    """A registered tool: the function and what the host learns about it."""

    name: str
    func: Callable[..., Any]
    thread_safe: bool = False
    idempotent: bool = False
    description: dict[str, Any] = field(default_factory=dict)

    @functools.cached_property
    def kind(self) -> str:
        """How the agent runs it: "generator", "coroutine", "asyncgen" or "plain"."""
        f = self.func
        return ("generator" if inspect.isgeneratorfunction(f) else
                "coroutine" if inspect.iscoroutinefunction(f) else
                "asyncgen" if inspect.isasyncgenfunction(f) else "plain")


def tool(func: Callable[..., Any] | None = None, *, name: str | None = None,
         thread_safe: bool = False, idempotent: bool = False) -> Any:
    """Mark a plain function as a Kernelpit tool.

    Use bare (``@tool``) or with options (``@tool(name="fit", thread_safe=True)``).
    ``thread_safe`` lets a worker with ``concurrency > 1`` run several calls of
    it at once in threads; ``idempotent`` lets the pool retry it on a fresh
    worker after a crash.  The function itself is returned unchanged, so it
    stays callable and testable as plain Python.
    """

    def mark(f: Callable[..., Any]) -> Callable[..., Any]:
        if not callable(f):
            raise TypeError(f"@tool decorates functions, not {type(f).__name__}")
        spec = ToolSpec(name or f.__name__, f, thread_safe, idempotent)
        setattr(f, _ATTR, spec)
        return f

    return mark(func) if func is not None else mark


def describe(spec: ToolSpec, module: str) -> dict[str, Any]:
    func = spec.func
    try:
        signature = f"{spec.name}{inspect.signature(func, eval_str=True)}"
    except Exception:  # unresolvable string annotations: show them as written
        try:
            signature = f"{spec.name}{inspect.signature(func)}"
        except (TypeError, ValueError):
            signature = f"{spec.name}(...)"
    params = describe_parameters(func)
    return {
        "name": spec.name,
        "doc": inspect.cleandoc(func.__doc__ or ""),
        "signature": signature,
        "module": module,
        "schema": params["schema"],
        "params": params["params"],
        "thread_safe": spec.thread_safe,
        "idempotent": spec.idempotent,
        "streaming": inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func),
    }


class AdapterError(Exception):
    """An adapter module could not be loaded; the message names module and cause."""


def collect(module: ModuleType) -> list[ToolSpec]:
    """The tools a module exposes: every attribute marked by ``@tool``, once each."""
    seen: dict[int, ToolSpec] = {}
    for value in vars(module).values():
        spec = getattr(value, _ATTR, None)
        if isinstance(spec, ToolSpec) and id(spec) not in seen:
            seen[id(spec)] = spec
    return list(seen.values())


def load_adapters(names: list[str]) -> dict[str, ToolSpec]:
    """Import each adapter module and build the tool table.

    Raises :class:`AdapterError` naming the module for an import failure, a
    module with no tools, or a tool name that two functions claim.
    """
    table: dict[str, ToolSpec] = {}
    owner: dict[str, str] = {}
    for mod_name in names:
        try:
            module = importlib.import_module(mod_name)
        except BaseException as exc:  # SystemExit in an adapter must not kill the kernel
            tb = "".join(traceback.format_exception(type(exc), exc, exc.__traceback__))
            raise AdapterError(
                f"adapter module '{mod_name}' failed to import: {type(exc).__name__}: {exc}\n"
                f"(sys.path[0:3] = {sys.path[:3]})\n{tb}") from None
        specs = collect(module)
        if not specs:
            raise AdapterError(f"adapter module '{mod_name}' defines no tools; "
                               "decorate functions with @kernelpit.kernels.tool")
        for spec in specs:
            if spec.name in table and table[spec.name].func is not spec.func:
                raise AdapterError(
                    f"duplicate tool name '{spec.name}': defined in '{owner[spec.name]}' "
                    f"and again in '{mod_name}'; rename one with @tool(name=...)")
            if spec.name not in table:
                spec.description = describe(spec, mod_name)
                table[spec.name] = spec
                owner[spec.name] = mod_name
    return table
