"""The example notebooks, executed end to end with nbclient against a real bridge.

They run in order, as a user would: quickstart.ipynb starts the bridge (a
background ``kernelpit serve``), the others join it from new notebook
kernels, which shows the bridge outlives the kernel that started it.  Each
notebook's outputs are checked, not just that it ran.
"""

import json
import os
import re
import shutil
import time
from pathlib import Path

import nbformat
import psutil
import pytest
from nbclient import NotebookClient

from conftest import kernel_processes, wait_until

pytestmark = pytest.mark.timeout(600)  # a notebook starts kernels and a bridge: slow on a busy box

NOTEBOOKS = Path(__file__).resolve().parent.parent / "notebooks"
WIDGET_VIEW = "application/vnd.jupyter.widget-view+json"
ANSI = re.compile(r"\x1b\[[0-9;]*m")
TIMES: dict[str, float] = {}


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    """A copy of notebooks/ and a private runtime dir; the bridge is stopped at the end."""
    root = tmp_path_factory.mktemp("nb")
    work = root / "notebooks"
    shutil.copytree(NOTEBOOKS, work, ignore=shutil.ignore_patterns("*.py[co]", "__pycache__",
                                                                   ".ipynb_checkpoints"))
    runtime = root / "runtime"
    runtime.mkdir()
    old = os.environ.get("JUPYTER_RUNTIME_DIR")
    os.environ["JUPYTER_RUNTIME_DIR"] = str(runtime)
    try:
        yield work
    finally:
        stop_bridge(runtime)
        os.environ["JUPYTER_RUNTIME_DIR"] = old
        print("\nnotebook execution times:", {k: round(v, 1) for k, v in TIMES.items()})


def stop_bridge(runtime: Path) -> None:
    path = runtime / "kernelpit-bridge.json"
    if not path.exists():
        return
    info = json.loads(path.read_text())
    import kernelpit
    try:
        with kernelpit.connect() as client:
            run_id = client.run_id
            client.shutdown(5)
    except kernelpit.KernelpitError:
        run_id = None
    try:
        psutil.Process(info["pid"]).wait(60)
    except psutil.NoSuchProcess:
        pass
    except psutil.TimeoutExpired:
        psutil.Process(info["pid"]).kill()
        raise AssertionError("the bridge did not stop within 60 s")
    if run_id:
        wait_until(lambda: not kernel_processes(run_id), timeout=20)


def files(folder: Path) -> set[str]:
    """The files under ``folder``, but Python's bytecode cache (of kp_examples; git-ignored)."""
    return {str(f.relative_to(folder)) for f in folder.rglob("*")
            if f.is_file() and "__pycache__" not in f.parts}


def run(workdir: Path, name: str):
    nb = nbformat.read(workdir / f"{name}.ipynb", as_version=4)
    client = NotebookClient(nb, timeout=300, kernel_name="python3", store_widget_state=True,
                            resources={"metadata": {"path": str(workdir)}})
    before = files(workdir)
    t0 = time.monotonic()
    client.execute()
    TIMES[name] = time.monotonic() - t0
    # example notebooks write only to temporary or user-chosen places, never next to themselves
    assert files(workdir) == before, f"{name}.ipynb left {sorted(files(workdir) - before)}"
    return nb


def outputs(nb, starts: str) -> list:
    cells = [c for c in nb.cells if c.cell_type == "code" and c.source.startswith(starts)]
    assert cells, f"no cell starts with {starts!r}"
    return cells[0].outputs


def text(outs, kind: str = "any") -> str:
    parts = []
    for o in outs:
        if o.output_type == "stream" and kind in ("any", o.name):
            parts.append(o.text)
        elif o.output_type in ("display_data", "execute_result") and kind in ("any", "data"):
            parts.append(o.data.get("text/plain", ""))
        elif o.output_type == "error" and kind in ("any", "error"):
            parts.append(ANSI.sub("", "\n".join(o.traceback)))
    return "\n".join(parts)


def widget_states(nb) -> dict:
    return nb.metadata.get("widgets", {}).get(
        "application/vnd.jupyter.widget-state+json", {}).get("state", {})


def bridge_pid(workdir: Path) -> int:
    runtime = Path(os.environ["JUPYTER_RUNTIME_DIR"])
    return json.loads((runtime / "kernelpit-bridge.json").read_text())["pid"]


