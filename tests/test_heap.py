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


GROWTH = """
import ctypes
libc = ctypes.CDLL(None)
libc.sbrk.restype, libc.sbrk.argtypes = ctypes.c_void_p, [ctypes.c_ssize_t]
libc.malloc.restype, libc.malloc.argtypes = ctypes.c_void_p, [ctypes.c_size_t]
{setup}
start = libc.sbrk(0)
while libc.sbrk(0) == start:
    libc.malloc(64 * 1024)  # below the mmap threshold: from the main heap
print(libc.sbrk(0) - start)
"""


def _heap_growth(setup: str, env: dict[str, str]) -> int:
    out = subprocess.run([sys.executable, "-c", GROWTH.format(setup=setup)], env=env,
                         capture_output=True, text=True, check=True).stdout
    return int(out.strip().splitlines()[-1])


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's mallopt")
def test_a_client_grows_its_heap_with_room_for_the_next_result_unless_the_environment_says():
    from kernelpit.kernels.heap import CLIENT_TOP_PAD

    env = {k: v for k, v in os.environ.items() if not k.startswith("MALLOC_")}
    client = ("from kernelpit.remote.backend import RemoteBackend\n"
              "from kernelpit.remote.target import Target\n"
              "RemoteBackend(Target('127.0.0.1:9', None))")  # no bridge needed to be made
    assert _heap_growth("", env) < CLIENT_TOP_PAD // 4  # glibc's own pad: 128 KiB
    assert _heap_growth(client, env) >= CLIENT_TOP_PAD
    # a user who sets glibc's pad through its environment keeps it
    assert _heap_growth(client, {**env, "MALLOC_TOP_PAD_": "131072"}) < CLIENT_TOP_PAD // 4


def _faults(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        return int(f.read().rsplit(")", 1)[1].split()[7])  # minflt


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_a_worker_reuses_the_memory_its_last_call_freed_and_gives_it_back_when_idle():
    import psutil

    import kernelpit
    from conftest import ADAPTERS, wait_until

    mb = 192  # buffers a call makes and drops (packing a large table of floats takes ~210)
    with kernelpit.Pool(adapters=["kp_heap"], workers=1, path=[ADAPTERS]) as pool:
        (worker,) = pool.workers()
        proc = psutil.Process(worker.pid)
        pool.call("churn", mb)  # the first time, every page is new
        faults = _faults(worker.pid)
        pool.call("churn", mb)
        faults = _faults(worker.pid) - faults
        # the next call writes into the pages the last one freed, not into fresh ones
        assert faults < (mb << 20) // 4096 // 8, faults
        kept = proc.memory_info().rss
        pool.call("heap_idle", 0.5)
        # idle: they go back to the system
        wait_until(lambda: proc.memory_info().rss < kept - (mb << 20) // 2, timeout=30)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's malloc_trim")
def test_max_memory_recycles_a_worker_for_what_it_holds_not_for_what_it_keeps_for_reuse():
    import kernelpit
    from conftest import ADAPTERS, wait_until

    limit = 200 << 20  # an idle worker is 45-55 MiB here
    with kernelpit.Pool(adapters=["kp_heap"], workers=1, path=[ADAPTERS], max_memory=limit,
                        health_interval=0.2) as pool:
        (first,) = pool.workers()
        pool.call("heap_never_idle")  # only the pool's request can give memory back
        pool.call("churn", 192)  # frees 192 MiB, which the worker keeps for its next call
        # over the limit only for what it keeps: asked to give that back, not replaced
        wait_until(lambda: pool.workers()[0].rss < limit // 2, timeout=30)
        (worker,) = pool.workers()
        assert (worker.id, worker.recycles, worker.recycle_reason) == (first.id, 0, None)
        assert pool.call("churn", 16) == 1  # and it goes on serving
        # memory it really holds over the limit still recycles it
        pool.call("hold", 256)
        replaced = wait_until(lambda: [w for w in pool.workers() if w.id != first.id
                                       and w.state == "idle"], timeout=60)
        assert replaced[0].recycle_reason == "memory"
