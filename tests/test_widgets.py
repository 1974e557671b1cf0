"""The panels and the ``display`` call option against a real bridge with real kernels.

The widgets are real ipywidgets (without a frontend: their state is what a
frontend would draw); buttons are clicked with ``Button.click()``, which runs
the same handlers a browser click does.
"""

import os
import time
from pathlib import Path

import pytest

import kernelpit
from conftest import kernel_processes, wait_until
from kernelpit.config import PoolConfig
from kernelpit.service.server import Bridge
from kernelpit.sync import Portal
from kernelpit.widgets import wire
from kernelpit.widgets.panels import HealthPanel, SessionsPanel
from kernelpit.widgets.stream import BackgroundCall, StreamPanel

DEMO = "kernelpit.kernels.demo"


async def _start(bridge):
    return await bridge.start()


class Running:
    """An in-process bridge with a discovery file in its own runtime dir."""

    def __init__(self, runtime, workers=2):
        self.portal = Portal("test-widgets-bridge")
        self.bridge = Bridge([PoolConfig(adapters=[DEMO], workers=workers)], grace=2,
                             store=str(Path(runtime) / "jobs.sqlite"))
        self.portal.call(_start, self.bridge)

    def stop(self):
        self.portal.call(self.bridge.stop, 0)
        self.portal.stop()


@pytest.fixture(scope="module")
def runtime(tmp_path_factory):
    path = tmp_path_factory.mktemp("widgets-runtime")
    old = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(path)
    yield path
    os.environ["JUPYTER_RUNTIME_DIR"] = old


@pytest.fixture(scope="module")
def bridge(runtime):
    b = Running(runtime)
    yield b
    b.stop()


@pytest.fixture(scope="module")
def client(bridge):
    with kernelpit.connect() as c:
        yield c


def idle_workers(client):
    return sorted(w.id for w in client.workers() if w.state == "idle" and not w.spare)


# -- the Recycle RPC ------------------------------------------------------------------------

def test_recycle_rpc_replaces_a_worker_without_downtime(client):
    before = idle_workers(client)
    old = before[0]
    client.recycle(old)
    assert client.call("add", a=1, b=2) == 3  # still serving while the successor starts
    wait_until(lambda: old not in [w.id for w in client.workers()]
               and len(idle_workers(client)) == len(before), timeout=90)
    new = [w for w in client.workers() if w.id not in before]
    assert new and new[0].recycles == 1 and new[0].recycle_reason == "manual"
    with pytest.raises(kernelpit.WorkerNotFound):
        client.recycle(10_000)


# -- worker health --------------------------------------------------------------------------

def test_health_panel_shows_a_row_per_worker_and_its_buttons_act(client):
    panel = HealthPanel(client)
    try:
        assert panel.wait_for(lambda p: p.ready() and len(p._rows) == 2, timeout=20)
        workers = {w.id: w for w in client.workers()}
        assert sorted(panel._rows) == sorted(workers)
        row = panel._rows[min(workers)]
        assert "kp-worker-row" in row._dom_classes
        assert "kp-state-idle" in row.cells["state"].value
        assert row.cells["pid"].value == str(workers[row.worker_id].pid)
        assert "ready" in panel._summary.value and "calls/s" in panel._summary.value
        text = panel.text()
        assert "2 workers, 2 ready, 0 busy" in text and str(workers[row.worker_id].pid) in text

        # A busy worker shows its current call and the time in it.
        call = BackgroundCall(client, "spin", (), {"seconds": 30})
        assert panel.wait_for(lambda p: any(
            w.state == "busy" and (w.current_call or "").startswith("spin")
            for w in p.live.workers.values()), timeout=20)
        busy = next(w for w in panel.live.workers.values() if w.state == "busy")
        assert panel.wait_for(lambda p: "spin()" in p._rows[busy.id].cells["current"].value, 5)

        # Its interrupt button cancels the call.
        panel._rows[busy.id].children[len(row.cells)].click()  # "interrupt"
        with pytest.raises(kernelpit.Cancelled):
            call.wait(timeout=20)
        assert panel.wait_for(lambda p: "✔ interrupt worker" in p._status.value, 10)

        # Its recycle button replaces the worker; the panel follows.
        target = min(idle_workers(client))
        buttons = {b.tooltip.split(":")[0].lower(): b
                   for b in panel._rows[target].children[len(row.cells):]}
        buttons["recycle"].click()
        assert panel.wait_for(lambda p: target not in p._rows and len(p._rows) == 2
                              and all(w.state == "idle" for w in p.live.workers.values()), 90)
        assert "replaced ×" in panel.text()
    finally:
        panel.close()
    assert wait_until(lambda: not panel.live.running, timeout=5)


