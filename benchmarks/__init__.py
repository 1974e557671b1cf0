"""Kernelpit's benchmark suite; run it with ``python -m benchmarks`` (see docs/performance.md)."""
