"""Prometheus metrics of pools, built on their telemetry events (prometheus_client).

Counters and histograms move with the events a pool publishes (``call.finished``,
``worker.crashed``, ``worker.recycled``, ``orphans.reaped``): :class:`PoolMetrics` is a sink
on each attached pool's :class:`~kernelpit.telemetry.bus.TelemetryBus`.  Gauges (workers
by state, RSS per worker, queue depth, per tenant too, sessions) are read from the pools' state when
scraped, by one custom collector, so a worker that is gone has no series any more.

One :class:`PoolMetrics` per registry holds the collectors; every pool attached to that
registry shares them and is told apart by the ``pool`` label (:func:`attach`), so several
pools on one registry raise no duplicate-registration error.  Labels stay bounded: ``tool``
is only ever a registered tool's name ("" for a call refused before its tool was known),
``outcome`` one of six words, ``reason`` a crash or recycle reason; no call ids, no
argument values.

``metrics_server(address, registry, ssl_context=None)`` serves ``/metrics`` over HTTP, or
HTTPS with an ``ssl.SSLContext`` (the bridge's TLS settings make it).
"""

from __future__ import annotations

import threading
import weakref
from bisect import bisect_left
from typing import TYPE_CHECKING, Any, Iterator

from ..addresses import is_loopback, split_host_port
from .events import TelemetryEvent

if TYPE_CHECKING:
    from ..pool.manager import PoolManager

#: seconds; calls of a warm pool take from 0.1 ms (a no-op) to minutes
DURATION_BUCKETS = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5,
                    5.0, 10.0, 30.0, 60.0, 300.0, float("inf"))
WAIT_BUCKETS = (0.0001, 0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1.0, 5.0, 30.0, float("inf"))
#: the ``state`` label of kernelpit_workers (every one is reported, 0 when none)
WORKER_STATES = ("starting", "idle", "busy", "recycling", "unhealthy", "stopping", "spare")

_registries: "weakref.WeakKeyDictionary[Any, PoolMetrics]" = weakref.WeakKeyDictionary()
_lock = threading.Lock()


def _prometheus() -> Any:
    try:
        import prometheus_client
    except ImportError:
        raise ImportError("metrics need prometheus_client: pip install 'kernelpit[metrics]'") \
            from None
    return prometheus_client


class _Histogram:
    """One histogram series, kept as plain numbers (bucket counts, sum): no lock, about
    0.2 µs an observation against 2 µs for a prometheus_client child."""

    __slots__ = ("bounds", "counts", "total")

    def __init__(self, bounds: tuple[float, ...]) -> None:
        self.bounds = bounds
        self.counts = [0] * len(bounds)
        self.total = 0.0

    def observe(self, value: float) -> None:
        self.counts[bisect_left(self.bounds, value)] += 1
        self.total += value

    def exposition(self) -> tuple[list[tuple[str, float]], float]:
        counts, total = list(self.counts), self.total  # copies: the scrape runs on its thread
        running, buckets = 0, []
        for bound, n in zip(self.bounds, counts):
            running += n
            buckets.append(("+Inf" if bound == float("inf") else repr(bound), running))
        return buckets, total


