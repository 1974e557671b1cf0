"""The peers, started and stopped by the suite: ipyparallel, Dask distributed, raw jupyter_client.

Each peer is a real install (the ``bench`` extra).  ``available()`` says why a
peer cannot run; the suite then reports it as skipped, never a made-up number.
"""

from __future__ import annotations

import importlib.util
import logging
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent


def worker_environment() -> None:
    """Let peer workers (separate processes) import ``benchmarks.peerfuncs``."""
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if str(ROOT) not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([str(ROOT), *parts])
    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))


def bytecode_as_installed() -> bool:
    """Compile Kernelpit's own modules to bytecode, as installing a package does.

    An editable install used with ``PYTHONDONTWRITEBYTECODE`` (this VM's default) has no
    ``.pyc`` files, so every zygote and every exec'd worker would compile Kernelpit's ~25
    modules from source (about 85 ms, most of it on the start's critical path), while
    ipykernel (the S4/S5 reference) and the peers come with theirs.  True when every file
    compiled (``__pycache__`` is ignored by git)."""
    import compileall
    return all([compileall.compile_dir(str(ROOT / d), quiet=1)
                for d in ("bridge", "kernels", "widgets")])


def missing(module: str) -> str | None:
    if importlib.util.find_spec(module) is None:
        return f"{module} is not installed (pip install -e '.[bench]')"
    return None


class IppPeer:
    name = "ipyparallel"

    @staticmethod
    def available() -> str | None:
        return missing("ipyparallel")

    def __init__(self, n: int) -> None:
        self.n = n
        self.cluster: Any = None
        self.rc: Any = None

    def start(self) -> float:
        """Start a controller and ``n`` engines and connect; returns seconds to all engines ready."""
        import ipyparallel as ipp
        worker_environment()
        t0 = time.perf_counter()
        self.cluster = ipp.Cluster(n=self.n, log_level=logging.ERROR)
        self.rc = self.cluster.start_and_connect_sync()
        self.rc.wait_for_engines(self.n, timeout=120)
        return time.perf_counter() - t0

    @property
    def view(self) -> Any:
        return self.rc.load_balanced_view()

    def pids(self) -> list[int]:
        return list(self.rc[:].apply_sync(os.getpid))

    def stop(self) -> None:
        if self.rc is not None:
            try:
                self.rc.close()
            except Exception:
                pass
        if self.cluster is not None:
            try:
                self.cluster.stop_cluster_sync()
            except Exception:
                pass
        self.cluster = self.rc = None


class DaskPeer:
    name = "dask"

    @staticmethod
    def available() -> str | None:
        return missing("distributed")

    def __init__(self, n: int) -> None:
        self.n = n
        self.cluster: Any = None
        self.client: Any = None

    def start(self) -> float:
        """A LocalCluster of ``n`` single-threaded worker processes; seconds to all ready."""
        from dask.distributed import Client, LocalCluster
        worker_environment()
        logging.getLogger("distributed").setLevel(logging.ERROR)
        t0 = time.perf_counter()
        self.cluster = LocalCluster(n_workers=self.n, threads_per_worker=1, processes=True,
                                    dashboard_address=None, silence_logs=logging.ERROR)
        self.client = Client(self.cluster)
        self.client.wait_for_workers(self.n, timeout=120)
        return time.perf_counter() - t0

    def worker_addresses(self) -> list[str]:
        return sorted(self.client.scheduler_info(n_workers=-1)["workers"]) if _takes_n_workers(
            self.client) else sorted(self.client.scheduler_info()["workers"])

    def pids(self) -> list[int]:
        return list(self.client.run(os.getpid).values())

    def stop(self) -> None:
        for obj in (self.client, self.cluster):
            if obj is not None:
                try:
                    obj.close()
                except Exception:
                    pass
        self.client = self.cluster = None


def _takes_n_workers(client: Any) -> bool:
    import inspect
    try:
        return "n_workers" in inspect.signature(client.scheduler_info).parameters
    except (TypeError, ValueError):
        return False


class RawKernel:
    """One plain ipykernel driven by jupyter_client's BlockingKernelClient (the hand-rolled way)."""

    name = "jupyter_client"

    @staticmethod
    def available() -> str | None:
        return missing("ipykernel") or missing("jupyter_client")

    def __init__(self) -> None:
        self.km: Any = None
        self.kc: Any = None

    def start(self) -> float:
        from jupyter_client.manager import KernelManager
        t0 = time.perf_counter()
        self.km = KernelManager(kernel_name="python3")
        self.km.start_kernel(extra_arguments=["--HistoryManager.enabled=False"],
                             stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        self.kc = self.km.client()
        self.kc.start_channels()
        self.kc.wait_for_ready(timeout=60)
        return time.perf_counter() - t0

    def execute(self, code: str = "pass") -> None:
        """Execute ``code`` and wait for its execute_reply on the shell channel."""
        msg_id = self.kc.execute(code, silent=True, store_history=False)
        while True:
            reply = self.kc.get_shell_msg(timeout=30)
            if reply["parent_header"].get("msg_id") == msg_id:
                if reply["content"]["status"] != "ok":
                    raise RuntimeError(reply["content"])
                return

    def pids(self) -> list[int]:
        proc = getattr(self.km.provisioner, "process", None)
        return [proc.pid] if proc is not None else []

    def stop(self) -> None:
        if self.kc is not None:
            try:
                self.kc.stop_channels()
            except Exception:
                pass
        if self.km is not None:
            try:
                self.km.shutdown_kernel(now=True)
            except Exception:
                pass
        self.km = self.kc = None