def test_quickstart(workdir):
    nb = run(workdir, "quickstart")
    start = text(outputs(nb, "%kp start"))
    assert re.search(r"started a Kernelpit bridge at 127\.0\.0\.1:\d+ \(pid \d+\) with 2 workers",
                     start)
    pid = bridge_pid(workdir)
    assert f"pid {pid}" in start
    assert ("it stops by itself after 30 min with no calls and no connected notebook; "
            "`%kp stop` stops it now") in start
    # the bridge is not the notebook kernel's thread: its own process, in its own session
    proc = psutil.Process(pid)
    assert "serve" in proc.cmdline() and os.getsid(pid) == pid

    tools = text(outputs(nb, "%kp tools"))
    assert "train(epochs: int = 5, seconds_per_epoch: float = 0.2) -> dict" in tools
    assert "Pretend to train a model" in tools and "leak" in tools

    add = outputs(nb, "%kp call add")
    assert add[-1].output_type == "execute_result" and add[-1].data["text/plain"] == "42"

    train = outputs(nb, "%kp call train")
    panel = [o for o in train if o.output_type == "display_data"][0]
    assert WIDGET_VIEW in panel.data
    assert "train() on worker" in panel.data["text/plain"]
    assert "done" in panel.data["text/plain"] and "5/5 (100%)" in panel.data["text/plain"]
    assert train[-1].data["text/plain"] == "{'epochs': 5, 'loss': 0.07776}"

    api = outputs(nb, "import kernelpit")
    assert "3/3 (100%)" in text(api, "data") and api[-1].data["text/plain"] == \
        "{'epochs': 3, 'loss': 0.216}"
    assert outputs(nb, "partials")[-1].data["text/plain"] == "[0, 1, 2, 3, 4]"

    status = text(outputs(nb, "%kp status"))
    assert "2 workers, 2 ready, 0 busy, 0 starting" in status
    assert len(re.findall(r"^\d+\s+default\s+idle\s+\d+", status, re.M)) == 2

    # the saved widget state: the panels are real widgets; the calls' progress bars ended full
    states = widget_states(nb)
    bars = [s["state"] for s in states.values() if s["model_name"] == "FloatProgressModel"]
    assert len(bars) >= 3 and all(b["value"] == 1.0 for b in bars)
    view = [o for o in outputs(nb, "%kp status") if o.output_type == "display_data"][0]
    assert view.data[WIDGET_VIEW]["model_id"] in states


def test_sessions(workdir):
    pid = bridge_pid(workdir)
    nb = run(workdir, "sessions")
    # a new notebook kernel joins the bridge the first one started
    assert f"joined the running Kernelpit bridge" in text(outputs(nb, "%kp start"))
    assert "it stops by itself after 30 min" in text(outputs(nb, "%kp start"))
    assert f"pid {pid}" in text(outputs(nb, "%kp start"))
    fit = outputs(nb, "%kp call fit")
    assert fit[-1].data["text/plain"] == "{'a': 2.0001, 'b': 0.9999, 'epochs': 200}"
    assert outputs(nb, "%kp call predict")[-1].data["text/plain"] == "21.0005"

    cells = [c for c in nb.cells if c.source.startswith("%%kp")]
    first = text(cells[0].outputs)
    assert re.search(r"worker pid \d+", first)
    assert "model in the session: {'a': 2.0, 'b': 1.0, 'epochs': 200}" in first
    rich = cells[1].outputs
    assert any("<b>slope</b> = 2.000" in o.data.get("text/html", "") for o in rich
               if o.output_type == "display_data")
    assert "4.000" in text(rich)
    assert "pushed threshold, labels to session 'model'" in text(outputs(nb, "threshold = 0.5"))
    assert text(cells[2].outputs).strip() == "high"
    assert outputs(nb, "%kp pull")[-1].data["text/plain"] == "('high', 2.0)"
    refused = text(outputs(nb, "import threading"), "stderr")
    assert "cannot push: lock is a _thread.lock, which cannot be moved" in refused
    err = [o for o in cells[3].outputs if o.output_type == "error"][0]
    tb = ANSI.sub("", "\n".join(err.traceback))
    assert err.ename == "RemoteCellError" and "ZeroDivisionError" in tb
    assert "----> 1 1 / 0" in tb and "raised in Kernelpit worker" in tb

    sessions = text(outputs(nb, "%kp sessions"))
    row = re.search(r"^model\s+\d+\s+\S+\s+\S+\s+-\s+2\s+ok\s+(.*)$", sessions, re.M)
    assert row and "opened-by=%%kp" in row.group(1) and "notebook-pid=" in row.group(1)
    attach = text(outputs(nb, "import kernelpit")).strip()
    assert attach.startswith("jupyter console --existing ") and Path(attach.split()[-1]).exists()


