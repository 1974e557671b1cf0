"""Observability: telemetry events, Prometheus metrics scraped over real HTTP, OpenTelemetry
traces from the caller into the tool (embedded and through a bridge), and zero cost when
OpenTelemetry is not there.  Real kernels, a real bridge, no mocks."""

import json
import os
import signal
import subprocess
import sys
import textwrap
import threading
import urllib.request

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.parser import text_string_to_metric_families

import kernelpit
from conftest import ADAPTERS, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.telemetry.events import KINDS, OUTCOMES, kind_filter
from kernelpit.telemetry.metrics import metrics_server

SETTINGS = dict(adapters=["kp_tools"], path=[ADAPTERS])


def scrape(url: str) -> dict[tuple[str, tuple], float]:
    """``/metrics`` over HTTP, parsed: {(sample name, sorted labels): value}."""
    with urllib.request.urlopen(url, timeout=5) as reply:
        text = reply.read().decode()
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def value(samples, name: str, **labels) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def series(samples, name: str) -> list[dict]:
    return [dict(labels) for (n, labels) in samples if n == name]


class Collector:
    """A subscription read on a thread, so a test can wait for what it expects."""

    def __init__(self, stream):
        self.stream = stream
        self.events: list = []
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        for event in self.stream:
            self.events.append(event)

    def kinds(self, **match):
        return [e.kind for e in list(self.events)
                if all(getattr(e, k) == v for k, v in match.items())]

    def close(self):
        self.stream.close()
        self._thread.join(timeout=5)


# -- events: the catalogue and the filter (no kernels) ------------------------------------------

def test_kind_filter_takes_names_and_prefixes_and_refuses_unknown_kinds():
    assert kind_filter(None) is None and kind_filter("*") is None
    accepts = kind_filter(["worker.*", "call.finished"])
    assert accepts("worker.crashed") and accepts("call.finished")
    assert not accepts("call.started") and not accepts("session.opened")
    assert accepts("telemetry.dropped")  # a gap is always reported
    with pytest.raises(ValueError, match="unknown telemetry event kind 'call.done'"):
        kind_filter(["call.done"])
    with pytest.raises(ValueError, match="no telemetry event kind starts with"):
        kind_filter(["wrker.*"])


# -- an embedded pool: metrics and events together -----------------------------------------------

@pytest.fixture(scope="module")
def observed():
    """Two pools on one registry (shared collectors, told apart by ``pool``), served on a
    real HTTP port."""
    registry = CollectorRegistry()
    with kernelpit.Pool(name="main", workers=2, metrics=registry, **SETTINGS) as pool, \
            kernelpit.Pool(name="other", workers=1, metrics=registry, **SETTINGS) as other:
        server = metrics_server("127.0.0.1:0", registry)
        try:
            yield pool, other, server.url
        finally:
            server.close()


