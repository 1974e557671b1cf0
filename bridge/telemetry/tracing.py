"""OpenTelemetry traces, only when the process uses OpenTelemetry.

Tracing is on when ``opentelemetry.trace`` is already imported (by the program, which
set up a tracer provider) and a real tracer provider is set.  This module never imports
OpenTelemetry itself to find out: a process without it (or that never loaded it) pays one
``sys.modules`` lookup per call and imports nothing (tests/test_observability.py checks it
in a process where importing ``opentelemetry`` fails).

What is recorded:

* a **client** span per call made through ``Pool`` / ``aio.Pool`` / a client (and so the
  CLI), named ``kernelpit.call <tool>`` (:func:`client_span`, :func:`traced_call`,
  :func:`traced_stream`);
* a **server** span per call the bridge serves, child of the client's span
  (:func:`server_span`); the context travels in ``CallOptions.trace_context`` (every call
  RPC, the multiplexed ``Calls`` stream too) or, from other clients, the standard
  ``traceparent`` metadata;
* the W3C trace context of the current span goes in the call's message to the worker
  (:func:`carrier`), where the agent makes it current around the tool
  (``kernelpit.kernels.agent``): spans the tool starts are its children, and
  ``trace.get_current_span()`` has the caller's trace id.
"""

from __future__ import annotations

import contextlib
import sys
from typing import Any, AsyncIterator, Awaitable, Callable, Iterator, Mapping

_cache: tuple[Any, Any] = (None, None)  # (provider, tracer or None)


def tracer() -> Any:
    """The kernelpit tracer, or None when tracing is off (see the module docstring)."""
    api = sys.modules.get("opentelemetry.trace")
    if api is None:
        return None
    global _cache
    provider = api.get_tracer_provider()
    if provider is not _cache[0]:
        real = not isinstance(provider, (api.ProxyTracerProvider, api.NoOpTracerProvider))
        from .. import __version__
        _cache = (provider, provider.get_tracer("kernelpit", __version__) if real else None)
    return _cache[1]


def _propagator() -> Any:
    from opentelemetry.trace.propagation.tracecontext import TraceContextTextMapPropagator
    return TraceContextTextMapPropagator()


def carrier() -> dict[str, str] | None:
    """The W3C trace context (``traceparent``, ``tracestate``) of the current span, to send
    with a call; None when tracing is off or no span is current."""
    if tracer() is None:
        return None
    from opentelemetry import trace
    if not trace.get_current_span().get_span_context().is_valid:
        return None
    out: dict[str, str] = {}
    _propagator().inject(out)
    return out or None


def _start(name: str, kind_name: str, parent: Any = None,
           attributes: Mapping[str, Any] | None = None) -> Any:
    from opentelemetry import trace
    return tracer().start_as_current_span(name, context=parent, kind=getattr(
        trace.SpanKind, kind_name), attributes=dict(attributes or {}), record_exception=True,
        set_status_on_exception=True)


@contextlib.contextmanager
def client_span(tool: str, what: str = "call") -> Iterator[Any]:
    """A CLIENT span around one call of ``tool`` (tracing must be on: see :func:`tracer`)."""
    with _start(f"kernelpit.{what} {tool}", "CLIENT",
                attributes={"kernelpit.tool": tool, "rpc.system": "kernelpit"}) as span:
        yield span


async def traced_call(call: Callable[..., Awaitable[Any]], tool: str, *args: Any,
                      what: str = "call") -> Any:
    """``await call(tool, *args)`` inside a client span."""
    with client_span(tool, what):
        return await call(tool, *args)


async def traced_stream(events: Callable[[], AsyncIterator[Any]], tool: str
                        ) -> AsyncIterator[Any]:
    """The events of ``events()`` in a client span that ends with the stream.  The span is
    current only while the call is being sent (the first step), not in the consumer's code
    between events."""
    from opentelemetry import context, trace
    span = tracer().start_span(f"kernelpit.stream {tool}", kind=trace.SpanKind.CLIENT,
                               attributes={"kernelpit.tool": tool, "rpc.system": "kernelpit"})
    agen = events()
    try:
        token = context.attach(trace.set_span_in_context(span))
        try:
            event = await agen.__anext__()
        finally:
            context.detach(token)
        while True:
            if getattr(event, "kind", "") == "error":
                span.set_status(trace.Status(trace.StatusCode.ERROR, str(event.error)))
            yield event
            event = await agen.__anext__()
    except StopAsyncIteration:
        pass
    except BaseException as exc:
        span.record_exception(exc)
        span.set_status(trace.Status(trace.StatusCode.ERROR, f"{type(exc).__name__}: {exc}"))
        raise
    finally:
        span.end()
        aclose = getattr(agen, "aclose", None)
        if aclose is not None:
            await aclose()


def server_span(tool: str, trace_context: Mapping[str, str] | None,
                metadata: Any = None) -> Any:
    """A SERVER span for a call the bridge serves, child of the caller's context
    (``trace_context``, else a ``traceparent`` in the gRPC ``metadata``); a no-op context
    manager when tracing is off in the bridge."""
    if tracer() is None:
        return contextlib.nullcontext()
    carrier_in = dict(trace_context or {})
    if not carrier_in and metadata:
        carrier_in = {k: v for k, v in metadata if k in ("traceparent", "tracestate")}
    parent = _propagator().extract(carrier_in) if carrier_in else None
    return _start(f"kernelpit.serve {tool}", "SERVER", parent,
                  {"kernelpit.tool": tool, "rpc.system": "kernelpit"})


def carry(fn: Callable[..., Awaitable[Any]]) -> Callable[..., Awaitable[Any]]:
    """``fn`` made to run in this thread's trace context on another thread's event loop (the
    blocking API's portal); ``fn`` itself when tracing is off or no span is current."""
    if tracer() is None:
        return fn
    from opentelemetry import context, trace
    current = context.get_current()
    if not trace.get_current_span(current).get_span_context().is_valid:
        return fn

    async def in_context(*args: Any, **kwargs: Any) -> Any:
        token = context.attach(current)
        try:
            return await fn(*args, **kwargs)
        finally:
            context.detach(token)
    return in_context


def carry_iter(agen: AsyncIterator[Any]) -> AsyncIterator[Any]:
    """``agen`` iterated in this thread's trace context (see :func:`carry`)."""
    if tracer() is None:
        return agen
    from opentelemetry import context
    current = context.get_current()

    async def in_context() -> AsyncIterator[Any]:
        token = context.attach(current)
        try:
            async for item in agen:
                yield item
        finally:
            context.detach(token)
            aclose = getattr(agen, "aclose", None)
            if aclose is not None:
                await aclose()
    return in_context()
