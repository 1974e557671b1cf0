"""The bridge's ``/metrics`` endpoint (``kernelpit serve --metrics-address HOST:PORT``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ..pool.manager import PoolManager
    from ..telemetry.metrics import MetricsServer


class BridgeMetrics:
    """The pool's metrics on a registry of the bridge's own, served over HTTP(S) from
    :meth:`serve` to :meth:`close`.  Off (nothing imported) without an address.

    The address is checked when the bridge is made, before any kernel starts: plaintext on
    a non-loopback address is refused (``telemetry.metrics.metrics_server``) unless
    ``ssl_context`` is given.
    """

    def __init__(self, manager: "PoolManager", address: str | None,
                 ssl_context: Any = None) -> None:
        self.address = address
        self.ssl_context = ssl_context
        self.server: MetricsServer | None = None
        self.registry: Any = None
        if address is None:
            return
        from prometheus_client import CollectorRegistry

        from ..telemetry import metrics

        metrics.check_address(address, ssl_context)
        self.registry = CollectorRegistry()
        metrics.attach(manager, self.registry)

    def serve(self) -> None:
        if self.address is not None and self.server is None:
            from ..telemetry.metrics import metrics_server
            self.server = metrics_server(self.address, self.registry, self.ssl_context)

    @property
    def url(self) -> str | None:
        return self.server.url if self.server is not None else None

    def close(self) -> None:
        if self.server is not None:
            self.server.close()
            self.server = None