def test_counters_move_with_calls_and_label_sets_stay_bounded(observed):
    pool, other, url = observed
    before = scrape(url)
    events = Collector(pool.subscribe("call.*"))
    for i in range(3):
        assert pool.call("add", i, 1) == i + 1
    other.call("add", 1, 1)
    with pytest.raises(KeyError):
        pool.call("raise_key")
    with pytest.raises(kernelpit.ToolNotFound):
        pool.call("no_such_tool_xyz")
    with pytest.raises(kernelpit.InvalidArguments):
        pool.call("add", "not an int")
    with pytest.raises(kernelpit.DeadlineExceeded):
        pool.options(deadline=0.3).call("spin", 30)
    assert pool.map("add", [1, 2, 3], [1, 1, 1], chunksize=3) == [2, 3, 4]
    after = scrape(url)

    def moved(**labels):
        return (value(after, "kernelpit_calls_total", **labels)
                - value(before, "kernelpit_calls_total", **labels))
    assert moved(pool="main", tool="add", outcome="ok") == 4  # 3 calls and one map chunk
    assert moved(pool="other", tool="add", outcome="ok") == 1
    assert moved(pool="main", tool="raise_key", outcome="error") == 1
    assert moved(pool="main", tool="spin", outcome="deadline") == 1
    assert moved(pool="main", tool="add", outcome="rejected") == 1  # invalid arguments
    assert moved(pool="", tool="", outcome="rejected") == 1  # an unknown tool is no label
    duration = value(after, "kernelpit_call_duration_seconds_count", pool="main", tool="add")
    assert duration - value(before, "kernelpit_call_duration_seconds_count",
                            pool="main", tool="add") == 4
    assert value(after, "kernelpit_queue_wait_seconds_count", pool="other") >= 1

    tools = {"", *(t.name for t in pool.tools())}
    for labels in series(after, "kernelpit_calls_total"):
        assert set(labels) == {"pool", "tool", "outcome"}
        assert labels["tool"] in tools and labels["outcome"] in OUTCOMES
    for name in ("kernelpit_call_duration_seconds_bucket", "kernelpit_queue_wait_seconds_bucket"):
        for labels in series(after, name):
            assert "call_id" not in labels and labels.get("tool", "add") in tools
    assert {l["state"] for l in series(after, "kernelpit_workers")} <= {
        "starting", "idle", "busy", "recycling", "unhealthy", "stopping", "spare"}
    assert sum(v for (n, labels), v in after.items() if n == "kernelpit_workers"
               and ("pool", "main") in labels) == 2
    assert value(after, "kernelpit_queue_depth", pool="main") == 0
    assert value(after, "kernelpit_sessions", pool="other") == 0

    # the events behind them: each call queued, started and finished, in that order
    wait_until(lambda: events.kinds(tool="spin")[-1:] == ["call.finished"])
    events.close()
    finished = [e for e in events.events if e.kind == "call.finished"]
    assert [e.data["outcome"] for e in finished] == [
        "ok", "ok", "ok", "error", "rejected", "rejected", "deadline", "ok"]
    for event in finished:
        if event.call_id is not None:
            assert events.kinds(call_id=event.call_id) == [
                "call.queued", "call.started", "call.finished"]
    assert finished[-1].data["run_time"] > 0 and finished[-1].data["queue_wait"] >= 0


def test_sessions_gauge_and_session_events(observed):
    pool, _, url = observed
    events = Collector(pool.subscribe("session.*"))
    with pool.session() as s:
        s.call("add", 1, 2)
        assert value(scrape(url), "kernelpit_sessions", pool="main") == 1
        sid = s.id
    wait_until(lambda: len(events.events) == 2)
    events.close()
    assert [(e.kind, e.data["session"]) for e in events.events] == [
        ("session.opened", sid), ("session.closed", sid)]
    assert value(scrape(url), "kernelpit_sessions", pool="main") == 0


def test_a_killed_worker_is_counted_its_series_removed_and_its_events_in_order(observed):
    pool, _, url = observed
    events = Collector(pool.subscribe(["worker.*", "call.finished"]))
    before = scrape(url)
    victim = pool.workers()[0]
    assert {"pool": "main", "worker": str(victim.id)} in series(before, "kernelpit_worker_rss_bytes")
    os.kill(victim.pid, signal.SIGKILL)
    wait_until(lambda: len([w for w in pool.workers() if w.state == "idle"]) == 2
               and victim.id not in {w.id for w in pool.workers()})
    after = scrape(url)
    assert value(after, "kernelpit_worker_crashes_total", pool="main", reason="killed") - value(
        before, "kernelpit_worker_crashes_total", pool="main", reason="killed") == 1
    workers = {l["worker"] for l in series(after, "kernelpit_worker_rss_bytes")
               if l["pool"] == "main"}
    assert str(victim.id) not in workers and len(workers) == 2

    # a recycle, by hand: counted with its reason; the recycled worker's series go too
    other = next(w for w in pool.workers() if w.id != victim.id)
    pool.recycle(other.id)
    wait_until(lambda: other.id not in {w.id for w in pool.workers()})
    final = scrape(url)
    assert value(final, "kernelpit_worker_recycles_total", pool="main", reason="manual") - value(
        before, "kernelpit_worker_recycles_total", pool="main", reason="manual") == 1
    assert str(other.id) not in {l["worker"] for l in series(final, "kernelpit_worker_rss_bytes")}

    wait_until(lambda: "worker.recycled" in events.kinds())
    events.close()
    crashed = next(e for e in events.events if e.kind == "worker.crashed")
    assert crashed.worker == victim.id and crashed.data["reason"] == "killed"
    assert crashed.data["signal"] == "SIGKILL"
    # per source in order: the replacement starts, then is ready
    replacement = next(e.worker for e in events.events if e.kind == "worker.starting")
    assert events.kinds(worker=replacement)[:2] == ["worker.starting", "worker.ready"]
    recycled = next(e for e in events.events if e.kind == "worker.recycled")
    assert recycled.worker == other.id and recycled.data["reason"] == "manual"
    assert events.kinds(worker=recycled.data["successor"])[:2] == ["worker.starting",
                                                                   "worker.ready"]