class PoolMetrics:
    """The kernelpit_* metrics of one registry, shared by every pool attached to it.

    The event-driven ones (counters, histograms) are plain dicts keyed by their label
    values, updated by :meth:`sink` on the pools' loops; one collector turns them, and the
    state of the attached pools, into metric families when the registry is scraped.  (A
    prometheus_client Counter or Histogram child takes a lock and costs about 2 µs per
    update; these cost a dict lookup.)
    """

    def __init__(self, registry: Any) -> None:
        _prometheus()
        self.registry = registry
        self.calls: dict[tuple[str, str, str], int] = {}          # (pool, tool, outcome)
        self.duration: dict[tuple[str, str], _Histogram] = {}      # (pool, tool)
        self.queue_wait: dict[str, _Histogram] = {}                # pool
        self.crashes: dict[tuple[str, str], int] = {}             # (pool, reason)
        self.recycles: dict[tuple[str, str], int] = {}            # (pool, reason)
        self.orphans = 0
        self.managers: "weakref.WeakSet[PoolManager]" = weakref.WeakSet()
        #: job runners (kernelpit.jobs.JobRunner) whose store's counts are kernelpit_jobs
        self.runners: weakref.WeakSet[Any] = weakref.WeakSet()
        #: blob lanes (kernelpit.service.blob_lane.BlobLane) whose counts are kernelpit_blob_lane_*
        self.lanes: weakref.WeakSet[Any] = weakref.WeakSet()
        #: blob stores (kernelpit.service.blobs.BlobStore): kernelpit_results_streamed
        self.stores: weakref.WeakSet[Any] = weakref.WeakSet()
        registry.register(_Collector(self))

    def sink(self, event: TelemetryEvent) -> None:
        """The bus sink: count what the event says (runs on the pool's loop, inline)."""
        kind = event.kind
        if kind == "call.finished":
            data = event.data
            outcome = data["outcome"]
            key = (event.pool, event.tool, outcome)
            calls = self.calls
            calls[key] = calls.get(key, 0) + 1
            if outcome != "rejected":
                wait = self.queue_wait.get(event.pool)
                if wait is None:
                    wait = self.queue_wait[event.pool] = _Histogram(WAIT_BUCKETS)
                wait.observe(data["queue_wait"])
                run_time = data["run_time"]
                if run_time is not None:
                    series = self.duration.get(key[:2])
                    if series is None:
                        series = self.duration[key[:2]] = _Histogram(DURATION_BUCKETS)
                    series.observe(run_time)
        elif kind == "worker.crashed":
            key = (event.pool, event.data["reason"])
            self.crashes[key] = self.crashes.get(key, 0) + 1
        elif kind == "worker.recycled":
            key = (event.pool, event.data["reason"])
            self.recycles[key] = self.recycles.get(key, 0) + 1
        elif kind == "orphans.reaped":
            self.orphans += event.data["kernels"]

    def add(self, manager: "PoolManager") -> None:
        self.managers.add(manager)
        manager.telemetry.add_sink(self.sink, SINK_KINDS)

    def add_jobs(self, runner: Any) -> None:
        """Publish ``kernelpit_jobs{state}``: the jobs of the runner's store, read at scrape."""
        self.runners.add(runner)

    def add_blobs(self, store: Any, lane: Any = None) -> None:
        """Publish a bridge's blob counts, read at scrape: its results streamed
        (``kernelpit_results_streamed``) and its blob lane's (``kernelpit_blob_lane_*``)."""
        self.stores.add(store)
        if lane is not None:
            self.lanes.add(lane)

    def remove(self, manager: "PoolManager") -> None:
        self.managers.discard(manager)
        manager.telemetry.remove_sink(self.sink)


#: the kinds the metrics count (the bus builds no other event for them)
SINK_KINDS = frozenset({"call.finished", "worker.crashed", "worker.recycled", "orphans.reaped"})


class _Collector:
    """Every kernelpit_* family of one registry, made when it is scraped (on the scraping
    thread: it only copies dicts, which is atomic under the GIL)."""

    def __init__(self, metrics: PoolMetrics) -> None:
        self._metrics = metrics

    def describe(self) -> list[Any]:
        return []  # no fixed names to claim: registering never clashes

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import (CounterMetricFamily, GaugeMetricFamily,
                                            HistogramMetricFamily)
        m = self._metrics
        calls = CounterMetricFamily(
            "kernelpit_calls", "Calls ended, by outcome (ok, error: the tool raised, crashed, "
            "cancelled, deadline, rejected: queue full, invalid arguments, not found, tainted). "
            "A map() counts one call per chunk.", labels=["pool", "tool", "outcome"])
        for labels, n in dict(m.calls).items():
            calls.add_metric(labels, n)
        duration = HistogramMetricFamily(
            "kernelpit_call_duration_seconds", "Run time of calls that reached a worker, from "
            "being sent to it to their end.", labels=["pool", "tool"])
        for labels, hist in dict(m.duration).items():
            buckets, total = hist.exposition()
            duration.add_metric(list(labels), buckets, total)
        wait = HistogramMetricFamily("kernelpit_queue_wait_seconds", "Time accepted calls "
                                     "waited for a worker.", labels=["pool"])
        for pool, hist in dict(m.queue_wait).items():
            buckets, total = hist.exposition()
            wait.add_metric([pool], buckets, total)
        crashes = CounterMetricFamily(
            "kernelpit_worker_crashes", "Worker processes that ended unasked, by reason "
            "(segfault, oom, killed, exit, ...; restart, unhealthy, cancel_grace when the pool "
            "killed them).", labels=["pool", "reason"])
        for labels, n in dict(m.crashes).items():
            crashes.add_metric(labels, n)
        recycles = CounterMetricFamily(
            "kernelpit_worker_recycles", "Workers replaced without downtime, by reason "
            "(max_calls, ttl, memory, manual, unhealthy).", labels=["pool", "reason"])
        for labels, n in dict(m.recycles).items():
            recycles.add_metric(labels, n)
        orphans = CounterMetricFamily("kernelpit_orphans_reaped", "Kernels left by dead runs "
                                      "and ended at a pool's start.", value=m.orphans)
        yield from (calls, duration, wait, crashes, recycles, orphans)
        yield from _state(list(m.managers))
        yield from _jobs(list(m.runners))
        yield from _lanes(list(m.lanes))
        stores = list(m.stores)
        if stores:
            yield CounterMetricFamily("kernelpit_results_streamed", "Results sent on to their "
                                      "client while their worker was still making them "
                                      "(streamed results).", value=sum(s.streamed for s in stores))


