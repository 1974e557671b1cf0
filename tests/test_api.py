"""One API, three ways in: every test here runs against an embedded ``kernelpit.Pool``, a
client of a real bridge over gRPC, and one over the bridge's local transport (its Unix
socket, ``kernelpit.connect(transport="local")``), and expects the same answers."""

import inspect
import math
import os
import threading

import pytest

import kernelpit
import kernelpit.aio
from conftest import ADAPTERS, wait_until
from kernelpit.caller import AsyncHandle, AsyncJob
from kernelpit.config import PoolConfig
from kernelpit.remote import AsyncClient, Client
from kernelpit.service.server import Bridge
from kernelpit.sync import Handle, Portal
from kernelpit.watch import Snapshot

SETTINGS = dict(adapters=["kp_tools"], workers=2, path=[ADAPTERS])
#: what only a bridge client has, and what only an embedded pool has (docs/architecture.md)
ONLY_CLIENT = {"address", "transport", "server_info", "check", "info",
               "add_token", "list_tokens", "revoke_token", "rotate_token"}
ONLY_POOL = {"start"}


@pytest.fixture(scope="module", params=["embedded", "remote", "local"])
def pool(request, tmp_path_factory):
    store = str(tmp_path_factory.mktemp("jobs") / "jobs.sqlite")
    if request.param == "embedded":
        with kernelpit.Pool(**SETTINGS, store=store) as p:
            yield p
        return
    portal = Portal("test-api-bridge")
    bridge = Bridge([PoolConfig(name="default", **SETTINGS)], discovery=False, grace=2,
                    store=store)
    portal.call(bridge.start)
    try:
        address = bridge.address if request.param == "remote" else bridge.local_address
        with kernelpit.connect(address, bridge.token, transport="auto") as client:
            assert client.transport == ("grpc" if request.param == "remote" else "local")
            yield client
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()


def public(cls):
    return {name for name in dir(cls) if not name.startswith("_")}


# -- the contract itself (no kernels) ---------------------------------------------------------

def test_blocking_handles_have_every_method_of_the_async_api_with_its_signature():
    for name in public(AsyncHandle):
        twin = inspect.signature(getattr(Handle, name)).parameters
        theirs = inspect.signature(getattr(AsyncHandle, name)).parameters
        if name == "options":  # the blocking API adds display=
            assert set(twin) - set(theirs) == {"display"}
        else:
            assert twin == theirs, name
        for cls in (kernelpit.Pool, Client):
            assert getattr(cls, name) is getattr(Handle, name), (cls, name)


def test_pool_and_client_differ_only_where_documented():
    assert public(kernelpit.Pool) - public(Client) <= ONLY_POOL
    assert public(Client) - public(kernelpit.Pool) <= ONLY_CLIENT
    assert public(kernelpit.aio.Pool) - public(AsyncClient) <= ONLY_POOL
    assert public(AsyncClient) - public(kernelpit.aio.Pool) <= ONLY_CLIENT


# -- calls ----------------------------------------------------------------------------------

def test_call_stream_and_map(pool):
    assert pool.call("add", 1, b=2) == 3
    kinds = [e.kind for e in pool.stream("steps", n=3)]
    assert kinds[0] in ("queued", "started") and kinds[-1] == "result"
    assert kinds.count("progress") == 3
    assert pool.map("add", range(50), range(50)) == [2 * i for i in range(50)]


def test_a_consumer_behind_a_flood_gets_every_line_and_the_final_progress(pool, tmp_path):
    n, every = 20_000, 100
    done = tmp_path / "flood-done"
    stream = pool.stream("flood", n=n, every=every, done_file=str(done))
    events = [next(stream)]  # then the consumer falls behind the whole flood
    wait_until(done.exists, timeout=60)
    events += list(stream)
    assert "".join(e.text for e in events if e.kind == "stdout") == "".join(
        f"line {i}\n" for i in range(every, n + 1, every))
    last = 0
    for e in events:
        if e.kind == "progress":
            assert e.done > last and e.total == n  # in order
            last = e.done
        elif e.kind == "stdout":  # the progress just before a line is never coalesced away
            assert last == int(e.text.split()[1]), (last, e.text)
    assert last == n  # the final progress
    assert events[-1].kind == "result" and events[-1].value == n
    assert sum(e.kind == "progress" for e in events) < n // 10  # the rest coalesced


def test_non_finite_floats_come_back_exactly(pool):
    assert pool.call("same", [math.inf, -math.inf, 1.5]) == [math.inf, -math.inf, 1.5]
    assert math.isnan(pool.call("same", {"x": math.nan})["x"])


