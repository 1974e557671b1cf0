"""Durable jobs on an embedded pool: the same suite on SQLite and on PostgreSQL."""

from __future__ import annotations

import asyncio
import os
import sqlite3
import threading

import pyarrow as pa
import pytest

from conftest import ADAPTERS, wait_until
from jobs_fixtures import STORES, LoopThread, Sync, store_target
from kernelpit.config import PoolConfig
from kernelpit.exceptions import (Cancelled, DeadlineExceeded, InvalidArguments, JobLost,
                                  JobNotFound, SessionLost, ToolNotFound)
from kernelpit.jobs import JobRunner, StoreError, open_store
from kernelpit.pool import PoolManager
from kernelpit.pool.call import CallOptions

BIG = 300_000  # above the inline limit: stored beside the row (a file, or chunks in PostgreSQL)


@pytest.fixture(scope="module")
def loop():
    lt = LoopThread()
    yield lt
    lt.close()


@pytest.fixture(scope="module")
def manager(loop):
    m = PoolManager([PoolConfig(adapters=["kp_jobs"], workers=2, path=[ADAPTERS])])
    loop.run(m.start())
    yield m
    loop.run(m.close())


@pytest.fixture(scope="module", params=STORES)
def target(request, tmp_path_factory):
    return request.param, store_target(request.param, "jobs_suite",
                                       str(tmp_path_factory.mktemp("jobs")))


def _runner(loop, manager, target, namespace="default", **kw):
    async def start():
        store = await open_store(target, namespace=namespace)
        return await JobRunner(manager, store, lease=3.0, **kw).start()
    return loop.run(start())


def _stop(loop, runner):
    async def stop():
        await runner.stop()
        await runner.store.close()
    loop.run(stop())


@pytest.fixture(scope="module")
def jobs(loop, manager, target):
    runner = _runner(loop, manager, target[1])
    yield Sync(runner, loop)
    _stop(loop, runner)


def submit(jobs, tool, *args, options=None, **kwargs):
    return jobs.submit(tool, list(args), kwargs, options or CallOptions())


def test_journal_has_every_event_in_order_with_contiguous_seq(jobs):
    info = submit(jobs, "ticks", n=5)
    assert jobs.result(info.id) == 5
    events = jobs.events(info.id)
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert kinds[-1] == "result" and events[-1].value == 5
    assert "started" in kinds
    assert [e.text for e in events if e.kind == "stdout"] == [f"tick {i}\n" for i in range(5)]
    # the last progress is always kept
    assert [e for e in events if e.kind == "progress"][-1].done == 5
    done = jobs.get(info.id)
    assert done.state == "succeeded" and done.attempt == 1 and done.worker is not None
    assert done.progress == {"done": 5, "total": 5, "message": "tick 5"}
    assert done.last_seq == len(events) and done.finished >= done.started >= done.created


