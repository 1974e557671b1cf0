"""The layers of docs/architecture.md, checked on what a fresh process really imports."""

import json
import subprocess
import sys

import pytest


def imported(*modules: str) -> set[str]:
    code = ("import json, sys\n" + "".join(f"import {m}\n" for m in modules)
            + "print(json.dumps(sorted(sys.modules)))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return set(json.loads(out.stdout))


def under(names: set[str], *prefixes: str) -> list[str]:
    return sorted(n for n in names if any(n == p or n.startswith(p + ".") for p in prefixes))


@pytest.mark.parametrize("modules,forbidden", [
    # a client process loads neither the server nor the pool machinery
    (("kernelpit", "kernelpit.remote"),
     ("kernelpit.service", "kernelpit.pool", "kernelpit.local", "jupyter_client")),
    # the job package by itself, and its client side, load no runner, store or pool
    (("kernelpit.jobs", "kernelpit.jobs.remote"),
     ("kernelpit.pool", "kernelpit.service", "kernelpit.local", "kernelpit.jobs.runner",
      "kernelpit.jobs.sqlite", "kernelpit.jobs.postgres", "jupyter_client")),
    # the server never loads the client side, the CLI or the widgets
    (("kernelpit.service.server",), ("kernelpit.remote", "kernelpit.cli", "kernelpit.widgets")),
    # the core API loads no transport, CLI or widgets
    (("kernelpit.caller", "kernelpit.sync", "kernelpit.backend"),
     ("kernelpit.remote", "kernelpit.service", "kernelpit.contract", "kernelpit.cli",
      "kernelpit.widgets", "kernelpit.pool")),
    # the panels format with kernelpit.terminal, never through the CLI
    (("kernelpit.widgets.stream", "kernelpit.widgets.panels"), ("kernelpit.cli",)),
    # a worker kernel's package loads none of the control plane
    (("kernelpit.kernels", "kernelpit.kernels.protocol"),
     ("kernelpit.pool", "kernelpit.service", "kernelpit.remote", "grpc", "jupyter_client")),
])
def test_a_layer_imports_nothing_above_it(modules, forbidden):
    assert under(imported(*modules), *forbidden) == []