def test_tool_errors_carry_tool_call_id_and_worker(pool):
    with pytest.raises(KeyError) as info:
        pool.call("raise_key", key="k")
    err = info.value
    assert err.args == ("k",) and "raise_key" in err.remote_traceback
    assert err.tool == "raise_key" and err.call_id > 0 and err.worker in {
        w.id for w in pool.workers()} | {err.worker}
    with pytest.raises(kernelpit.RemoteError) as info:
        pool.call("raise_custom", msg="boom")
    assert (info.value.remote_type, info.value.tool) == ("CustomError", "raise_custom")


def test_bad_input_raises_the_same_exceptions(pool):
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean 'add'"):
        pool.call("addd")
    with pytest.raises(kernelpit.InvalidArguments, match="'a'"):
        pool.call("add", a="x")
    with pytest.raises(kernelpit.InvalidArguments, match="cannot be sent"):
        pool.call("same", threading.Lock())
    with pytest.raises(kernelpit.InvalidArguments, match="cannot be sent"):
        pool.map("same", [threading.Lock()])
    with pytest.raises(kernelpit.PoolNotFound, match="no pool named 'nope'"):
        pool.tools("nope")
    with pytest.raises(kernelpit.ToolNotFound, match="did you mean"):
        pool.describe("sme")
    with pytest.raises(kernelpit.SessionNotFound):
        pool.get_session("no-such-session")
    with pytest.raises(kernelpit.WorkerNotFound):
        pool.interrupt(10**6)
    with pytest.raises(TypeError, match="unknown call option"):
        pool.options(dedline=1)
    assert pool.call("add", 2, 3) == 5


def test_deadline_and_worker_options(pool):
    with pytest.raises(kernelpit.DeadlineExceeded):
        pool.options(deadline=0.3).call("spin", seconds=30)
    worker = pool.workers()[0].id
    started = [e for e in pool.options(worker=worker).stream("add", 1) if e.kind == "started"]
    assert started[0].worker == worker
    wait_until(lambda: all(w.state == "idle" for w in pool.workers()))


# -- sessions -------------------------------------------------------------------------------

def test_sessions_open_get_list_and_close_by_id(pool):
    with pool.session(metadata={"who": "test"}) as s:
        s.call("remember", "k", 41)
        assert s.call("remember", "k") == 41
        assert pool.get_session(s.id).worker == s.worker
        assert s.id in {x.id for x in pool.sessions()}
    other = pool.session(id="closed-by-id")
    assert pool.close_session(other.id).id == "closed-by-id"
    with pytest.raises(kernelpit.SessionNotFound):
        pool.get_session("closed-by-id")


# -- introspection and control ----------------------------------------------------------------

def test_tools_describe_and_workers(pool):
    assert "add" in {t.name for t in pool.tools()}
    assert pool.describe("add").parameters["required"] == ["a"]
    workers = pool.workers("default")
    assert len(workers) == 2 and pool.workers("other-pool") == []


def test_watch_sends_a_snapshot_then_changes_and_can_be_closed_from_another_thread(pool):
    stream = pool.watch(interval=0.2)
    first = next(stream)
    assert isinstance(first, Snapshot) and len(first.workers) == 2
    timer = threading.Timer(0.5, stream.close)
    timer.start()
    seen = [e.kind for e in stream]  # ends when closed, without an error
    timer.join()
    assert "snapshot" in seen


def test_untaint_of_a_tool_that_is_not_quarantined(pool):
    assert pool.untaint("add") is False
    with pytest.raises(kernelpit.ToolNotFound):
        pool.untaint("no_such_tool")


def test_subscribe_pushes_each_calls_events_in_order(pool):
    events = []
    stream = pool.subscribe(["call.*", "session.*"])
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    # through a bridge the subscription starts when the RPC arrives: call until it is live
    wait_until(lambda: pool.call("add", 1, 2) == 3 and any(e.kind == "call.finished"
                                                           for e in events))
    with pool.session() as s:
        s.call("add", 2, 2)
        sid = s.id
    wait_until(lambda: any(e.kind == "session.closed" for e in events))
    stream.close()
    reader.join(timeout=5)
    for call_id in {e.call_id for e in events if e.kind == "call.queued"}:
        mine = [e for e in events if e.call_id == call_id]
        assert [e.kind for e in mine] == ["call.queued", "call.started", "call.finished"]
        assert mine[-1].data["outcome"] == "ok" and mine[-1].tool == "add"
        assert mine[1].worker == mine[2].worker is not None and mine[0].pool == "default"
    assert [e.data["session"] for e in events if e.kind.startswith("session.")] == [sid, sid]
    with pytest.raises(ValueError, match="unknown telemetry event kind"):
        pool.subscribe(["calls.finished"])


