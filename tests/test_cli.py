"""The ``kernelpit`` command against a real bridge process."""

import json
import os
import shutil
import subprocess
import sys

import pytest

from conftest import ADAPTERS, wait_until
from test_service_lifecycle import Served


@pytest.fixture(scope="module")
def served(tmp_path_factory):
    runtime = tmp_path_factory.mktemp("cli-runtime")
    config = runtime / "kernelpit.toml"
    config.write_text(f"""
[bridge]
grace = 10

[pools.default]
adapters = ["kernelpit.kernels.demo"]
workers = 1

[pools.extra]
adapters = ["kp_tools"]
workers = 1
path = [{json.dumps(ADAPTERS)}]
""")
    s = Served(runtime, "--config", str(config))
    yield s
    s.stop()


def test_call_prints_the_result_as_json(served):
    r = served.cli("call", "add", "a=1", "b=2.5")
    assert r.returncode == 0, r.stderr
    assert json.loads(r.stdout) == 3.5


def test_call_parses_json_values_else_strings(served):
    r = served.cli("call", "echo", 'value={"k": [1, null]}', "--pool", "extra")
    assert json.loads(r.stdout) == {"value": {"k": [1, None]},
                                    "blob": {"$kp": "bytes", "b64": ""}}
    r = served.cli("call", "echo", "value=plain text")
    assert json.loads(r.stdout)["value"] == "plain text"


def test_call_streams_output_and_progress(served):
    r = served.cli("call", "train", "epochs=3", "seconds_per_epoch=0.01")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["epoch 1/3: loss=0.6000", "epoch 2/3: loss=0.3600",
                         "epoch 3/3: loss=0.2160"]
    assert json.loads(lines[-1]) == {"epochs": 3, "loss": 0.216}
    assert "3/3 epoch 3" in r.stderr and "100.0%" in r.stderr  # the progress bar


def test_call_partials_are_printed_as_json_lines(served):
    r = served.cli("call", "count", "n=3")
    assert r.stdout.split() == ["0", "1", "2", "3"]


def test_failing_call_exits_non_zero_with_the_remote_traceback(served):
    r = served.cli("call", "raise_key", "key=nope")
    assert r.returncode == 1
    assert "Traceback" in r.stderr and "raise_key" in r.stderr and "KeyError" in r.stderr
    assert r.stdout == ""


def test_bad_arguments_and_unknown_tools_are_explained(served):
    r = served.cli("call", "add", "a=x", "b=1")
    assert r.returncode == 1 and "parameter 'a'" in r.stderr
    r = served.cli("call", "ad")
    assert r.returncode == 1 and "did you mean 'add'" in r.stderr
    r = served.cli("call", "add", "notanassignment")
    assert r.returncode == 2 and "key=value" in r.stderr


def test_status_shows_workers_and_sessions(served):
    with served.connect() as client:
        session = client.session(metadata={"who": "cli-test"})
        r = served.cli("status")
        session.close()
        pids = [str(w.pid) for w in client.workers()]
    assert r.returncode == 0, r.stderr
    out = r.stdout
    assert "WORKER" in out and "STATE" in out and "RSS" in out and "idle" in out
    assert all(pid in out for pid in pids)
    assert "default" in out and "extra" in out
    assert session.id in out and "who=cli-test" in out
    data = json.loads(served.cli("status", "--json").stdout)
    assert {w["pool"] for w in data["workers"]} == {"default", "extra"}


def test_tools_lists_every_tool(served):
    r = served.cli("tools")
    assert r.returncode == 0
    assert "train" in r.stdout and "echo" in r.stdout and "Add two numbers." in r.stdout
    tools = json.loads(served.cli("tools", "--json", "--pool", "extra").stdout)
    assert {t["pool"] for t in tools} == {"extra"}
    assert tools[0]["parameters"]["type"] == "object"


def test_serve_keeps_jobs_in_the_default_store_of_the_data_dir(served):
    data = os.environ["JUPYTER_DATA_DIR"]  # tests/conftest.py: a private one
    line = next(x for x in served.log if "job store" in x)
    assert os.path.join(data, "kernelpit", "jobs.sqlite") in line


def test_submit_prints_the_id_and_job_follow_replays_then_follows(served):
    r = served.cli("submit", "train", "epochs=3", "seconds_per_epoch=0.3")
    assert r.returncode == 0, r.stderr
    job_id = r.stdout.strip()
    assert len(job_id) == 32
    r = served.cli("job", job_id, "--follow")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["epoch 1/3: loss=0.6000", "epoch 2/3: loss=0.3600",
                         "epoch 3/3: loss=0.2160"]
    assert json.loads(lines[-1]) == {"epochs": 3, "loss": 0.216}
    assert "3/3 epoch 3" in r.stderr  # the progress bar
    again = served.cli("job", job_id, "--follow", "--after", "3")  # a replay from the middle
    assert again.stdout.splitlines()[0] == "epoch 2/3: loss=0.3600"
    shown = served.cli("job", job_id)
    assert shown.returncode == 0 and "succeeded" in shown.stdout and "3/3" in shown.stdout


