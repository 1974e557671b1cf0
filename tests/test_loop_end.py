"""An asyncio handle its program did not close is closed when its event loop ends
(``kernelpit.loop_end``): a pool's kernels stop with ``asyncio.run()``, and a client's gRPC
channel closes before the loop does, so that a second ``asyncio.run()`` in the process
prints no ``RuntimeError: Event loop is closed`` from gRPC's poller.

Each case runs in a child process: what it checks (how ``asyncio.run()`` ends, gRPC's
poller, interpreter warnings) is per process."""

import json
import subprocess
import sys
import textwrap

import pytest

from conftest import ADAPTERS
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal

WARNING = "was not closed; it is closed now"


@pytest.fixture(scope="module")
def bridge(tmp_path_factory):
    portal = Portal("test-loop-end-bridge")
    b = Bridge([PoolConfig(name="default", adapters=["kp_tools"], workers=1, path=[ADAPTERS])],
               grace=2, discovery=tmp_path_factory.mktemp("discovery") / "kernelpit-bridge.json")
    portal.call(b.start)
    yield b
    portal.call(b.stop, 0)
    portal.stop()


def _run(script: str, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-W", "always::ResourceWarning", "-c",
                           textwrap.dedent(script), *args],
                          capture_output=True, text=True, timeout=120)


def test_clients_left_open_close_with_their_loop_and_grpc_stays_quiet(bridge):
    done = _run("""
        import asyncio, sys
        import kernelpit.aio

        async def left_open(address, token):
            client = await kernelpit.aio.connect(address, token, transport="grpc")
            return await client.call("add", 2, 3)

        async def closed(address, token):
            async with kernelpit.aio.connect(address, token, transport="grpc") as client:
                return await client.call("add", 1, 1)

        print(asyncio.run(left_open(*sys.argv[1:])))
        print(asyncio.run(left_open(*sys.argv[1:])))
        print(asyncio.run(closed(*sys.argv[1:])))
    """, bridge.address, bridge.token)
    assert done.returncode == 0, done.stderr
    assert done.stdout.split() == ["5", "5", "2"]
    # one warning for each client left open, none for the one closed
    assert done.stderr.count(WARNING) == 2, done.stderr
    assert f"a client of the bridge at {bridge.address}" in done.stderr
    assert "Traceback" not in done.stderr and "Event loop is closed" not in done.stderr, done.stderr
    # and the bridge serves on
    assert bridge.manager.started and not bridge.manager.closed


def test_a_pool_left_open_stops_its_kernels_with_its_loop_or_when_dropped():
    done = _run("""
        import asyncio, gc, json, sys
        import psutil
        import kernelpit.aio

        def running(pids):
            return [p for p in pids if psutil.pid_exists(p)
                    and psutil.Process(p).status() != psutil.STATUS_ZOMBIE]

        async def left_open():
            pool = await kernelpit.aio.Pool(adapters=["kp_tools"], workers=2, path=[sys.argv[1]]).start()
            assert await pool.call("add", 2, 3) == 5
            return [w.pid for w in await pool.workers()]

        async def dropped():
            pool = await kernelpit.aio.Pool(adapters=["kp_tools"], workers=1, path=[sys.argv[1]]).start()
            pids = [w.pid for w in await pool.workers()]
            kernels = [psutil.Process(p) for p in pids]
            del pool
            gc.collect()
            # the pool closes on this loop, in a task of its own, while this waits for its kernel
            await asyncio.to_thread(psutil.wait_procs, kernels, 30)
            return pids, running(pids)

        pids = asyncio.run(left_open())
        after_run = running(pids)  # right after asyncio.run(), long before this process ends
        dropped_pids, after_drop = asyncio.run(dropped())
        print(json.dumps({"pids": pids, "after_run": after_run,
                          "dropped": dropped_pids, "after_drop": after_drop}))
    """, ADAPTERS)
    assert done.returncode == 0, done.stderr
    found = json.loads(done.stdout)
    assert len(found["pids"]) == 2 and len(found["dropped"]) == 1
    assert found["after_run"] == [] and found["after_drop"] == [], found
    assert "a kernelpit.aio.Pool was not closed; it is closed now, as its event loop ends" \
        in done.stderr
    assert "a kernelpit.aio.Pool was not closed; it is closed now, as nothing refers to it" \
        in done.stderr
    assert "Traceback" not in done.stderr, done.stderr
