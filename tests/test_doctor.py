"""``kernelpit doctor``: environment checks, stale files and orphans, as a real command."""

import json
import os
import signal
import subprocess
import sys
import textwrap

import psutil
import pytest

from conftest import kernel_processes

from kernelpit import doctor
from kernelpit.config import PoolConfig


def run_doctor(runtime, *args, env=None):
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(runtime), **(env or {})}
    return subprocess.run([sys.executable, "-m", "kernelpit", "doctor", *args], env=env,
                          capture_output=True, text=True, timeout=180)


def dead_pid():
    p = subprocess.Popen([sys.executable, "-c", "pass"])
    p.wait()
    return p.pid


def test_a_healthy_environment_has_no_problem(tmp_path):
    out = run_doctor(tmp_path)
    assert out.returncode == 0, out.stdout + out.stderr
    for name in ("python:", "package ipykernel:", "package jupyter_client:", "package pyzmq:",
                 "package grpcio:", "worker kernel:", "kernelspecs:", "loopback port:",
                 "runtime dir:", "run registry:", "discovery file:", "orphans:"):
        assert name in out.stdout
    assert sys.executable in out.stdout
    assert "no problem found" in out.stdout


def test_json_output(tmp_path):
    out = run_doctor(tmp_path, "--json")
    report = json.loads(out.stdout)
    assert report["ok"] is True and out.returncode == 0
    assert {c["status"] for c in report["checks"]} <= {"ok", "warn"}
    assert {"python", "loopback port", "orphans"} <= {c["name"] for c in report["checks"]}


def test_a_damaged_run_registry_is_a_problem_with_a_fix(tmp_path):
    """The damage a user's registry showed: the runs table's page holding kernels rows."""
    from kernelpit.pool.registry import RunRegistry

    path = tmp_path / "kernelpit" / "registry.sqlite"
    reg = RunRegistry(path)
    for run in ("r1", "r2"):
        reg.open_run(run)
    reg.reserve("r1", 1)
    reg.reserve("r1", 2)
    reg._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    roots = dict(reg._db.execute("SELECT name, rootpage FROM sqlite_master"))
    size = reg._db.execute("PRAGMA page_size").fetchone()[0]
    reg.close()
    data = bytearray(path.read_bytes())
    at = lambda page: slice((page - 1) * size, page * size)  # noqa: E731
    data[at(roots["runs"])] = data[at(roots["kernels"])]
    path.write_bytes(bytes(data))
    out = run_doctor(tmp_path)
    assert out.returncode == 1
    assert f"[PROBLEM] run registry: {path} is damaged: " in out.stdout
    assert f"fix: once no Kernelpit pool or bridge of this user runs, move it aside (`mv {path} " \
           in out.stdout


def test_stale_discovery_files_are_reported_and_fixed_live_ones_kept(tmp_path):
    stale = tmp_path / "kernelpit-bridge.json"
    stale.write_text(json.dumps({"address": "127.0.0.1:1", "pid": dead_pid(), "token": "x"}))
    live = tmp_path / "kernelpit-bridge-other.json"
    me = psutil.Process()
    live.write_text(json.dumps({"address": "127.0.0.1:2", "pid": me.pid, "token": "y",
                                "process_started": me.create_time()}))
    out = run_doctor(tmp_path)
    assert out.returncode == 1
    assert f"[PROBLEM] discovery file: stale {stale}" in out.stdout
    assert "fix: delete it" in out.stdout
    assert f"{live}: bridge at 127.0.0.1:2 (pid {me.pid}) is running" in out.stdout
    out = run_doctor(tmp_path, "--fix")
    assert out.returncode == 0, out.stdout
    assert "[fixed  ] discovery file" in out.stdout
    assert not stale.exists() and live.exists()


def test_an_unusable_runtime_dir_is_a_problem_with_a_fix(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("")
    out = run_doctor(blocker / "runtime")
    assert out.returncode == 1
    assert "[PROBLEM] runtime dir:" in out.stdout
    assert "fix: make it writable" in out.stdout


def test_orphaned_kernels_of_a_killed_script_are_reported_and_fixed(tmp_path):
    env = {**os.environ, "JUPYTER_RUNTIME_DIR": str(tmp_path), "KERNELPIT_LIFELINE": "0"}
    script = textwrap.dedent("""
        import time, kernelpit
        pool = kernelpit.Pool(adapters=["kernelpit.kernels.demo"], workers=2)
        print(pool.run_id, flush=True)
        time.sleep(600)
    """)
    controller = subprocess.Popen([sys.executable, "-c", script], env=env, stdout=subprocess.PIPE,
                                  text=True)
    run_id = controller.stdout.readline().strip()
    kernels = kernel_processes(run_id)
    left = 3 if PoolConfig().forks else 2  # forked workers leave their zygote too
    try:
        assert len(kernels) == 2
        controller.send_signal(signal.SIGKILL)
        controller.wait()
        assert list(tmp_path.glob(f"kernel-kernelpit-{run_id}-*.json"))
        out = run_doctor(tmp_path)
        assert out.returncode == 1
        assert f"[PROBLEM] orphans: {left} process(es) of earlier runs whose controller is gone" \
            in out.stdout
        assert f"of run {run_id}" in out.stdout and "kernelpit doctor --fix" in out.stdout
        assert len(kernel_processes(run_id)) == 2  # reporting kills nothing
        out = run_doctor(tmp_path, "--fix")
        assert out.returncode == 0, out.stdout
        assert f"[fixed  ] orphans: ended {left} process(es)" in out.stdout
        assert kernel_processes(run_id) == []
        assert not list(tmp_path.glob(f"kernel-kernelpit-{run_id}-*.json"))
        again = run_doctor(tmp_path)
        assert again.returncode == 0 and "no kernel left by an earlier run" in again.stdout
    finally:
        controller.kill()
        controller.wait()
        for p in kernels:
            if p.is_running():
                p.kill()


def test_run_checks_from_python(tmp_path, monkeypatch):
    monkeypatch.setenv("JUPYTER_RUNTIME_DIR", str(tmp_path))
    checks = doctor.run_checks(kernel_check=False)
    assert doctor.problems(checks) == []
    assert all(isinstance(c, doctor.Check) for c in checks)
    text = doctor.format_report(checks)
    assert "no problem found" in text


@pytest.mark.parametrize("args", [["doctor", "--help"]])
def test_doctor_is_a_cli_subcommand(args):
    out = subprocess.run([sys.executable, "-m", "kernelpit", *args], capture_output=True,
                         text=True, timeout=60)
    assert out.returncode == 0 and "--fix" in out.stdout
