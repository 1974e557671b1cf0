"""Keep the benchmark suite from rotting: run a small subset once, check the JSON it writes.

Never a timed assertion: the numbers are not checked, only that every scenario
ran and reported rows and targets in the expected shape.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCENARIOS = {"s1": "s1_latency", "s5": "s5_crash", "s6": "s6_stream"}


@pytest.mark.timeout(120)
def test_quick_subset_writes_json(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks", "--quick", "--repeats", "1",
         "--only", ",".join(SCENARIOS), "--peers", "jupyter_client", "--no-remote",
         "--out", str(tmp_path)],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    files = list(tmp_path.glob("*.json"))
    assert len(files) == 1, files
    doc = json.loads(files[0].read_text())

    assert set(doc["scenarios"]) == set(SCENARIOS.values())
    meta = doc["meta"]
    assert meta["mode"] == "quick"
    assert meta["machine"]["nproc"] and meta["machine"]["python"]
    assert meta["leftover_processes"] == []
    for key, sc in doc["scenarios"].items():
        assert "error" not in sc, (key, sc.get("traceback"))
        assert sc["rows"], key
        for r in sc["rows"]:
            assert r["status"] in ("ok", "skipped", "error"), r
            if r["status"] != "ok":
                assert r["reason"], r
        for t in sc["targets"]:
            assert t["met"] in (True, False, None), t

    systems = {(r["system"], r["status"]) for r in doc["scenarios"]["s1_latency"]["rows"]}
    assert ("kernelpit-embedded", "ok") in systems
    assert ("jupyter_client", "ok") in systems
    assert ("kernelpit-remote", "skipped") in systems  # --no-remote: reported, not faked
    assert ("ipyparallel", "skipped") in systems and ("dask", "skipped") in systems
    assert ("ref-grpc-echo", "skipped") in systems  # the remote rows' reference goes with them
    embedded = next(r for r in doc["scenarios"]["s1_latency"]["rows"]
                    if r["system"] == "kernelpit-embedded")
    assert set(embedded["vs_peers"]) == {"jupyter_client"}  # every Kernelpit row vs every peer
    assert {t["id"] for t in doc["scenarios"]["s1_latency"]["targets"]} >= {"S1.embedded_p50",
                                                                            "S1.remote_vs_echo"}
    s5 = {t["id"]: t for t in doc["scenarios"]["s5_crash"]["targets"]}
    assert set(s5) >= {"S5.error", "S5.full", "S5.replace_vs_ipykernel"}
    assert s5["S5.replace_vs_ipykernel"]["ratio"] and s5["S5.replace_vs_ipykernel"]["value"] > 0
    s6 = doc["scenarios"]["s6_stream"]
    assert {(r["system"], r["case"]) for r in s6["rows"]} >= {
        ("kernelpit-embedded", "delivery latency"), ("kernelpit-embedded", "no-op call, same run"),
        ("kernelpit-embedded", "events/s"), ("kernelpit-embedded", "delivered of 20,000")}
    s6_targets = {t["id"]: t for t in s6["targets"]}
    assert s6_targets["S6.embedded_p50"]["met"] in (True, False) and s6_targets["S6.embedded_p50"]["ratio"]
    assert s6_targets["S6.remote_p50"]["met"] is None  # --no-remote: not measured, and says so
    assert "Kp/peer" in proc.stdout and "TARGETS" in proc.stdout


@pytest.mark.timeout(120)
def test_ab_runs_the_other_commits_kernelpit(tmp_path: Path) -> None:
    # benchmarks.ab compares this tree with Kernelpit at another commit; that side must really
    # import the other commit's code, or every comparison is the tree against itself
    from benchmarks import ab

    packages = ab.checkout("HEAD", tmp_path)
    found = subprocess.run(
        [sys.executable, "-c", "import kernelpit, kernelpit.kernels.agent as a; "
                               "print(kernelpit.__file__); print(a.__file__)"],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": str(packages)},
        capture_output=True, text=True, timeout=60)
    assert found.returncode == 0, found.stderr
    assert [Path(line).parent for line in found.stdout.split()] == [
        packages / "kernelpit", packages / "kernelpit" / "kernels"]
    proc = subprocess.run(
        [sys.executable, "-m", "benchmarks.ab", "HEAD", "--only", "s1", "--quick", "--rounds", "1"],
        cwd=ROOT, capture_output=True, text=True, timeout=110)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = {line.split()[0]: line for line in proc.stdout.splitlines()[1:]}
    assert "S1.embedded_p50" in lines and "S1.remote_vs_echo" in lines