def test_panels_redraw_at_most_ten_times_a_second(client):
    panel = HealthPanel(client, interval=0.1)  # a snapshot every 0.1 s plus every change
    try:
        assert panel.wait_for(lambda p: p.ready(), 20)
        start, t0 = panel.live.renders, time.monotonic()
        for _ in range(3):
            client.options(display=False).call("train", epochs=2, seconds_per_epoch=0.05)
        elapsed = time.monotonic() - t0
        # one redraw per 0.1 s at most: the first may come at once (the window starts with one)
        assert panel.live.renders - start <= 10 * elapsed + 1, (panel.live.renders - start, elapsed)
    finally:
        panel.close()

    # The streaming panel: 20000 progress events, drawn at most 10 times a second.
    stream = StreamPanel("progress_flood")
    t0 = time.monotonic()
    for ev in client.stream("progress_flood", n=20000):
        stream.feed(ev)
    elapsed = time.monotonic() - t0
    assert stream.view.state == "done" and stream.view.done == 20000
    assert stream.bar.value == 1.0 and stream.bar.description == "100%"
    assert stream.renders <= 10 * elapsed + 3, (stream.renders, elapsed)


def test_sessions_panel_rows_and_close_button(client):
    s = client.session(id="widgets-test", metadata={"owner": "test"}, ttl=600)
    s.call("add", a=1, b=1)
    panel = SessionsPanel(client)
    try:
        assert panel.wait_for(lambda p: "widgets-test" in p._rows, 20)
        cells = panel._rows["widgets-test"].cells
        assert cells["worker"].value == str(s.worker)
        assert "owner=test" in cells["metadata"].value
        assert panel.wait_for(lambda p: p._rows["widgets-test"].cells["calls"].value == "1", 10)
        assert cells["ttl"].value.endswith(("s", "m")) and cells["ttl"].value != "-"
        assert "widgets-test" in panel.text() and "owner=test" in panel.text()
        panel._rows["widgets-test"].children[-1].click()   # close
        assert panel.wait_for(lambda p: "widgets-test" not in p._rows, 20)
        assert all(x.id != "widgets-test" for x in client.sessions())
        assert "no open sessions" in panel.text()
    finally:
        panel.close()


# -- durable jobs ---------------------------------------------------------------------------

def test_job_panel_replays_the_journal_then_follows_and_cancels(client):
    from kernelpit.widgets.jobs import JobPanel
    done = client.submit("train", epochs=3, seconds_per_epoch=0.05)
    done.result(timeout=30)
    replay = JobPanel(client.job(done.id))  # a finished job: the whole journal replayed
    assert replay.wait_replayed(20)
    wait_until(replay.done, timeout=20)
    text = "".join(o["text"] for o in replay.panel.output.outputs
                   if o["output_type"] == "stream")
    assert text.splitlines() == ["epoch 1/3: loss=0.6000", "epoch 2/3: loss=0.3600",
                                 "epoch 3/3: loss=0.2160"]
    assert f"job {done.id}" in replay.text() and "3/3 (100%)" in replay.text()
    live = JobPanel(client.submit("spin", seconds=60))
    wait_until(lambda: live.panel.view.state == "running", timeout=20)
    live.panel.cancel_button.click()  # cancels the job, not just the panel
    wait_until(live.done, timeout=20)
    assert live.job.state == "cancelled" and live.panel.view.state == "cancelled"


def test_jobs_panel_rows_and_buttons(client):
    from kernelpit.widgets.jobs import JobsPanel
    finished = client.submit("add", a=1, b=1)
    finished.result(timeout=30)
    running = client.submit("spin", seconds=60)
    panel = JobsPanel(client, interval=0.2)
    try:
        wait_until(lambda: running.id in panel._rows and finished.id in panel._rows)
        row = panel._rows[running.id]
        assert row.tool.value.startswith("<code") and "spin()" in row.tool.value
        assert "succeeded" in panel._rows[finished.id].state.value
        assert panel._rows[finished.id].cancel.disabled and panel._rows[finished.id].bar.value == 1
        lines = panel.text().splitlines()
        assert lines[1].split()[:3] == ["JOB", "STATE", "TOOL"]
        assert any(line.startswith(running.id) for line in lines)
        row.cancel.click()
        wait_until(lambda: "cancelled" in panel._rows[running.id].state.value, timeout=20)
        assert running.state == "cancelled" and panel._rows[running.id].cancel.disabled
        panel._rows[finished.id].open.click()  # the job's panel below the list
        assert len(panel.opened.outputs) == 1
    finally:
        panel.close()


# -- streaming output and the display option -------------------------------------------------

def test_background_call_panel_streams_output_and_result(client):
    call = BackgroundCall(client, "train", (), {"epochs": 3, "seconds_per_epoch": 0.05})
    assert call.wait(timeout=30) == {"epochs": 3, "loss": 0.216}
    p = call.panel
    assert p.view.state == "done" and p.view.done == 3 and p.view.total == 3
    assert p.bar.value == 1.0 and p.bar.bar_style == "success"
    text = "".join(o["text"] for o in p.output.outputs if o["output_type"] == "stream")
    assert text.splitlines() == ["epoch 1/3: loss=0.6000", "epoch 2/3: loss=0.3600",
                                 "epoch 3/3: loss=0.2160"]
    assert "result" in p.outcome.value and "0.216" in p.outcome.value
    assert "3/3 (100%)" in p.text() and p.cancel_button.disabled