def _lanes(lanes: list[Any]) -> Iterator[Any]:
    """The blob lane's counters: blobs and bytes sent, requests refused by status."""
    if not lanes:
        return
    from prometheus_client.core import CounterMetricFamily

    yield CounterMetricFamily("kernelpit_blob_lane_blobs", "Result blobs sent whole over the "
                              "bridge's blob lane.", value=sum(lane.served for lane in lanes))
    yield CounterMetricFamily("kernelpit_blob_lane_bytes", "Bytes of the result blobs sent "
                              "whole over the blob lane.",
                              value=sum(lane.served_bytes for lane in lanes))
    refused = CounterMetricFamily("kernelpit_blob_lane_refused", "Blob lane requests refused, "
                                  "by gRPC status (UNAUTHENTICATED, PERMISSION_DENIED, "
                                  "NOT_FOUND, INVALID_ARGUMENT).", labels=["status"])
    totals: dict[str, int] = {}
    for lane in lanes:
        for status, n in dict(lane.refused).items():
            totals[status] = totals.get(status, 0) + n
    for status, n in totals.items():
        refused.add_metric([status], n)
    yield refused


def _jobs(runners: list[Any]) -> Iterator[Any]:
    """``kernelpit_jobs{state}``: one read of each store's counts per scrape (an indexed
    GROUP BY on the store's reader connection), never the journal."""
    if not runners:
        return
    from prometheus_client.core import GaugeMetricFamily

    totals: dict[str, int] = {}
    answered = False
    for runner in runners:
        counts = runner.counts_now()
        if counts is None:
            continue
        answered = True
        for state, n in counts.items():
            totals[state] = totals.get(state, 0) + n
    if answered:
        jobs = GaugeMetricFamily("kernelpit_jobs", "Durable jobs in the job store, by state "
                                 "(queued, running, succeeded, failed, cancelled, lost); several "
                                 "bridges on one store each report all of its jobs.",
                                 labels=["state"])
        for state, n in totals.items():
            jobs.add_metric([state], n)
        yield jobs


def _state(managers: "list[PoolManager]") -> Iterator[Any]:
    """Gauges read from the pools as they are now: a worker that is gone has no series."""
    from prometheus_client.core import GaugeMetricFamily

    depth = GaugeMetricFamily("kernelpit_queue_depth", "Calls waiting for a worker.",
                              labels=["pool"])
    workers = GaugeMetricFamily("kernelpit_workers", "Worker kernels by state (spare: warm "
                                "spares).", labels=["pool", "state"])
    rss = GaugeMetricFamily("kernelpit_worker_rss_bytes", "Resident memory of a worker kernel "
                            "and its children, last sample.", labels=["pool", "worker"])
    sessions = GaugeMetricFamily("kernelpit_sessions", "Open sessions.", labels=["pool"])
    by_tenant = GaugeMetricFamily(
        "kernelpit_queue_depth_by_tenant", "Calls waiting for a worker, by tenant: a configured "
        "or token name (every client of a shared token under its name), else other.",
        labels=["pool", "tenant"])
    for manager in managers:
        if manager.closed:
            continue
        label = manager.tenants.labeller()
        per_pool_sessions: dict[str, int] = {}
        for session in list(manager.sessions):
            per_pool_sessions[session.pool] = per_pool_sessions.get(session.pool, 0) + 1
        for name, group in list(manager.groups.items()):
            depth.add_metric([name], len(group.queue))
            per_label: dict[str, int] = {}
            for tenant, n in dict(group.queue.waiting).items():
                key = label(tenant)
                per_label[key] = per_label.get(key, 0) + n
            for key, n in sorted(per_label.items()):
                by_tenant.add_metric([name, key], n)
            counts = dict.fromkeys(WORKER_STATES, 0)
            for w in list(group.workers.values()):
                state = str(w.state)
                if w.spare and state == "idle":
                    state = "spare"
                if state in counts:
                    counts[state] += 1
                if state != "dead":
                    rss.add_metric([name, str(w.id)], w.rss)
            for state, n in counts.items():
                workers.add_metric([name, state], n)
            sessions.add_metric([name], per_pool_sessions.get(name, 0))
    yield from (depth, by_tenant, workers, rss, sessions)


