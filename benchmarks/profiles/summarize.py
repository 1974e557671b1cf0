"""Summarize a ``py-spy record --format raw`` file: top frames per process kind.

    python benchmarks/profiles/summarize.py PROFILE_raw.txt [--top 25] [--skip-imports]

Process kinds: ``worker`` (kernelpit.kernels), ``forked-worker`` (a worker forked by a
zygote: its stacks run ``run_child``), ``zygote`` (kernelpit.kernels.zygote, serving),
``bridge`` (kernelpit serve), ``owner`` (everything else: the benchmark / pool-owner process).  Counts are
py-spy samples; threads blocked in C (select, zmq recv, grpc waits) show up as
samples too, so read waiting frames as "a thread was parked here".
"""

from __future__ import annotations

import argparse
from collections import Counter, defaultdict


def kind(procs: list[str], frames: list[str]) -> str:
    joined = " ".join(procs)
    if any(f.startswith("run_child ") for f in frames):
        return "forked-worker"
    if "kernelpit.kernels.zygote" in joined:
        return "zygote"
    if "kernelpit.kernels" in joined:
        return "worker"
    if "kernelpit serve" in joined:
        return "bridge"
    return "owner"


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("path")
    p.add_argument("--top", type=int, default=25)
    p.add_argument("--skip-imports", action="store_true", help="drop start-up (import) stacks")
    args = p.parse_args()
    incl: dict[str, Counter] = defaultdict(Counter)
    self_: dict[str, Counter] = defaultdict(Counter)
    total: Counter = Counter()
    for line in open(args.path):
        stack, _, n = line.rstrip("\n").rpartition(" ")
        frames = stack.split(";")
        procs = [f for f in frames if f.startswith("process ")]
        rest = [f for f in frames if not f.startswith("process ")]
        if not rest or (args.skip_imports and any("_find_and_load" in f for f in rest)):
            continue
        k = kind(procs, rest)
        total[k] += int(n)
        self_[k][rest[-1]] += int(n)
        for f in set(rest):
            incl[k][f] += int(n)
    print(f"samples by process kind: {dict(total)}")
    for k in sorted(incl):
        print(f"\n== {k}: self (top {args.top})")
        for f, n in self_[k].most_common(args.top):
            print(f"  {n:6d}  {f}")
        print(f"\n== {k}: inclusive (top {args.top})")
        for f, n in incl[k].most_common(args.top):
            print(f"  {n:6d}  {f}")


if __name__ == "__main__":
    main()
