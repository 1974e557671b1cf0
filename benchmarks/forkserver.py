"""The kernel fork-server (issue 16 §1): start, replacement and memory, exec against fork.

    python -m benchmarks.forkserver              # 3 rounds (~1 min)
    python -m benchmarks.forkserver --rounds 5 --spawn fork   # fork only, no exec rows

Every figure is a ratio to a reference measured in the same run (each round: the reference,
then 8 workers of each spawn, each after the machine is quiet, ``benchmarks/quiet.py``):
the start of one plain ipykernel through ``jupyter_client.KernelManager`` (to a
kernel_info reply), and that kernel's unique memory (USS).  Targets:

* 8 workers from ``Pool()`` to ready, the zygote's own start included: <= 1.0x
* a replacement after ``kill -9``, without spares, back to N idle: <= 0.25x
* USS per idle worker: <= 0.5x a plain ipykernel's

Prints a table and writes benchmarks/results/forkserver-<date>-<host>.json.  Figures
only: nothing here asserts a time.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import platform
import signal
import socket
import statistics
import sys
import time
from pathlib import Path

import psutil
from jupyter_client import KernelManager

import kernelpit

from .peers import bytecode_as_installed
from .quiet import settle

ADAPTER = "kernelpit.kernels.demo"
RESULTS = Path(__file__).parent / "results"
TARGETS = {"start8": 1.0, "replace": 0.25, "uss": 0.5}


def _wait(predicate, timeout: float = 60.0) -> None:
    end = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > end:
            raise TimeoutError("condition not met")
        time.sleep(0.002)


def plain_kernel() -> tuple[float, int]:
    """Seconds to start one plain ipykernel and get its kernel_info reply; its USS (bytes)."""
    km = KernelManager(kernel_name="python3")
    t0 = time.perf_counter()
    km.start_kernel()
    client = km.client()
    client.start_channels()
    try:
        client.wait_for_ready(timeout=60)
        seconds = time.perf_counter() - t0
        time.sleep(0.3)  # settle, as an idle worker would have
        uss = psutil.Process(km.provisioner.pid).memory_full_info().uss
    finally:
        client.stop_channels()
        km.shutdown_kernel(now=True)
    return seconds, uss


def start8(spawn: str) -> float:
    """Seconds from ``Pool(workers=8)`` to all ready (it returns when they are)."""
    t0 = time.perf_counter()
    pool = kernelpit.Pool(adapters=[ADAPTER], workers=8, spawn=spawn)
    seconds = time.perf_counter() - t0
    pool.close()
    return seconds


def replacement_and_uss(spawn: str, kills: int) -> tuple[list[float], float]:
    """kill -9 of an idle worker until the pool is back to N idle (no spares); the mean USS
    of an idle worker."""
    times = []
    with kernelpit.Pool(adapters=[ADAPTER], workers=2, spawn=spawn,
                        taint_threshold=10**6) as pool:
        def idle() -> list:
            return [w for w in pool.workers() if w.state == "idle"]

        _wait(lambda: len(idle()) == 2)
        time.sleep(0.3)
        uss = statistics.mean(psutil.Process(w.pid).memory_full_info().uss for w in idle())
        for _ in range(kills):
            _wait(lambda: len(idle()) == 2)
            victim = idle()[0]
            t0 = time.perf_counter()
            os.kill(victim.pid, signal.SIGKILL)
            _wait(lambda: len(idle()) == 2 and victim.id not in {w.id for w in idle()})
            times.append(time.perf_counter() - t0)
    return times, uss


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--spawn", choices=("exec", "fork"), action="append",
                    help="only this spawn (repeatable; default both)")
    args = ap.parse_args(argv)
    spawns = args.spawn or ["exec", "fork"]
    bytecode_as_installed()  # as a pip install leaves Kernelpit (see benchmarks.peers)
    # Each round starts the reference and then 8 workers of each spawn, back to back, so a
    # change in the machine's load (it is shared) moves both sides of a round's ratio alike.
    ref_start, ref_uss = [], []
    starts: dict[str, list[float]] = {spawn: [] for spawn in spawns}
    settled = []
    for _ in range(args.rounds):
        settled.append(settle())  # the machine is shared: start each measurement on a quiet one
        s, u = plain_kernel()
        ref_start.append(s)
        ref_uss.append(u)
        for spawn in spawns:
            settled.append(settle())
            starts[spawn].append(start8(spawn))
    ref = {"start": statistics.median(ref_start), "uss": statistics.median(ref_uss)}
    rows: dict[str, dict] = {}
    for spawn in spawns:
        replace, uss = replacement_and_uss(spawn, kills=2 * args.rounds)
        row = {"start8": statistics.median(starts[spawn]), "replace": statistics.median(replace),
               "uss": uss, "start8_rounds": starts[spawn]}
        row["ratios"] = {"start8": row["start8"] / ref["start"],
                         "replace": row["replace"] / ref["start"], "uss": row["uss"] / ref["uss"]}
        row["start8_round_ratios"] = [a / b for a, b in zip(starts[spawn], ref_start)]
        row["met"] = {k: row["ratios"][k] <= TARGETS[k] for k in TARGETS}
        rows[spawn] = row
    print(f"reference: one plain ipykernel starts in {ref['start'] * 1000:.0f} ms, "
          f"USS {ref['uss'] / 2**20:.1f} MiB")
    print(f"{'':6} {'8 workers':>18} {'replacement':>18} {'USS per worker':>20}")
    for spawn, row in rows.items():
        r = row["ratios"]
        print(f"{spawn:6} {row['start8'] * 1000:8.0f} ms {r['start8']:5.2f}x "
              f"{row['replace'] * 1000:8.0f} ms {r['replace']:5.2f}x "
              f"{row['uss'] / 2**20:8.1f} MiB {r['uss']:5.2f}x")
    for spawn, row in rows.items():
        print(f"{spawn:6} 8 workers / reference, round by round: "
              + " ".join(f"{r:.2f}x" for r in row["start8_round_ratios"]))
    if "fork" in rows:
        for key, target in TARGETS.items():
            r = rows["fork"]["ratios"][key]
            print(f"target {key}: fork {r:.2f}x <= {target}x: {'met' if r <= target else 'MISSED'}")
    out = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
           "host": socket.gethostname(), "cpu": platform.processor() or platform.machine(),
           "cpus": os.cpu_count(), "python": sys.version.split()[0], "rounds": args.rounds,
           "load": os.getloadavg(), "settle": settled, "reference": {**ref, "start_rounds": ref_start},
           "rows": rows, "targets": TARGETS}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"forkserver-{datetime.date.today()}-{socket.gethostname()}.json"
    path.write_text(json.dumps(out, indent=2))
    print(f"wrote {path}")
    return out


if __name__ == "__main__":
    main()