def test_cancel_button_interrupts_the_tool(client):
    call = BackgroundCall(client, "spin", (), {"seconds": 60})
    wait_until(lambda: call.panel.view.state == "running", timeout=20)
    t0 = time.monotonic()
    call.panel.cancel_button.click()
    with pytest.raises(kernelpit.Cancelled):
        call.wait(timeout=20)
    assert time.monotonic() - t0 < 10
    assert call.panel.view.state == "cancelled" and call.panel.bar.bar_style == "warning"
    wait_until(lambda: all(w.state == "idle" for w in client.workers()), timeout=30)


def test_errors_show_in_the_panel_with_the_remote_traceback(client):
    call = BackgroundCall(client, "train", (), {"epochs": 1, "seconds_per_epoch": -1})
    with pytest.raises(ValueError):
        call.wait(timeout=20)
    assert call.panel.view.state == "failed"
    assert "ValueError" in call.panel.outcome.value and "non-negative" in call.panel.text() and "Traceback" in call.panel.outcome.value


def test_display_option_in_a_terminal_draws_a_text_bar(client, capsys):
    assert client.options(display=True).call("train", epochs=2, seconds_per_epoch=0.01) == \
        {"epochs": 2, "loss": 0.36}
    out, err = capsys.readouterr()
    assert "epoch 2/2: loss=0.3600" in out
    assert "100.0% 2/2 epoch 2" in err
    events = [ev.kind for ev in client.options(display=True).stream("count", n=3)]
    assert events[-1] == "result" and events.count("partial") == 3
    # display is a call option: a tool parameter of that name would not collide with it
    with pytest.raises(kernelpit.InvalidArguments, match="display"):
        client.call("add", a=1, b=2, display=True)


def test_display_option_on_an_embedded_pool(capsys):
    notebooks = str(Path(__file__).resolve().parent.parent / "notebooks")
    with kernelpit.Pool(adapters=[DEMO, "kp_examples"], workers=1, path=[notebooks]) as pool:
        assert pool.options(display=True).call("add", a=2, b=3) == 5
        # rich displays and output of the tool land in the panel's Output widget
        stream = StreamPanel("plot")
        for ev in pool.stream("plot", n=3):
            stream.feed(ev)
        outputs = stream.output.outputs
        html = [o for o in outputs if o["output_type"] == "display_data"]
        assert html and "<th>i²</th>" in html[0]["data"]["text/html"]
        assert "row 0\nrow 1\nrow 2\n" in "".join(o.get("text", "") for o in outputs)
        assert stream.view.state == "done" and stream.view.result == 3
        panel = HealthPanel(pool)   # polled: an embedded pool has no watch stream
        try:
            assert panel.wait_for(lambda p: p.ready() and len(p._rows) == 1, 20)
            assert "embedded pool" in panel.text()
        finally:
            panel.close()


# -- the bridge goes away and comes back -----------------------------------------------------

def test_panel_says_disconnected_and_reconnects_to_a_restarted_bridge(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    first = Running(tmp_path, workers=1)
    panel = HealthPanel(None)   # found through the discovery file, like %kp status
    try:
        assert panel.wait_for(lambda p: p.live.connected and len(p._rows) == 1, 30)
        old_address = panel.live.address
        first.stop()
        assert panel.wait_for(lambda p: not p.live.connected, 15)
        assert "disconnected" in panel._summary.value and "disconnected" in panel.text()
        second = Running(tmp_path, workers=1)
        try:
            assert panel.wait_for(lambda p: p.live.connected and len(p._rows) == 1, 30)
            assert panel.live.address == second.bridge.address != old_address
            assert panel.wait_for(lambda p: "disconnected" not in p._summary.value, 5)
        finally:
            panel.close()
            second.stop()
    finally:
        panel.close()
    for b in (first, second):
        assert wait_until(lambda: not kernel_processes(b.bridge.manager.run_id), timeout=15)


# -- values for %kp push / pull ----------------------------------------------------------------

def test_wire_round_trips_plain_values_and_refuses_others():
    value = {"a": [1, 2.5, None, True], "b": b"\x00\xff", "t": (1, "x"), "$kp": "tricky",
             "nested": {"deep": [b"z", {"k": (None,)}]}}
    assert wire.loads(wire.dumps(value)) == value
    with pytest.raises(wire.NotMovable, match=r"x\[1\] is a set"):
        wire.dumps([1, {2}], "x")
    with pytest.raises(wire.NotMovable, match="key of type int"):
        wire.dumps({1: 2}, "d")
