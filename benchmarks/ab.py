"""Kernelpit at another commit against this tree, alternated in one sitting.

    python -m benchmarks.ab HEAD~1 --only s1 --peers ipyparallel --rounds 3
    python -m benchmarks.ab 0a25ad3 --only s1,s2 --peers none

A change to the hot path is measured against the code before it on the same machine, at the
same time: this machine's load moves absolute numbers by 30 %, so one run of each, an hour
apart, says little.  Each round runs ``python -m benchmarks`` once with this tree's Kernelpit
and once with Kernelpit at REF (its ``bridge/``, ``kernels/`` and ``widgets/`` laid out as
the installed package, first on ``PYTHONPATH``), the order swapped every round, and prints
each target's value and the median of each Kernelpit row, round by round.

The benchmark code itself (``benchmarks/``) is this tree's for both sides, so only the library
differs; REF must be recent enough to run it.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import tomllib
from pathlib import Path
from typing import Any

from .peers import ROOT


def _package_dirs() -> dict[str, str]:
    """pyproject's ``package-dir``: import package -> folder of this repository."""
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    return config["tool"]["setuptools"]["package-dir"]


def checkout(ref: str, into: Path) -> Path:
    """Kernelpit at ``ref`` laid out as an importable package under ``into``; returns the
    directory to put first on ``PYTHONPATH``."""
    archive = into / "src.tar"
    with archive.open("wb") as out:
        subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", ref],
                       stdout=out, check=True)
    source = into / "src"
    with tarfile.open(archive) as tar:
        tar.extractall(source, filter="data")
    packages = into / "pkg"
    # parents before children: kernelpit/, then kernelpit/kernels/ inside it
    for name, folder in sorted(_package_dirs().items(), key=lambda item: item[0].count(".")):
        shutil.copytree(source / folder, packages / name.replace(".", "/"), dirs_exist_ok=True)
    return packages


def _check_imports_from(pythonpath: str) -> None:
    """Refuse to go on if ``kernelpit`` would not come from ``pythonpath`` (then both sides
    would be this tree, and every difference noise)."""
    env = {**os.environ, "PYTHONPATH": pythonpath}
    found = subprocess.run([sys.executable, "-c", "import kernelpit; print(kernelpit.__file__)"],
                           cwd=str(ROOT), env=env, capture_output=True, text=True).stdout.strip()
    if not found.startswith(pythonpath):
        raise SystemExit(f"kernelpit imports from {found or 'nowhere'} with PYTHONPATH={pythonpath}, "
                         "not from the checked-out commit: something ahead of PYTHONPATH on "
                         "sys.path provides it; run from an environment where Kernelpit is "
                         "installed normally (pip install -e . or pip install .)")


def run_once(args: argparse.Namespace, pythonpath: str | None, out: Path) -> dict[str, Any]:
    """One ``python -m benchmarks`` run; returns its JSON document."""
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = os.pathsep.join(filter(None, [pythonpath, env.get("PYTHONPATH")]))
    command = [sys.executable, "-m", "benchmarks", "--only", args.only, "--peers", args.peers,
               "--out", str(out)]
    if args.quick:
        command.append("--quick")
    done = subprocess.run(command, cwd=str(ROOT), env=env, capture_output=True, text=True)
    if done.returncode != 0:
        raise SystemExit(f"python -m benchmarks failed ({done.returncode}):\n{done.stderr[-2000:]}")
    [result] = out.glob("*.json")
    return json.loads(result.read_text())


def figures(doc: dict[str, Any]) -> dict[str, float]:
    """Each target's value, and the median of each Kernelpit row, by name."""
    found: dict[str, float] = {}
    for scenario in doc["scenarios"].values():
        for target in scenario.get("targets", []):
            if target.get("value") is not None:
                found[target["id"]] = target["value"]
        for row in scenario.get("rows", []):
            if row.get("system", "").startswith("kernelpit") and row.get("median") is not None:
                name = " ".join(filter(None, [row["system"], row.get("case", "")]))
                found[f"{name} ({row.get('unit', '')})"] = row["median"]
    return found


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.ab", description=__doc__.splitlines()[0])
    p.add_argument("ref", help="the commit to compare with (anything `git archive` takes)")
    p.add_argument("--only", required=True, help="scenarios, as for python -m benchmarks")
    p.add_argument("--peers", default="none", help="as for python -m benchmarks (default: none)")
    p.add_argument("--rounds", type=int, default=3, help="pairs of runs (default 3)")
    p.add_argument("--quick", action="store_true", help="each run in quick mode")
    args = p.parse_args(argv)
    with tempfile.TemporaryDirectory(prefix="kernelpit-ab-") as tmp:
        old_path = str(checkout(args.ref, Path(tmp)))
        _check_imports_from(old_path)
        results: dict[str, list[dict[str, float]]] = {"ref": [], "tree": []}
        for k in range(args.rounds):
            order = [("ref", old_path), ("tree", None)]
            for side, path in order if k % 2 == 0 else order[::-1]:
                out = Path(tmp) / f"{side}-{k}"
                out.mkdir()
                print(f"round {k + 1}/{args.rounds}: {side}", file=sys.stderr, flush=True)
                results[side].append(figures(run_once(args, path, out)))
    names = sorted({name for run in results["ref"] + results["tree"] for name in run})
    width = max(map(len, names), default=10)
    print(f"{'':{width}}  {args.ref + ' (ref)':>30}  {'this tree':>30}")
    for name in names:
        cells = [", ".join(f"{run[name]:.4g}" if name in run else "-" for run in results[side])
                 for side in ("ref", "tree")]
        print(f"{name:{width}}  {cells[0]:>30}  {cells[1]:>30}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