def test_reload_recycles_every_serving_worker_onto_the_code_on_disk(pool):
    before = {w.id for w in pool.workers()}
    assert pool.reload() == 2
    wait_until(lambda: len(pool.workers()) == 2 and before.isdisjoint(w.id for w in pool.workers())
               and all(w.state == "idle" for w in pool.workers()), timeout=60)
    assert {w.recycle_reason for w in pool.workers()} == {"reload"}
    assert pool.call("add", 1, 2) == 3
    with pytest.raises(kernelpit.PoolNotFound, match="'nope'"):
        pool.reload("nope")


# -- durable jobs (issue 13; docs/jobs.md) ------------------------------------------------------

def test_submit_returns_a_job_whose_result_state_info_and_journal_match_the_call(pool):
    job = pool.submit("steps", n=3)
    assert isinstance(job, kernelpit.Job) and len(job.id) == 32
    assert job.result(timeout=60) == 3
    assert job.state == "succeeded"
    info = job.info()
    assert isinstance(info, kernelpit.JobInfo)
    assert (info.id, info.tool, info.attempt) == (job.id, "steps", 1)
    assert info.finished >= info.started >= info.created and info.worker is not None
    assert info.progress == {"done": 3, "total": 3, "message": "step 3"} and info.error is None
    events = list(job.events())
    assert [e.seq for e in events] == list(range(1, len(events) + 1))
    kinds = [e.kind for e in events]
    assert "started" in kinds and kinds[-1] == "result" and events[-1].value == 3
    assert [e.text for e in events if e.kind == "stdout"] == ["line 0\n", "line 1\n", "line 2\n"]
    assert [e.kind for e in job.events(after=events[-3].seq)] == kinds[-2:]


def test_a_failed_job_raises_what_the_call_raises(pool):
    job = pool.submit("raise_key", key="k")
    with pytest.raises(KeyError) as info:
        job.result(timeout=60)
    assert info.value.args == ("k",)
    assert job.state == "failed" and isinstance(job.info().error, KeyError)
    with pytest.raises(kernelpit.ToolNotFound):
        pool.submit("no_such_tool")
    with pytest.raises(kernelpit.InvalidArguments, match="'a'"):
        pool.submit("add", a="x")


def test_result_timeout_leaves_the_job_running_and_cancel_interrupts_it(pool, tmp_path):
    job = pool.submit("wait_file", path=str(tmp_path / "never"), timeout=120)
    with pytest.raises(TimeoutError) as info:
        job.result(timeout=0.2)
    assert not isinstance(info.value, kernelpit.DeadlineExceeded)
    assert job.state == "running"
    assert job.cancel().state == "cancelled"
    with pytest.raises(kernelpit.Cancelled):
        job.result()
    assert pool.job(job.id).state == "cancelled"
    assert pool.call("add", 1, 1) == 2  # the worker was interrupted, not lost


def test_a_job_is_found_by_id_listed_newest_first_paged_and_deleted(pool):
    ids = [pool.submit("add", i).id for i in range(5)]
    for i, job_id in enumerate(ids):
        assert pool.job(job_id).result(timeout=60) == i
    listed = [j.id for j in pool.jobs(tool="add", limit=3)]
    assert listed == ids[::-1][:3]
    assert [j.id for j in pool.jobs(tool="add", limit=2, before=listed[-1])] == ids[::-1][3:5]
    assert all(j.state == "succeeded" for j in pool.jobs(state="succeeded", limit=1000))
    with pytest.raises(kernelpit.InvalidArguments, match="unknown job state"):
        pool.jobs(state="done")
    pool.delete_job(ids[0])
    with pytest.raises(kernelpit.JobNotFound):
        pool.job(ids[0])


def test_options_key_deadline_idempotent_and_session_apply_to_submit(pool):
    key = f"nightly-{os.getpid()}-{id(pool)}"
    first = pool.options(key=key, idempotent=True, deadline=3600).submit("add", 1, b=2)
    again = pool.options(key=key).submit("add", 1, b=2)
    assert again.id == first.id and first.result(timeout=60) == 3
    info = first.info()
    assert info.key == key and info.idempotent and info.deadline == 3600
    with pytest.raises(kernelpit.InvalidArguments, match=key):
        pool.options(key=key).submit("add", 2, b=2)
    with pool.session() as s:
        s.call("remember", "k", 7)
        by_object = pool.options(session=s).submit("remember", "k")
        by_id = pool.options(session=s.id).submit("remember", "k")
        in_session = s.submit("remember", "k")
        assert [j.result(timeout=60) for j in (by_object, by_id, in_session)] == [7, 7, 7]
        assert by_object.info().session == s.id
    late = pool.options(deadline=0.3).submit("spin", seconds=30)
    with pytest.raises(kernelpit.DeadlineExceeded):
        late.result(timeout=60)
    assert late.state == "failed"