def test_a_slow_subscriber_loses_events_counted_never_blocking_the_pool(observed):
    pool, _, _ = observed
    backend, options = pool._async._backend, pool._async._options

    async def scenario():
        telemetry = backend.manager.telemetry
        dropped_before = telemetry.dropped
        slow = telemetry.subscribe("call.*", maxsize=4)
        for i in range(10):  # 30 events for a queue of 4 that nobody reads meanwhile
            assert await backend.call("add", (i, 1), {}, options) == i + 1
        first = await slow.next_batch()
        missed = slow.missed
        await backend.call("add", (0, 0), {}, options)
        after = await slow.next_batch()
        await slow.aclose()
        return first, missed, telemetry.dropped - dropped_before, after

    first, missed, dropped, after = pool._portal.call(scenario)
    assert [e.kind for e in first] == ["call.queued", "call.started", "call.finished",
                                       "call.queued"]
    assert missed == 26 and dropped == 26
    # the gap is reported in the stream, before the next event the subscriber gets
    assert after[0].kind == "telemetry.dropped" and after[0].data == {"count": 26}
    assert [e.kind for e in after[1:]] == ["call.queued", "call.started", "call.finished"]


# -- the bridge: /metrics, its refusal, events and traces through it -------------------------------

def test_bridge_serves_metrics_and_refuses_plaintext_on_other_addresses():
    with pytest.raises(ValueError, match="not a loopback address.*TLS"):
        Bridge([PoolConfig(name="default", workers=1, **SETTINGS)], discovery=False,
               metrics_address="0.0.0.0:0")
    portal = Portal("test-metrics-bridge")
    bridge = Bridge([PoolConfig(name="default", workers=1, **SETTINGS)], discovery=False,
                    metrics_address="127.0.0.1:0")
    portal.call(bridge.start)
    try:
        with kernelpit.connect(bridge.address, bridge.token) as client:
            events = Collector(client.subscribe(["call.finished"]))
            wait_until(lambda: client.call("add", 1, 2) == 3 and events.events)
            samples = scrape(bridge.metrics.url)
            assert value(samples, "kernelpit_calls_total", pool="default", tool="add",
                         outcome="ok") >= 1
            assert value(samples, "kernelpit_workers", pool="default", state="idle") == 1
            events.close()
            assert events.events[0].data["outcome"] == "ok" and events.events[0].tool == "add"
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()


TRACED = textwrap.dedent("""
    import asyncio, json, sys
    from opentelemetry import trace
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SimpleSpanProcessor
    from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    tracer = trace.get_tracer("test")

    import kernelpit, kernelpit.aio
    from kernelpit.config import PoolConfig
    from kernelpit.service.server import Bridge
    from kernelpit.sync import Portal

    settings = dict(adapters=["kp_traced"], path=[sys.argv[1]], workers=1)
    seen = {}

    def run(name, fn):
        with tracer.start_as_current_span(name) as span:
            ids = fn()
        seen[name] = {"caller_trace": f"{span.get_span_context().trace_id:032x}",
                      "caller_span": f"{span.get_span_context().span_id:016x}", "ids": ids}

    with kernelpit.Pool(**settings) as pool:
        run("embedded", lambda: pool.call("trace_ids"))
        run("embedded stream", lambda: [e.value for e in pool.stream("trace_ids")
                                        if e.kind == "result"][0])
    portal = Portal()
    bridge = Bridge([PoolConfig(name="default", **settings)], discovery=False)
    portal.call(bridge.start)
    try:
        with kernelpit.connect(bridge.address, bridge.token) as client:
            run("bridge", lambda: client.call("trace_ids"))

        async def multiplexed():
            async with kernelpit.aio.connect(bridge.address, bridge.token) as client:
                with tracer.start_as_current_span("bridge multiplexed") as span:
                    ids = await client.call("trace_ids")
                seen["bridge multiplexed"] = {
                    "caller_trace": f"{span.get_span_context().trace_id:032x}",
                    "caller_span": f"{span.get_span_context().span_id:016x}", "ids": ids}
        asyncio.run(multiplexed())
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()
    spans = [{"name": s.name, "kind": s.kind.name, "trace": f"{s.context.trace_id:032x}",
              "span": f"{s.context.span_id:016x}",
              "parent": f"{s.parent.span_id:016x}" if s.parent else ""}
             for s in exporter.get_finished_spans()]
    print(json.dumps({"seen": seen, "spans": spans}))
""")


