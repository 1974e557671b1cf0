"""One worker: a kernel process, its readiness handshake, its state and calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import signal
import time
from pathlib import Path
from typing import Any, Callable

import psutil
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_core.paths import jupyter_runtime_dir

from ..config import PoolConfig
from ..events import Started
from ..exceptions import StartError
from ..info import WorkerInfo
from . import deathwatch
from .call import Call
from .channel import Channel
from .kernel import launch, worker_env
from . import registry as run_registry

_ping_ids = itertools.count(1)


def describe_exit(returncode: int | None) -> str:
    if returncode is None:
        return "exited"
    if returncode < 0:
        try:
            name = signal.Signals(-returncode).name
        except ValueError:
            name = f"signal {-returncode}"
        return f"was killed by {name}"
    return f"exited with code {returncode}"


class Worker:
    """A kernel serving tool calls.  ``state``: starting, idle, busy, stopping, dead."""

    def __init__(self, worker_id: int, config: PoolConfig, spec: KernelSpec, channel: Channel,
                 run_dir: Path, run_id: str, on_exit: Callable[["Worker"], None]) -> None:
        self.id = worker_id
        self.config = config
        self._spec = spec
        self._channel = channel
        self._run_dir = run_dir
        self._run_id = run_id
        self._on_exit = on_exit
        self._state = "starting"
        self.inflight: dict[int, Call] = {}
        self.calls = 0
        self.sessions = 0
        self.km: AsyncKernelManager | None = None
        self.pid: int | None = None
        self.connection_file: str | None = None
        self.tools: list[dict[str, Any]] = []
        self.returncode: int | None = None
        self.started_at = time.time()
        self.log_path = run_dir / f"worker-{worker_id}.log"
        loop = asyncio.get_running_loop()
        self._hello: asyncio.Future[dict[str, Any]] = loop.create_future()
        self._exit: asyncio.Future[None] = loop.create_future()
        self._pongs: dict[int, asyncio.Future[None]] = {}
        self._unwatch: Callable[[], None] | None = None
        self._proc: psutil.Process | None = None

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> str:
        if self._state == "ready":
            return "busy" if self.inflight else "idle"
        return self._state

    @property
    def serving(self) -> bool:
        return self._state == "ready"

    def can_take(self, call: Call) -> bool:
        if not self.serving:
            return False
        if not self.inflight:
            return True
        if len(self.inflight) >= self.config.concurrency or not call.thread_safe:
            return False
        return all(c.thread_safe for c in self.inflight.values())

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Launch the kernel and wait until it has answered the readiness check."""
        cfg = self.config
        env = worker_env(cfg, self.id, self._channel.endpoint, self._run_id)
        run_registry.reserve(self._run_id, self.id)  # orphan registry, phase 1: before the launch
        with open(self.log_path, "ab") as log:
            try:
                self.km = await launch(self._spec, env, cfg.cwd, log, self._connection_file())
            except Exception as exc:
                raise StartError(f"worker {self.id} of pool '{cfg.name}' could not be launched: "
                                 f"{type(exc).__name__}: {exc}") from exc
        self.pid = self.km.provisioner.pid  # type: ignore[union-attr]
        run_registry.activate(self._run_id, self.id, self.pid)  # phase 2: pid, pgid, create time
        self.connection_file = self.km.connection_file
        self._unwatch = deathwatch.watch(self.pid, self._exited)
        try:
            hello = await asyncio.wait_for(asyncio.shield(self._hello), cfg.start_timeout)
        except asyncio.TimeoutError:
            raise StartError(f"worker {self.id} of pool '{cfg.name}' did not become ready within "
                             f"{cfg.start_timeout:g} s (start_timeout); kernel log {self.log_path}:\n"
                             f"{self.log_tail()}") from None
        if "error" in hello:
            raise StartError(f"worker {self.id} of pool '{cfg.name}' cannot serve: "
                             f"{hello['error']['message']}")
        self.tools = hello.get("tools", [])
        await self.ping(timeout=cfg.start_timeout)
        self._state = "ready"

    def _connection_file(self) -> str:
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True)
        return str(runtime / f"kernel-kernelpit-{self._run_id}-{self.id}.json")

    async def ping(self, timeout: float) -> None:
        """Round trip through the call channel; raises TimeoutError when unanswered."""
        ping_id = next(_ping_ids)
        fut = asyncio.get_running_loop().create_future()
        self._pongs[ping_id] = fut
        try:
            self._channel.send(self.id, {"op": "ping", "id": ping_id})
            await asyncio.wait_for(fut, timeout)
        finally:
            self._pongs.pop(ping_id, None)

    def on_message(self, msg: dict[str, Any]) -> None:
        op = msg.get("op")
        if op == "hello" and not self._hello.done():
            self._hello.set_result(msg)
        elif op == "pong":
            fut = self._pongs.get(msg.get("id"))  # type: ignore[arg-type]
            if fut is not None and not fut.done():
                fut.set_result(None)

    def _exited(self) -> None:
        proc = getattr(self.km.provisioner, "process", None) if self.km else None
        if proc is not None:
            with contextlib.suppress(Exception):
                self.returncode = proc.poll()
        was = self._state
        self._state = "dead"
        run_registry.gone(self._run_id, self.id)  # orphan registry: the kernel exited
        if not self._exit.done():
            self._exit.set_result(None)
        if not self._hello.done():
            self._hello.set_exception(StartError(
                f"worker {self.id} of pool '{self.config.name}' {describe_exit(self.returncode)} "
                f"during start; kernel log {self.log_path}:\n{self.log_tail()}"))
            self._hello.exception()
            return
        if was != "stopping":
            self._on_exit(self)

    async def stop(self, grace: float = 2.0) -> None:
        """Stop the kernel: ask the agent to exit, then make sure (kill the process group)."""
        if self._state != "dead":
            self._state = "stopping"
            self._channel.send(self.id, {"op": "stop"})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), grace)
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self.km is not None:
            with contextlib.suppress(Exception):
                if self.km.has_kernel:
                    await self.km.shutdown_kernel(now=True)
                else:
                    self.km.cleanup_resources()
        run_registry.gone(self._run_id, self.id)  # orphan registry: the kernel was stopped
        self._state = "dead"

    async def kill(self) -> None:
        """Kill the kernel's process group now (a stuck worker, or a restart)."""
        if self.km is not None and self._state != "dead":
            with contextlib.suppress(Exception):
                await self.km.provisioner.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

    async def interrupt(self) -> None:
        """SIGINT the kernel (stops a running notebook cell) and cancel running tool calls."""
        for call_id in list(self.inflight):
            self._channel.send(self.id, {"op": "cancel", "id": call_id})
        if self.km is not None and self._state != "dead":
            await self.km.interrupt_kernel()

    # -- calls -----------------------------------------------------------------------
    def begin(self, call: Call) -> None:
        self.inflight[call.id] = call
        call.worker = self
        call.started = time.monotonic()
        call.emit(Started(worker=self.id))
        msg: dict[str, Any] = {"op": "call", "id": call.id, "tool": call.tool}
        if call.batch is not None:
            msg["batch"] = call.batch
        else:
            msg["args"] = call.args
            msg["kwargs"] = call.kwargs
        if call.options.session:
            msg["session"] = call.options.session
        self._channel.send(self.id, msg)

    def end(self, call: Call) -> None:
        if self.inflight.pop(call.id, None) is not None:
            self.calls += 1

    def cancel(self, call: Call) -> None:
        if call.id in self.inflight and not call.cancel_sent:
            call.cancel_sent = True
            self._channel.send(self.id, {"op": "cancel", "id": call.id})

    # -- reporting -------------------------------------------------------------------
    def log_tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace").rstrip().splitlines()
        except OSError:
            return "(no log)"
        return "\n".join(text[-lines:]) or "(empty log)"

    def info(self) -> WorkerInfo:
        rss, cpu = 0, 0.0
        if self.pid and self._state not in ("dead",):
            try:
                if self._proc is None or self._proc.pid != self.pid:
                    self._proc = psutil.Process(self.pid)
                with self._proc.oneshot():
                    rss = self._proc.memory_info().rss
                    cpu = self._proc.cpu_percent(None)
                for child in self._proc.children(recursive=True):
                    with contextlib.suppress(psutil.Error):
                        rss += child.memory_info().rss
            except psutil.Error:
                pass
        current = next(iter(self.inflight.values()), None)
        now = time.monotonic()
        return WorkerInfo(
            id=self.id, pool=self.config.name, state=self.state, pid=self.pid,
            connection_file=self.connection_file, rss=rss, cpu=cpu, calls=self.calls,
            uptime=time.time() - self.started_at,
            current_call=current.describe() if current else None,
            current_call_seconds=(now - current.started) if current and current.started else 0.0,
            sessions=self.sessions)