def test_the_asyncio_job_handle(pool):
    async def scenario():
        job = await pool._async.submit("steps", n=2)
        assert isinstance(job, AsyncJob) and await job.status() in ("running", "succeeded")
        seqs = [e.seq async for e in job.events()]
        assert seqs == list(range(1, len(seqs) + 1))
        assert await job.result() == 2 and (await job.info()).state == "succeeded"
        again = await pool._async.job(job.id)
        return again.id == job.id and await again.status() == "succeeded"
    assert pool._portal.call(scenario)


def test_jobs_publish_telemetry_events(pool):
    events = []
    stream = pool.subscribe("job.*")
    reader = threading.Thread(target=lambda: events.extend(stream), daemon=True)
    reader.start()
    # through a bridge the subscription starts when the RPC arrives: submit until it is live
    wait_until(lambda: pool.submit("add", 1, 2).result(timeout=60) == 3 and any(
        e.kind == "job.finished" for e in events))
    failed = pool.submit("raise_key")
    with pytest.raises(KeyError):
        failed.result(timeout=60)
    wait_until(lambda: [e.data["state"] for e in events if e.kind == "job.finished"
                        and e.data["job"] == failed.id] == ["failed"])
    stream.close()
    reader.join(timeout=5)
    mine = [e for e in events if e.data["job"] == failed.id]
    assert [e.kind for e in mine] == ["job.submitted", "job.started", "job.finished"]
    assert mine[0].tool == "raise_key" and mine[0].pool == "default"
    assert mine[1].worker is not None and mine[2].data["attempt"] == 1


def test_an_embedded_pool_exports_the_jobs_gauge(tmp_path):
    prometheus_client = pytest.importorskip("prometheus_client")
    registry = prometheus_client.CollectorRegistry()
    with kernelpit.Pool(**{**SETTINGS, "workers": 1}, store=tmp_path / "jobs.sqlite",
                        metrics=registry) as p:
        p.submit("add", 1).result(timeout=60)
        with pytest.raises(KeyError):
            p.submit("raise_key").result(timeout=60)
        p.jobs()  # settles the commits
        assert registry.get_sample_value("kernelpit_jobs", {"state": "succeeded"}) == 1
        assert registry.get_sample_value("kernelpit_jobs", {"state": "failed"}) == 1
        assert registry.get_sample_value("kernelpit_jobs", {"state": "running"}) == 0


def test_an_embedded_pools_jobs_end_with_it_and_are_rerun_or_lost_at_its_next_start(tmp_path):
    store = tmp_path / "jobs.sqlite"
    settings = {**SETTINGS, "workers": 2, "store": store}
    with kernelpit.Pool(**settings) as p:
        again = p.options(idempotent=True).submit("wait_file", path=str(tmp_path / "go"))
        gone = p.submit("wait_file", path=str(tmp_path / "go"))
        wait_until(lambda: again.state == gone.state == "running")
    # the pool closed with both running; a new one on the same store takes them over
    (tmp_path / "go").write_text("")
    with kernelpit.Pool(**settings) as p:
        assert p.job(again.id).result(timeout=60) == "released"
        info = p.job(again.id).info()
        assert info.attempt == 2 and info.state == "succeeded"
        assert "restarted" in [e.kind for e in p.job(again.id).events()]
        with pytest.raises(kernelpit.JobLost, match="not idempotent"):
            p.job(gone.id).result(timeout=60)
    with kernelpit.Pool(**{**settings, "adapters": ["kp_jobs"], "workers": 1}) as other:
        with pytest.raises(kernelpit.JobNotFound):  # other adapters: another namespace
            other.job(again.id)


def test_jobs_need_a_store_and_say_how_to_enable_them():
    with kernelpit.Pool(**{**SETTINGS, "workers": 1}) as p:
        with pytest.raises(kernelpit.JobsDisabled, match=r"Pool\(\.\.\., store="):
            p.submit("add", 1)
        with pytest.raises(kernelpit.JobsDisabled):
            p.jobs()
    portal = Portal("test-api-nostore")
    bridge = Bridge([PoolConfig(name="default", **{**SETTINGS, "workers": 1})],
                    discovery=False, grace=0)
    portal.call(bridge.start)
    try:
        with kernelpit.connect(bridge.address, bridge.token) as client:
            with pytest.raises(kernelpit.JobsDisabled, match="--store"):
                client.submit("add", 1)
    finally:
        portal.call(bridge.stop, 0)
        portal.stop()
