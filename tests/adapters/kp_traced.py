"""Tools that look at OpenTelemetry from inside a worker (tests/test_observability.py)."""

import sys

from kernelpit.kernels import tool

_exporter = None


def _exporter_here():
    """An SDK tracer provider with an in-memory exporter in this worker (made once)."""
    global _exporter
    if _exporter is None:
        from opentelemetry import trace
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import SimpleSpanProcessor
        from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

        _exporter = InMemorySpanExporter()
        provider = TracerProvider()
        provider.add_span_processor(SimpleSpanProcessor(_exporter))
        trace.set_tracer_provider(provider)
    return _exporter


@tool
def trace_ids() -> dict:
    """The trace context the tool runs in, and that of a span it starts."""
    from opentelemetry import trace

    exporter = _exporter_here()
    current = trace.get_current_span().get_span_context()
    with trace.get_tracer("kp_traced").start_as_current_span("inside the tool"):
        pass
    child = exporter.get_finished_spans()[-1]
    return {"trace": f"{current.trace_id:032x}", "span": f"{current.span_id:016x}",
            "child_trace": f"{child.context.trace_id:032x}",
            "child_parent": f"{child.parent.span_id:016x}" if child.parent else ""}


@tool
def otel_modules() -> list:
    """The OpenTelemetry modules this worker has imported."""
    return sorted(m for m in sys.modules if m.split(".")[0] == "opentelemetry")


@tool
def add(a: int, b: int = 0) -> int:
    return a + b
