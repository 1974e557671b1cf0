"""Named pools, kernelspecs, environment and working directory of workers."""

import json
import os
import sys

import pytest

import kernelpit
from conftest import ADAPTERS


def test_named_pools_route_by_tool_and_by_option(tmp_path):
    pools = {"gpu": {"adapters": ["kernelpit.kernels.demo"], "workers": 1,
                     "env": {"KP_ROLE": "gpu"}, "cwd": str(tmp_path)}}
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS], pools=pools) as pool:
        assert {w.pool for w in pool.workers()} == {"default", "gpu"}
        assert pool.call("add", 1, 2) == 3                        # kp_tools: the default pool
        assert pool.call("count", 3) == 3                         # only the gpu pool has count()
        assert pool.options(pool="gpu").call("add", 1.5, 1.5) == 3.0  # demo's add in "gpu"
        by_pool = {t.pool for t in pool.tools() if t.name == "add"}
        assert by_pool == {"default", "gpu"}
        with pytest.raises(kernelpit.PoolNotFound, match="no pool named 'cpu'"):
            pool.options(pool="cpu").call("add", 1, 2)


def test_workers_get_their_env_and_cwd(tmp_path):
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS],
                        env={"KP_ROLE": "tester"}, cwd=str(tmp_path)) as pool:
        worker = pool.workers()[0]
        import psutil
        proc = psutil.Process(worker.pid)
        assert proc.environ()["KP_ROLE"] == "tester"
        assert proc.cwd() == str(tmp_path)
        assert proc.environ()["OMP_NUM_THREADS"] == "1"  # native thread pools capped by default


def test_a_named_ipykernel_kernelspec_launches_workers(tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "kp-test-python"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": [sys.executable, "-m", "ipykernel_launcher", "-f", "{connection_file}"],
        "display_name": "kp test", "language": "python", "env": {"KP_FROM_SPEC": "yes"}}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with kernelpit.Pool(adapters=["kp_tools"], workers=1, path=[ADAPTERS],
                        kernelspec="kp-test-python") as pool:
        import psutil
        proc = psutil.Process(pool.workers()[0].pid)
        assert "kernelpit.kernels" in proc.cmdline() and proc.environ()["KP_FROM_SPEC"] == "yes"
        assert pool.call("add", 2, 2) == 4


def test_a_kernelspec_that_is_missing_or_not_ipykernel_fails_start(tmp_path, monkeypatch):
    spec_dir = tmp_path / "kernels" / "kp-not-python"
    spec_dir.mkdir(parents=True)
    (spec_dir / "kernel.json").write_text(json.dumps({
        "argv": ["/usr/bin/R", "--slave", "-f", "{connection_file}"], "display_name": "R",
        "language": "R"}))
    monkeypatch.setenv("JUPYTER_PATH", str(tmp_path))
    with pytest.raises(kernelpit.StartError, match=r"no kernelspec named 'nope' \(installed: .*kp-not-python"):
        kernelpit.Pool(adapters=["kp_tools"], workers=1, kernelspec="nope")
    with pytest.raises(kernelpit.StartError, match=r"does not launch ipykernel"):
        kernelpit.Pool(adapters=["kp_tools"], workers=1, kernelspec="kp-not-python")


def test_bad_settings_are_refused_with_what_to_write():
    with pytest.raises(ValueError, match="workers must be a positive integer"):
        kernelpit.Pool(adapters=["kp_tools"], workers=0)
    with pytest.raises(ValueError, match="not a dotted module name"):
        kernelpit.Pool(adapters=["not a module"])
    with pytest.raises(ValueError, match="give either kernelspec or python"):
        kernelpit.Pool(adapters=["kp_tools"], kernelspec="python3", python=sys.executable)
    with pytest.raises(ValueError, match="unknown setting"):
        kernelpit.Pool(pools={"x": {"adapters": ["kp_tools"], "wrokers": 2}})