def for_registry(registry: Any) -> PoolMetrics:
    """The shared collectors of ``registry`` (made and registered on first use)."""
    with _lock:
        metrics = _registries.get(registry)
        if metrics is None:
            metrics = _registries[registry] = PoolMetrics(registry)
        return metrics


def attach(manager: "PoolManager", metrics: Any) -> PoolMetrics | None:
    """Publish ``manager``'s metrics: ``metrics`` True (prometheus_client's default
    registry), a ``CollectorRegistry``, or False/None (none)."""
    if metrics is None or metrics is False:
        return None
    if metrics is True:
        registry = _prometheus().REGISTRY
    elif hasattr(metrics, "register") and hasattr(metrics, "collect"):
        registry = metrics
    else:
        raise TypeError(f"metrics= takes True (the default registry), a prometheus_client "
                        f"CollectorRegistry, or False; got {type(metrics).__name__}")
    pool_metrics = for_registry(registry)
    pool_metrics.add(manager)
    return pool_metrics


class MetricsServer:
    """``/metrics`` of a registry over HTTP(S), on a daemon thread; :meth:`close` stops it."""

    def __init__(self, address: str, registry: Any, ssl_context: Any = None) -> None:
        from wsgiref.simple_server import make_server

        prom = _prometheus()
        from prometheus_client.exposition import ThreadingWSGIServer, _SilentHandler

        host, port = split_address(address)
        server_class = type("MetricsHTTPServer", (ThreadingWSGIServer,), {})
        import socket
        if ":" in host:
            server_class.address_family = socket.AF_INET6
        try:
            self._httpd = make_server(host, port, prom.make_wsgi_app(registry), server_class,
                                      handler_class=_SilentHandler)
        except OSError as exc:
            raise OSError(f"cannot serve metrics on {address} ({exc.strerror or exc}); pick "
                          "another --metrics-address (port 0: any free one)") from None
        if ssl_context is not None:
            self._httpd.socket = ssl_context.wrap_socket(self._httpd.socket, server_side=True)
        self.scheme = "https" if ssl_context is not None else "http"
        bound = self._httpd.server_address[1]
        self.address = f"[{host}]:{bound}" if ":" in host else f"{host}:{bound}"
        self._thread = threading.Thread(target=self._httpd.serve_forever,
                                        name="kernelpit-metrics", daemon=True)
        self._thread.start()

    @property
    def url(self) -> str:
        return f"{self.scheme}://{self.address}/metrics"

    def close(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()
        self._thread.join(timeout=5)


def split_address(address: str) -> tuple[str, int]:
    """``host:port`` / ``[v6]:port`` / ``:port`` (loopback) -> (host, port)."""
    parts = split_host_port(address)
    if parts is None:
        raise ValueError(f"a metrics address is HOST:PORT (e.g. 127.0.0.1:9464), got {address!r}")
    host, port = parts
    return host or "127.0.0.1", port


def check_address(address: str, ssl_context: Any = None) -> None:
    """Refuse plaintext metrics on a non-loopback address (ValueError saying what to do).
    The one place the rule is checked."""
    host, _ = split_address(address)
    if ssl_context is None and not is_loopback(host):
        raise ValueError(
            f"refusing to serve metrics in plaintext on {host}, which is not a loopback "
            "address: anyone on that network could read them. Serve them on 127.0.0.1 "
            "(--metrics-address 127.0.0.1:PORT) and scrape through a tunnel or a local agent, "
            "or start the bridge with TLS (--tls-cert/--tls-key), whose certificate then "
            "serves /metrics over HTTPS")


def metrics_server(address: str, registry: Any, ssl_context: Any = None) -> MetricsServer:
    """Serve ``/metrics`` of ``registry`` at ``address``: over HTTPS with ``ssl_context`` (an
    ``ssl.SSLContext``, the bridge's TLS certificate), else plaintext and only on loopback
    (:func:`check_address`)."""
    check_address(address, ssl_context)
    return MetricsServer(address, registry, ssl_context)