def test_events_after_k_replay_exactly_the_rest(jobs):
    info = submit(jobs, "ticks", n=4)
    jobs.result(info.id)
    full = jobs.events(info.id)
    for k in (0, 1, len(full) // 2, len(full) - 1, len(full)):
        rest = jobs.events(info.id, after=k)
        assert [(e.seq, e.kind, e.data) for e in rest] == \
            [(e.seq, e.kind, e.data) for e in full[k:]]


def test_a_reader_joining_mid_run_gets_the_rest_live_without_gap(jobs):
    info = submit(jobs, "ticks", n=30, delay=0.03)
    wait_until(lambda: jobs.get(info.id).last_seq >= 6)
    later = jobs.events(info.id, after=3)
    assert [e.seq for e in later] == list(range(4, later[-1].seq + 1))
    assert later[-1].kind == "result" and later[-1].seq == jobs.get(info.id).last_seq
    assert len([e for e in jobs.events(info.id) if e.kind == "stdout"]) == 30


def test_values_round_trip_bytes_and_arrow_tables(jobs):
    data = bytes(range(256)) * 10
    info = submit(jobs, "same", {"b": data, "n": [1.5, None, "x"]})
    assert jobs.result(info.id) == {"b": data, "n": [1.5, None, "x"]}
    big = jobs.result(submit(jobs, "blob", nbytes=BIG).id)
    assert isinstance(big, bytes) and len(big) == BIG and big[:256] == bytes(range(256))
    table = jobs.result(submit(jobs, "table", n=1000).id)
    assert isinstance(table, pa.Table) and table.num_rows == 1000
    assert table.column("s")[999].as_py() == "999"


def test_a_failed_job_raises_what_the_call_raised(jobs):
    info = submit(jobs, "fails", message="nope")
    with pytest.raises(ValueError, match="nope"):
        jobs.result(info.id)
    done = jobs.get(info.id)
    assert done.state == "failed" and isinstance(done.error, ValueError)
    assert jobs.events(info.id)[-1].kind == "error"


def test_cancel_interrupts_the_running_tool(jobs, manager, tmp_path):
    marker = tmp_path / "finished"
    info = submit(jobs, "busy", seconds=30, path=str(marker))
    wait_until(lambda: jobs.get(info.id).last_seq >= 2)  # started, and it printed "busy"
    worker = jobs.get(info.id).worker
    pid = next(w.pid for w in manager.workers() if w.id == worker)
    done = jobs.cancel(info.id)
    assert done.state == "cancelled"
    with pytest.raises(Cancelled):
        jobs.result(info.id)
    # the tool stopped (an interrupt, not a restart): the same kernel is idle again
    wait_until(lambda: any(w.id == worker and w.pid == pid and w.current_call is None
                           for w in manager.workers()), timeout=4)
    assert not marker.exists()
    assert jobs.events(info.id)[-1].kind == "error"


def test_deadline_interrupts_the_job(jobs):
    info = jobs.submit("busy", [], {"seconds": 30}, CallOptions(), deadline=0.5)
    with pytest.raises(DeadlineExceeded):
        jobs.result(info.id, timeout=20)
    assert jobs.get(info.id).state == "failed"


def test_result_timeout_is_the_builtin_timeout_and_the_job_keeps_running(jobs):
    info = submit(jobs, "busy", seconds=30)
    with pytest.raises(TimeoutError) as caught:
        jobs.result(info.id, timeout=0.2)
    assert type(caught.value) is TimeoutError and "keeps running" in str(caught.value)
    assert jobs.get(info.id).state in ("queued", "running")
    jobs.cancel(info.id)


def test_idempotency_key_returns_the_same_job_or_refuses_other_arguments(jobs):
    first = jobs.submit("plus", [1, 2], {}, CallOptions(), key="nightly")
    assert jobs.result(first.id) == 3
    again = jobs.submit("plus", [1, 2], {}, CallOptions(), key="nightly")
    assert again.id == first.id and again.state == "succeeded"
    with pytest.raises(InvalidArguments, match="nightly"):
        jobs.submit("plus", [1, 5], {}, CallOptions(), key="nightly")
    jobs.delete(first.id)
    fresh = jobs.submit("plus", [1, 5], {}, CallOptions(), key="nightly")
    assert fresh.id != first.id and jobs.result(fresh.id) == 6


def test_submit_checks_the_tool_and_arguments_before_storing(jobs):
    before = len(jobs.list(limit=10_000))
    with pytest.raises(ToolNotFound):
        submit(jobs, "nosuchtool")
    with pytest.raises(InvalidArguments, match="plus"):
        submit(jobs, "plus", "not a number")
    assert len(jobs.list(limit=10_000)) == before


def test_delete_removes_a_finished_job_and_refuses_a_running_one(jobs):
    running = submit(jobs, "busy", seconds=30)
    with pytest.raises(InvalidArguments, match="cancel it first"):
        jobs.delete(running.id)
    jobs.cancel(running.id)
    jobs.delete(running.id)
    with pytest.raises(JobNotFound):
        jobs.get(running.id)
    with pytest.raises(JobNotFound):
        jobs.events(running.id)
    with pytest.raises(JobNotFound):
        jobs.delete("no-such-job")


def _stored_values(runner, job_id):
    """Where the job's large values are: its files (SQLite) or its chunks (PostgreSQL)."""
    store = runner.store
    if hasattr(store.blobs, "root"):
        folder = os.path.join(store.blobs.root, job_id)
        return sorted(os.listdir(folder)) if os.path.isdir(folder) else []
    import psycopg

    with psycopg.connect(store.dsn) as conn:
        return [r[0] for r in conn.execute("SELECT name FROM job_blobs WHERE job=%s", (job_id,))]


def test_retention_removes_rows_and_stored_values(jobs):
    info = jobs.submit("blob", [], {"nbytes": BIG}, CallOptions(), key="retained")
    jobs.result(info.id)
    assert jobs.get(info.id).state == "succeeded"  # a read after result() waits for the commit
    assert _stored_values(jobs.api, info.id)  # the large result is beside the row
    running = submit(jobs, "busy", seconds=30)
    removed = jobs.prune(older_than=0)
    assert removed >= 1
    with pytest.raises(JobNotFound):
        jobs.get(info.id)
    assert _stored_values(jobs.api, info.id) == []
    assert jobs.get(running.id).state in ("queued", "running")  # unfinished jobs are kept
    jobs.cancel(running.id)
    again = jobs.submit("blob", [], {"nbytes": 10}, CallOptions(), key="retained")
    assert again.id != info.id  # the key is free once retention deleted its job


def test_a_job_in_a_lost_session_fails_with_session_lost(jobs, manager, loop):
    session = loop.run(manager.open_session(None, None, {}))
    info = jobs.submit("busy", [], {"seconds": 30}, CallOptions(), session=session.id)
    wait_until(lambda: jobs.get(info.id).worker is not None)
    loop.run(manager.restart(session.worker))
    with pytest.raises(Exception) as caught:
        jobs.result(info.id, timeout=30)
    assert jobs.get(info.id).state == "failed"
    assert type(caught.value).__name__ in ("WorkerCrashed", "SessionLost")
    later = jobs.submit("plus", [1], {}, CallOptions(), session=session.id)
    with pytest.raises(SessionLost):
        jobs.result(later.id, timeout=30)


def test_namespaces_keep_programs_apart(loop, manager, target):
    other = _runner(loop, manager, target[1], namespace="another-program")
    try:
        mine = Sync(other, loop).submit("plus", [2, 2], {}, CallOptions())
        assert Sync(other, loop).result(mine.id) == 4
    finally:
        _stop(loop, other)
    default = _runner(loop, manager, target[1])
    try:
        with pytest.raises(JobNotFound):
            Sync(default, loop).get(mine.id)
    finally:
        _stop(loop, default)


def test_a_thousand_jobs_from_eight_threads_all_finish_and_page(loop, manager, target):
    runner = _runner(loop, manager, target[1], namespace=f"bulk-{os.getpid()}")
    jobs = Sync(runner, loop)
    ids: list[str] = []
    lock = threading.Lock()

    def submitter(base: int) -> None:
        for i in range(125):
            info = jobs.submit("plus", [base + i, 1], {}, CallOptions())
            with lock:
                ids.append(info.id)

    try:
        threads = [threading.Thread(target=submitter, args=(t * 1000,)) for t in range(8)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(120)
        assert len(ids) == 1000

        async def all_results():
            return await asyncio.gather(*(runner.result(i) for i in ids))
        results = loop.run(all_results(), timeout=180)
        assert sorted(results) == sorted(t * 1000 + i + 1 for t in range(8) for i in range(125))
        seen, before = [], None
        while True:
            page = jobs.list(limit=100, before=before)
            if not page:
                break
            assert all(j.state == "succeeded" for j in page)
            seen.extend(j.id for j in page)
            before = page[-1].id
        assert len(seen) == 1000 and set(seen) == set(ids)
        created = [jobs.get(i).created for i in seen[:3]]
        assert created == sorted(created, reverse=True)  # newest first
    finally:
        _stop(loop, runner)


# -- bad stores ---------------------------------------------------------------------------

def test_a_store_path_that_cannot_be_written_fails_at_open(loop, tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    with pytest.raises(StoreError) as caught:
        loop.run(open_store(blocker / "jobs.sqlite"))
    assert str(blocker / "jobs.sqlite") in str(caught.value)
    assert "--store" in str(caught.value)


def test_a_corrupt_sqlite_file_fails_at_open_and_is_left_as_it_is(loop, tmp_path):
    path = tmp_path / "jobs.sqlite"
    junk = b"this is not a database" * 100
    path.write_bytes(junk)
    with pytest.raises(StoreError) as caught:
        loop.run(open_store(path))
    assert str(path) in str(caught.value) and "mv" in str(caught.value)
    assert path.read_bytes() == junk


def test_a_locked_sqlite_file_fails_at_open_and_keeps_its_jobs(loop, manager, tmp_path):
    path = tmp_path / "jobs.sqlite"
    runner = _runner(loop, manager, str(path))
    kept = Sync(runner, loop).submit("plus", [40, 2], {}, CallOptions())
    assert Sync(runner, loop).result(kept.id) == 42
    _stop(loop, runner)
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("BEGIN EXCLUSIVE")
    try:
        with pytest.raises(StoreError) as caught:
            loop.run(open_store(path, lock_timeout=0.3))
        assert "locked" in str(caught.value) and str(path) in str(caught.value)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    runner = _runner(loop, manager, str(path))
    try:
        assert Sync(runner, loop).result(kept.id) == 42
    finally:
        _stop(loop, runner)


def test_an_unreachable_postgresql_fails_at_open(loop):
    pytest.importorskip("psycopg")
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    url = f"postgresql://kp:secret@127.0.0.1:{port}/jobs"
    with pytest.raises(StoreError) as caught:
        loop.run(open_store(url))
    text = str(caught.value)
    assert f"127.0.0.1:{port}" in text and "secret" not in text and "server runs" in text


def test_the_store_takes_a_jobs_events_only_in_seq_order(loop, target):
    """A batch whose events do not follow the job's last seq is refused as a whole, so a
    failed batch can never be overtaken by the next one of the same job."""
    from kernelpit.jobs import values
    from kernelpit.jobs.model import JobInfo
    from kernelpit.jobs.store import Entry, NewJob

    async def scenario():
        store = await open_store(target[1], namespace=f"order-{os.getpid()}")
        try:
            info = JobInfo(id=f"ordered-{os.getpid()}", tool="plus", created=1.0, owner="me")
            await store.create(NewJob(info, values.pack({"args": [], "kwargs": {}}), "d"))
            await store.record([Entry(info.id, "stdout", 2.0, {"text": "a"}, seq=1)])
            with pytest.raises(Exception):
                await store.record([Entry(info.id, "stdout", 3.0, {"text": "c"}, seq=3),
                                    Entry(info.id, None, changes={"state": "failed"})])
            await store.record([Entry(info.id, "stdout", 4.0, {"text": "b"}, seq=2)])
            got = await store.events(info.id)
            return [(e.seq, e.text) for e in got], (await store.get(info.id))
        finally:
            await store.close()

    events, info = loop.run(scenario())
    assert events == [(1, "a"), (2, "b")]
    assert info.last_seq == 2 and info.state == "queued"  # the refused batch left nothing


def test_takeover_reruns_runs_or_loses_what_a_dead_runner_left(loop, manager, target):
    """Rows as a runner that died would leave them; a new runner on the store decides."""
    from kernelpit.jobs import values
    from kernelpit.jobs.model import JobInfo
    from kernelpit.jobs.store import NewJob

    namespace = f"takeover-{os.getpid()}"
    request = values.pack({"args": [20, 1], "kwargs": {}})

    def left(name, **kw):
        return NewJob(JobInfo(id=f"{name}-{os.getpid()}", tool="plus", created=1.0,
                              owner="dead-runner", namespace=namespace, **kw), request, "d")

    jobs = {"queued": left("queued"),
            "again": left("again", state="running", idempotent=True, attempt=1),
            "spent": left("spent", state="running", idempotent=True, attempt=3),
            "plain": left("plain", state="running"),
            "session": left("session", state="running", idempotent=True, session="s1")}

    async def leave():
        store = await open_store(target[1], namespace=namespace)
        for job in jobs.values():
            await store.create(job)
        await store.close()
    loop.run(leave())

    runner = _runner(loop, manager, target[1], namespace=namespace)
    api = Sync(runner, loop)
    try:
        ids = {k: j.info.id for k, j in jobs.items()}
        assert api.result(ids["queued"]) == 21 and api.get(ids["queued"]).attempt == 1
        assert api.result(ids["again"]) == 21
        assert api.get(ids["again"]).attempt == 2
        assert [e.kind for e in api.events(ids["again"])][0] == "restarted"
        for name, why in (("spent", "already run 3 time"), ("plain", "not idempotent"),
                          ("session", "session")):
            with pytest.raises(JobLost, match=why):
                api.result(ids[name])
            assert api.get(ids[name]).state == "lost"
    finally:
        _stop(loop, runner)
