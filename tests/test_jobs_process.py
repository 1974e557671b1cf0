"""Durable jobs across processes: submitters that die, bridges killed with -9 and restarted,
two bridges sharing one PostgreSQL store.  Each bridge is tests/jobs_bridge.py."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from conftest import wait_until
from jobs_fixtures import STORES, BridgeProcess, LoopThread, remote, store_target
from kernelpit.exceptions import Cancelled, InvalidArguments, JobLost, JobNotFound

SUBMIT_AND_DIE = """
import asyncio, json, os, sys
import grpc
from kernelpit.jobs.remote import RemoteJobs

async def main():
    jobs = RemoteJobs(grpc.aio.insecure_channel(sys.argv[1]))
    info = await jobs.submit("ticks", [], {"n": 40, "delay": 0.02})
    print(json.dumps({"id": info.id}), flush=True)
    os._exit(0)  # no goodbye: the job must not notice

asyncio.run(main())
"""


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture
def bridges():
    started: list[BridgeProcess] = []

    def start(store: str, **kw) -> BridgeProcess:
        b = BridgeProcess(store, **kw)
        started.append(b)
        return b

    yield start
    for b in started:
        b.stop()


@pytest.mark.parametrize("kind", STORES)
def test_a_submitter_dies_and_another_process_reattaches(kind, bridges, loop, tmp_path):
    bridge = bridges(store_target(kind, "reattach", str(tmp_path)))
    out = subprocess.run([sys.executable, "-c", SUBMIT_AND_DIE, bridge.address],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    job_id = json.loads(out.stdout)["id"]
    jobs = remote(bridge.address, loop)
    events = jobs.events(job_id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert [e.text for e in events if e.kind == "stdout"] == [f"tick {i}\n" for i in range(40)]
    assert events[-1].kind == "result" and events[-1].value == 40
    assert jobs.result(job_id) == 40
    middle = len(events) // 2
    assert [e.seq for e in jobs.events(job_id, after=middle)] == \
        [e.seq for e in events[middle:]]
    # the rest of the gRPC surface: list, keys, errors, delete
    keyed = jobs.submit("plus", [1, 2], {}, key="k1")
    assert jobs.submit("plus", [1, 2], {}, key="k1").id == keyed.id
    with pytest.raises(InvalidArguments, match="k1"):
        jobs.submit("plus", [1, 3], {}, key="k1")
    assert jobs.result(keyed.id) == 3
    newest = jobs.list(limit=1)
    assert [j.id for j in newest] == [keyed.id]
    assert [j.id for j in jobs.list(limit=5, before=keyed.id)] == [job_id]
    assert [j.id for j in jobs.list(state="succeeded", tool="ticks")] == [job_id]
    jobs.delete(job_id)
    with pytest.raises(JobNotFound):
        jobs.get(job_id)


def _runs(path) -> int:
    return len(path.read_text().splitlines()) if path.exists() else 0


@pytest.mark.parametrize("kind", STORES)
def test_kill_9_of_the_bridge_then_a_restart(kind, bridges, loop, tmp_path):
    store = store_target(kind, "restart", str(tmp_path))
    first = bridges(store, lease=1.5)
    jobs = remote(first.address, loop)
    finished = jobs.submit("blob", [], {"nbytes": 300_000})
    finished_value = jobs.result(finished.id)
    again, once = tmp_path / "idempotent", tmp_path / "not-idempotent"
    idem = jobs.submit("counted", [], {"path": str(again), "seconds": 2.5}, idempotent=True)
    plain = jobs.submit("counted", [], {"path": str(once), "seconds": 2.5})
    wait_until(lambda: _runs(again) == 1 and _runs(once) == 1)
    first.kill()

    second = bridges(store, lease=1.5)
    jobs = remote(second.address, loop)
    assert jobs.result(idem.id, timeout=60) == "done"
    info = jobs.get(idem.id)
    assert info.state == "succeeded" and info.attempt == 2
    assert _runs(again) == 2  # exactly once more
    events = jobs.events(idem.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    restarted = [e for e in events if e.kind == "restarted"]
    assert len(restarted) == 1 and restarted[0].attempt == 2
    with pytest.raises(JobLost, match="not idempotent"):
        jobs.result(plain.id)
    assert jobs.get(plain.id).state == "lost" and _runs(once) == 1
    assert jobs.result(finished.id) == finished_value  # finished results are intact
    assert [e.kind for e in jobs.events(finished.id)][-1] == "result"


def test_two_bridges_on_one_postgresql_store(bridges, loop, tmp_path):
    store = store_target("postgres", "shared", str(tmp_path))
    a, b = bridges(store, lease=1.5), bridges(store, lease=1.5)
    on_a, on_b = remote(a.address, loop), remote(b.address, loop)

    # a job submitted to A is followed and cancelled from B
    marker = tmp_path / "finished"
    job = on_a.submit("busy", [], {"seconds": 30, "path": str(marker)})
    wait_until(lambda: on_b.get(job.id).last_seq >= 2)
    assert on_b.get(job.id).owner == a.owner
    cancelled = on_b.cancel(job.id)
    assert cancelled.id == job.id
    events = on_b.events(job.id)  # B follows A's journal to its end
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    assert events[-1].kind == "error" and isinstance(events[-1].error, Cancelled)
    assert on_a.get(job.id).state == "cancelled"
    assert not marker.exists()

    # killing A hands its idempotent job to B once A's lease has expired
    runs = tmp_path / "runs"
    moved = on_a.submit("counted", [], {"path": str(runs), "seconds": 2.0}, idempotent=True)
    wait_until(lambda: _runs(runs) == 1)
    a.kill()
    assert on_b.result(moved.id, timeout=60) == "done"
    info = on_b.get(moved.id)
    assert info.attempt == 2 and _runs(runs) == 2
    assert [e.kind for e in on_b.events(moved.id)].count("restarted") == 1