def test_jobs(workdir):
    nb = run(workdir, "jobs")
    assert "joined the running Kernelpit bridge" in text(outputs(nb, "%kp start"))
    submitted = outputs(nb, "%kp submit")
    job_id = re.search(r"job ([0-9a-f]{32}) submitted", text(submitted, "stdout")).group(1)
    panel = [o for o in submitted if o.output_type == "display_data"][0]
    assert WIDGET_VIEW in panel.data and f"job {job_id}" in panel.data["text/plain"]
    assert outputs(nb, "job = kp_last_job")[-1].data["text/plain"].startswith("{'epochs': 4,")
    # reattached: the whole journal replayed into the cell, every line and the last progress
    replayed = [o for o in outputs(nb, "%kp job") if o.output_type == "display_data"][0]
    plain = replayed.data["text/plain"]
    assert f"job {job_id}" in plain and "4/4 (100%)" in plain and "done" in plain
    view = widget_states(nb)
    lines = "".join(str(s) for s in view.values())
    assert all(f"epoch {i}/4" in lines for i in range(1, 5))
    assert outputs(nb, "import kernelpit")[-1].data["text/plain"] == \
        "(10, ['partial', 'partial', 'result'], True)"
    assert outputs(nb, "again = ")[-1].data["text/plain"] == "(True, 'succeeded')"
    assert outputs(nb, "slow = ")[-1].data["text/plain"] == "('cancelled', 'cancelled')"
    listing = text(outputs(nb, "%kp jobs"))
    assert re.search(rf"^{job_id}\s+succeeded\s+train\s", listing, re.M)
    assert re.search(r"^\w{32}\s+cancelled\s+spin\s", listing, re.M)


def test_a_notebook_whose_kernel_restarted_mid_job_reattaches(workdir):
    from nbclient.util import run_sync

    start = json.loads((workdir / "jobs.ipynb").read_text())["cells"][2]["source"]
    cells = [nbformat.v4.new_code_cell(src) for src in (
        "%load_ext kernelpit", "".join(start),
        "%kp submit train epochs=5 seconds_per_epoch=0.6")]
    nb = nbformat.v4.new_notebook(cells=cells)
    client = NotebookClient(nb, timeout=300, kernel_name="python3",
                            resources={"metadata": {"path": str(workdir)}})
    with client.setup_kernel():
        for i, cell in enumerate(cells):
            client.execute_cell(cell, i)
        job_id = re.search(r"job ([0-9a-f]{32}) submitted", text(cells[2].outputs)).group(1)
        run_sync(client.km.restart_kernel)(now=True)
        run_sync(client.kc.wait_for_ready)(timeout=120)
        after = [nbformat.v4.new_code_cell(src) for src in (
            "%load_ext kernelpit", "".join(start), f"%kp job {job_id}",
            "kp_last_job.result(timeout=120)")]
        first = len(client.nb.cells)
        client.nb.cells.extend(after)
        for i, cell in enumerate(after, start=first):
            client.execute_cell(cell, i)
    plain = [o for o in after[2].outputs if o.output_type == "display_data"][0].data["text/plain"]
    assert f"job {job_id}" in plain and "train() on worker" in plain
    done = int(re.search(r"(\d)/5", plain).group(1))
    assert done >= 1  # the epochs run before the kernel restarted are shown
    assert after[3].outputs[-1].data["text/plain"].startswith("{'epochs': 5,")


def test_worker_health(workdir):
    nb = run(workdir, "worker-health")
    leak = text(outputs(nb, "first ="))
    assert "call 1: worker" in leak and "holds 80 MiB" in leak
    recycled = text(outputs(nb, "panel.wait_for(lambda p: first not in"))
    assert "replaced ×1 (memory)" in recycled and "2 workers, 2 ready" in recycled
    crashed = text(outputs(nb, "try:"))
    assert re.search(r"crashed: worker \d+ was killed \(SIGKILL\) while running crash\(\)", crashed)
    after = outputs(nb, "panel.wait_for(lambda p: crashed")
    assert "2 workers, 2 ready" in text(after) and after[-1].data["text/plain"] == "2"
    crashed_id = re.search(r"worker (\d+) was killed", crashed).group(1)
    assert not re.search(rf"^{crashed_id}\s+default", text(after), re.M)


def test_headless(workdir):
    nb = run(workdir, "headless")
    out = text(outputs(nb, "import subprocess"))
    assert "workers: 2" in out and "sums: [2, 6, 12]" in out
    assert "result: {'epochs': 3, 'loss': 0.216}" in out and "fit: {'a':" in out
    assert "100.0% 3/3 epoch 3" in out  # the text progress bar of display=True in a script
    assert outputs(nb, "import kernelpit\nsum")[-1].data["text/plain"] == "True"
    assert "2 workers, 2 ready" in text(outputs(nb, "%kp status"))