def test_jobs_lists_filters_and_prunes(served):
    ids = [served.cli("submit", "add", f"a={i}", "b=1").stdout.strip() for i in range(3)]
    keyed = served.cli("submit", "add", "a=1", "b=2", "--key", "cli-key").stdout.strip()
    assert served.cli("submit", "add", "a=1", "b=2", "--key", "cli-key").stdout.strip() == keyed
    for job_id in ids:
        assert served.cli("job", job_id, "--follow").returncode == 0
    table = served.cli("jobs", "--tool", "add")
    assert table.returncode == 0, table.stderr
    assert table.stdout.splitlines()[0].split()[:4] == ["JOB", "STATE", "TOOL", "PROGRESS"]
    listed = [line.split()[0] for line in table.stdout.splitlines()[2:]]
    assert listed[:4] == [keyed, *ids[::-1]]  # newest first
    as_json = json.loads(served.cli("jobs", "--state", "succeeded", "--json").stdout)
    assert {j["id"] for j in as_json} >= set(ids) and all(j["state"] == "succeeded"
                                                          for j in as_json)
    assert served.cli("jobs", "--state", "nope").returncode == 2  # argparse names the choices
    pruned = served.cli("jobs", "--prune")
    assert pruned.returncode == 0 and "deleted" in pruned.stdout
    assert ids[0] not in served.cli("jobs").stdout
    gone = served.cli("job", ids[0])
    assert gone.returncode == 1 and "no job" in gone.stderr


def test_cancel_interrupts_a_running_job(served):
    job_id = served.cli("submit", "spin", "seconds=60").stdout.strip()
    wait_until(lambda: "running" in served.cli("job", job_id).stdout)
    r = served.cli("cancel", job_id)
    assert r.returncode == 0, r.stderr
    assert r.stdout.strip() == f"job {job_id} (spin()) is cancelled"
    follow = served.cli("job", job_id, "--follow")
    assert follow.returncode == 1 and "cancelled" in follow.stderr


def test_client_commands_without_a_bridge_say_how_to_start_one(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kernelpit", "status"], capture_output=True,
                       text=True, timeout=60, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    assert r.returncode == 1
    assert "no Kernelpit bridge was found" in r.stderr and "kernelpit serve" in r.stderr


@pytest.mark.skipif(shutil.which("jupyter") is None or shutil.which("jupyter-kernelpit") is None,
                    reason="jupyter or the jupyter-kernelpit entry point is not installed")
def test_jupyter_subcommand_works():
    r = subprocess.run(["jupyter", "kernelpit", "--help"], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0 and "serve" in r.stdout and "demo" in r.stdout


def test_recycle_restart_and_interrupt_a_worker_by_id(served):
    def ids():
        return {w["id"] for w in json.loads(served.cli("status", "--json").stdout)["workers"]}

    before = ids()
    worker = min(before)
    r = served.cli("interrupt", str(worker))
    assert r.returncode == 0 and f"interrupted worker {worker}" in r.stderr
    r = served.cli("recycle", str(worker))
    assert r.returncode == 0 and f"recycling worker {worker}" in r.stderr
    r = served.cli("restart", "999")
    assert r.returncode != 0 and "no worker 999" in r.stderr
    with served.connect() as client:
        wait_until(lambda: worker not in {w.id for w in client.workers()} and len(
            [w for w in client.workers() if w.state == "idle"]) == len(before), timeout=60)
        recycled = [w for w in client.workers() if w.recycle_reason == "manual"]
        assert recycled and recycled[0].recycles == 1


def test_stop_drains_and_stops_the_bridge(served):
    r = served.cli("stop")
    assert r.returncode == 0, r.stderr
    assert "stopped" in r.stderr
    assert served.proc.wait(30) == 0
    assert not served.discovery_file.exists()


def test_demo_runs_the_tour_and_shuts_down(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kernelpit", "demo", "--workers", "1",
                        "--epochs", "2", "--seconds", "0.01"], capture_output=True, text=True,
                       timeout=120, env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    out = f"stdout:\n{r.stdout}\nstderr:\n{r.stderr}"
    assert r.returncode == 0, out
    assert "epoch 2/2" in r.stdout and "result: " in r.stdout, out
    assert "WORKER" in r.stdout and "default" in r.stdout, out
    assert "shutting down" in r.stderr and "done" in r.stderr, out


def test_serve_applies_pool_settings_from_flags(tmp_path):
    s = Served(tmp_path, "--adapter", "kernelpit.kernels.demo", "--workers", "1",
               "--max-calls", "50", "--max-age", "3600", "--max-memory", "2GB")
    try:
        status = json.loads(s.cli("status", "--json").stdout)
        [worker] = status["workers"]
        assert worker["recycle_in"]["calls"] == 50
        assert 3500 < worker["recycle_in"]["seconds"] <= 3600
        assert 0 < worker["recycle_in"]["bytes"] < 2e9
    finally:
        s.stop()


def test_serve_rejects_a_bad_setting_saying_what_to_write(tmp_path):
    r = subprocess.run([sys.executable, "-m", "kernelpit", "serve", "--adapter",
                        "kernelpit.kernels.demo", "--max-memory", "lots"],
                       capture_output=True, text=True, timeout=60,
                       env={**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path)})
    assert r.returncode != 0
    assert "cannot read 'lots' as a size; write bytes or e.g. '512MB'" in r.stderr


def test_serve_fails_at_start_on_a_bad_store_and_no_store_says_how_to_enable(tmp_path):
    blocker = tmp_path / "a-file"
    blocker.write_text("not a folder")
    r = subprocess.run([sys.executable, "-m", "kernelpit", "serve", "--adapter",
                        "kernelpit.kernels.demo", "--workers", "1", "--no-discovery",
                        "--store", str(blocker / "jobs.sqlite")],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert f"the job store {blocker / 'jobs.sqlite'}" in r.stderr and "--store PATH" in r.stderr
    runtime = tmp_path / "runtime"
    runtime.mkdir()
    s = Served(runtime, "--adapter", "kernelpit.kernels.demo", "--workers", "1", "--no-store")
    try:
        r = s.cli("submit", "add", "a=1", "b=2")
        assert r.returncode == 1 and "serves no jobs" in r.stderr and "--store" in r.stderr
    finally:
        s.stop()