def test_the_tool_runs_in_the_callers_trace_embedded_and_through_a_bridge(tmp_path):
    script = tmp_path / "traced.py"
    script.write_text(TRACED)
    out = subprocess.run([sys.executable, str(script), ADAPTERS], capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    seen, spans = result["seen"], result["spans"]
    by_id = {s["span"]: s for s in spans}
    for name, got in seen.items():
        ids = got["ids"]
        # trace.get_current_span() inside the tool has the caller's trace id ...
        assert ids["trace"] == got["caller_trace"], name
        # ... and a span the tool starts is a child of the call's span
        assert ids["child_parent"] == ids["span"] and ids["child_trace"] == got["caller_trace"]
        inner = by_id[ids["span"]]  # the span the tool ran in was recorded by the caller side
        if name.startswith("bridge"):
            assert inner["kind"] == "SERVER" and inner["name"] == "kernelpit.serve trace_ids"
            client = by_id[inner["parent"]]
        else:
            client = inner
        assert client["kind"] == "CLIENT" and client["parent"] == got["caller_span"], name
        assert client["name"] in ("kernelpit.call trace_ids", "kernelpit.stream trace_ids")


ZERO = textwrap.dedent("""
    import importlib.abc, json, sys

    class Refuse(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in ("opentelemetry", "prometheus_client"):
                raise ImportError(f"{name} is blocked in this test")
            return None

    sys.meta_path.insert(0, Refuse())
    import kernelpit
    from kernelpit.config import PoolConfig
    from kernelpit.service.server import Bridge
    from kernelpit.sync import Portal

    settings = dict(adapters=["kp_traced"], path=[sys.argv[1]], workers=1)
    with kernelpit.Pool(**settings) as pool:
        events = pool.subscribe("call.*")
        assert pool.call("add", 1, 2) == 3
        assert [e.value for e in pool.stream("add", 2, 2) if e.kind == "result"] == [4]
        assert pool.map("add", [1, 2], [3, 4]) == [4, 6]
        kinds = [next(events).kind for _ in range(3)]
        worker_modules = pool.call("otel_modules")
        try:
            kernelpit.Pool(metrics=True, **settings)
            metrics_error = ""
        except ImportError as exc:
            metrics_error = str(exc)
    portal = Portal()
    bridge = Bridge([PoolConfig(name="default", **settings)], discovery=False)
    portal.call(bridge.start)
    try:
        with kernelpit.connect(bridge.address, bridge.token) as client:
            assert client.call("add", 1, 1) == 2
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()
    loaded = sorted(m for m in sys.modules
                    if m.split(".")[0] in ("opentelemetry", "prometheus_client"))
    print(json.dumps({"loaded": loaded, "worker": worker_modules, "kinds": kinds,
                      "metrics_error": metrics_error}))
""")


def test_without_opentelemetry_nothing_is_imported_and_calls_work(tmp_path):
    script = tmp_path / "zero.py"
    script.write_text(ZERO)
    out = subprocess.run([sys.executable, str(script), ADAPTERS], capture_output=True,
                         text=True, timeout=90)
    assert out.returncode == 0, out.stderr
    result = json.loads(out.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []       # the controller never tried to
    assert result["worker"] == []       # untraced calls carry no context: the worker neither
    assert result["kinds"] == ["call.queued", "call.started", "call.finished"]
    assert "pip install 'kernelpit[metrics]'" in result["metrics_error"]


def test_the_catalogue_is_documented():
    doc = (os.path.dirname(__file__) + "/../docs/observability.md")
    text = open(doc).read()
    for kind in KINDS:
        assert f"`{kind}`" in text, kind
