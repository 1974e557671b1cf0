"""Malloc tuning of Kernelpit's own processes (kernelpit.kernels.heap)."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

CHECK = "from kernelpit.kernels import heap; print(heap.keep_freed_memory())"


def _run(env: dict[str, str]) -> str:
    return subprocess.run([sys.executable, "-c", CHECK], env=env, capture_output=True,
                          text=True, check=True).stdout.strip()


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_workers_and_the_bridge_tune_malloc_unless_the_environment_does():
    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    assert _run(env) == "True"
    # a user who tunes glibc through its environment variables keeps their settings
    assert _run({**env, "MALLOC_TRIM_THRESHOLD_": "131072"}) == "False"
    assert _run({**env, "MALLOC_MMAP_THRESHOLD_": "131072"}) == "False"
