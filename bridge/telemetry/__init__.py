"""Telemetry: lifecycle events of the pool, Prometheus metrics and OpenTelemetry traces."""
