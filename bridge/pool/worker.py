"""One worker: a kernel process, its readiness handshake, its state and calls."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import signal
import time
from pathlib import Path
from typing import Any, Callable

import psutil
from jupyter_client.kernelspec import KernelSpec
from jupyter_client.manager import AsyncKernelManager
from jupyter_client.provisioning.local_provisioner import LocalProvisioner
from jupyter_core.paths import jupyter_runtime_dir

from ..config import PoolConfig
from ..events import Started
from ..exceptions import StartError
from ..info import WorkerInfo
from . import deathwatch
from .call import Call
from .channel import Channel
from .crash import Death, classify, lost, oom_kills
from ..kernels.arrow import Transport
from .kernel import channel_url, launch, worker_env
from .placement import is_remote
from . import registry as run_registry
from .state import DEAD, STARTING, STOPPING, WorkerBase
from ..telemetry.bus import TelemetryBus

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



def own_rss(proc: psutil.Process) -> int:
    """RSS without the shared-memory (tmpfs) pages the process maps: those of the pool's
    arena (kernels/arena.py) belong to its files, so replacing the worker would not free
    them, and counting them would recycle a worker for every large value it returned."""
    rss = proc.memory_info().rss
    try:
        with open(f"/proc/{proc.pid}/status", "rb") as f:
            for line in f:
                if line.startswith(b"RssShmem:"):
                    return max(0, rss - int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    return rss

#: Linux lists each thread's children in /proc/PID/task/TID/children (CONFIG_PROC_CHILDREN)
_PROC_CHILDREN = os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children")


def descendants(proc: psutil.Process) -> list[psutil.Process]:
    """The process's children, their children and so on.  Read from /proc/PID/task/*/children
    where Linux has it: that reads this process tree only, where psutil's ``children()``
    reads the stat file of every process on the machine (1.9 ms with 70 processes, per
    sample of each worker, on the controller's CPU while the workers start)."""
    if not _PROC_CHILDREN:
        return proc.children(recursive=True)
    found: list[psutil.Process] = []
    stack = [proc.pid]
    while stack:
        pid = stack.pop()
        try:
            for task in os.listdir(f"/proc/{pid}/task"):
                with open(f"/proc/{pid}/task/{task}/children", "rb") as f:
                    for child in f.read().split():
                        with contextlib.suppress(psutil.Error):
                            found.append(psutil.Process(int(child)))
                            stack.append(int(child))
        except OSError:
            continue  # it (or one of its threads) ended meanwhile
    return found


class Worker(WorkerBase):
    """A kernel serving tool calls: its state machine (``WorkerBase``) plus the process."""

    def __init__(self, worker_id: int, config: PoolConfig, spec: KernelSpec, channel: Channel,
                 run_dir: Path, run_id: str, on_exit: Callable[["Worker"], None],
                 transport: Transport | None = None, spare: bool = False,
                 telemetry: TelemetryBus | None = None) -> None:
        super().__init__(worker_id, config, spare)
        self.transport = transport
        self.telemetry = telemetry or TelemetryBus()
        self._spec = spec
        self._channel = channel
        self._run_dir = run_dir
        self._run_id = run_id
        self._on_exit = on_exit
        self.km: AsyncKernelManager | None = None
        self.pid: int | None = None  # on its node when ``node`` is set: never signal it here
        #: placed off this machine by its provisioner: death, usage and signals go through it
        self.remote = False
        self.node: str | None = None  # Ray node id (hex) of a Ray-placed kernel
        self.host: str | None = None  # that node's address
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
        self.rss = 0                  # bytes, kernel process plus its children, last sample
        self.cpu = 0.0
        self.sampled_at = 0.0
        self.last_heartbeat: float | None = None
        self.recycles = 0             # recycles in this worker slot's lineage
        self.recycle_reason: str | None = None
        self.death: Death | None = None
        self._oom_before = oom_kills()
        self._hb: Any = None

    # -- lifecycle -------------------------------------------------------------------
    async def start(self) -> None:
        """Launch the kernel and wait until it has answered the readiness check."""
        cfg = self.config
        env = worker_env(cfg, self.id, self._channel.endpoint, self._run_id)
        if self.transport is not None:
            env.update(self.transport.env())
        run_registry.reserve(self._run_id, self.id)  # orphan registry, phase 1: before the launch
        remote = is_remote(cfg)  # its provisioner may place it off this machine
        with open(self.log_path, "ab") as log:
            try:
                self.km = await launch(self._spec, env, cfg.cwd, log, self._connection_file(),
                                       str(self._run_dir / f"kernel-{self.id}"), remote)
            except Exception as exc:
                raise StartError(f"worker {self.id} of pool '{cfg.name}' could not be launched: "
                                 f"{type(exc).__name__}: {exc}") from exc
        provisioner = self.km.provisioner
        self.pid = provisioner.pid  # type: ignore[union-attr]
        self.connection_file = self.km.connection_file
        self.remote = not isinstance(provisioner, LocalProvisioner)
        if self.remote:
            where = getattr(provisioner, "node", None) or {}
            self.node, self.host = where.get("node_id"), where.get("host")
            # the registry records where it runs; no local pid, so no reaper ever signals it
            run_registry.activate_remote(self._run_id, self.id, self.node, self.host,
                                         getattr(provisioner, "actor_name", None), self.pid)
            self._unwatch = deathwatch.watch_provisioner(provisioner, self._remote_exited)
        else:
            run_registry.activate(self._run_id, self.id, self.pid)  # phase 2: pid, pgid, start
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
        await self.measure()  # a first RSS figure, so even an early crash can say how big it was
        self.ready()

    def _connection_file(self) -> str:
        runtime = Path(jupyter_runtime_dir())
        runtime.mkdir(parents=True, exist_ok=True)
        return str(runtime / f"kernel-kernelpit-{self._run_id}-{self.id}.json")

    async def ping(self, timeout: float, give_back: bool = False) -> None:
        """Round trip through the call channel; raises TimeoutError when unanswered.
        ``give_back``: the worker first gives back the memory it keeps for its next values
        (unheld received frames, free heap: kernels/heap.py)."""
        ping_id = next(_ping_ids)
        fut = asyncio.get_running_loop().create_future()
        self._pongs[ping_id] = fut
        try:
            if self._exit.done():  # it died before this ping was made: nothing will answer
                # (killed between its hello and its first ping, the start waited start_timeout)
                raise (self._start_failure() if self.state_at_death is STARTING
                       else asyncio.TimeoutError())
            self._channel.send(self.id, {"op": "ping", "id": ping_id, "give_back": True}
                               if give_back else {"op": "ping", "id": ping_id})
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

    def _remote_exited(self, code: int | None, lost_reason: str | None) -> None:
        """A remote kernel ended (``code``), or went with its node or host actor."""
        self.returncode = code
        self._exited(lost(lost_reason, self.rss) if lost_reason else None)

    def _exited(self, death: Death | None = None) -> None:
        proc = getattr(self.km.provisioner, "process", None) if self.km else None
        if proc is not None:
            with contextlib.suppress(Exception):
                self.returncode = proc.poll()
        was = self.died()
        run_registry.gone(self._run_id, self.id)  # orphan registry: the kernel exited
        self.death = death or classify(self.returncode, self.rss,
                                       None if self.remote else self._oom_before)
        if self._hb is not None:
            self._hb.close(linger=0)
            self._hb = None
        if not self._exit.done():
            self._exit.set_result(None)
        if was is STARTING:  # fail the start (its hello or its first ping) now
            error = self._start_failure()
            for fut in (self._hello, *self._pongs.values()):
                if not fut.done():
                    fut.set_exception(error)
                    fut.exception()
            return
        if was is not STOPPING:
            self._on_exit(self)

    def _start_failure(self) -> StartError:
        return StartError(
            f"worker {self.id} of pool '{self.config.name}' {describe_exit(self.returncode)} "
            f"during start; kernel log {self.log_path}:\n{self.log_tail()}")

    async def stop(self, grace: float = 2.0) -> None:
        """Stop the kernel: ask the agent to exit, then make sure (kill the process group)."""
        if self.begin_stop():
            self._channel.send(self.id, {"op": "stop"})
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(asyncio.shield(self._exit), grace)
        if self._unwatch is not None:
            self._unwatch()
            self._unwatch = None
        if self._hb is not None:
            self._hb.close(linger=0)
            self._hb = None
        if self.km is not None:
            with contextlib.suppress(Exception):
                if self.km.has_kernel:
                    await self.km.shutdown_kernel(now=True)
                else:
                    self.km.cleanup_resources()
        run_registry.gone(self._run_id, self.id)  # orphan registry: the kernel was stopped
        self.died()

    async def kill(self, why: str) -> None:
        """Kill the kernel's process group now: ``why`` the pool does it (cancel grace,
        unhealthy, restart), so that its death is not counted against the tool."""
        self.note_kill(why)
        if self.km is not None and self._state is not DEAD:
            with contextlib.suppress(Exception):
                await self.km.provisioner.send_signal(signal.SIGKILL)  # type: ignore[union-attr]

    async def interrupt(self) -> None:
        """SIGINT the kernel (stops a running notebook cell) and cancel running tool calls."""
        for call_id in list(self.inflight):
            self._channel.send(self.id, {"op": "cancel", "id": call_id})
        if self.km is not None and self._state is not DEAD:
            await self.km.interrupt_kernel()

    # -- calls -----------------------------------------------------------------------
    def begin(self, call: Call) -> None:
        call.executor = self._least_busy_executor()
        self.inflight[call.id] = call
        call.worker = self
        call.started = now = time.monotonic()
        call.emit(Started(worker=self.id))
        self._channel.send_call(self.id, call.executor, call.frames)
        if self.telemetry.active:
            self.telemetry.publish("call.started", self.config.name, self.id, call.tool, call.id,
                                   queue_wait=now - call.submitted, attempt=call.attempts)

    def _least_busy_executor(self) -> int:
        """The executor thread with the fewest of this worker's calls in flight: a call sent
        to a busy one waits in its socket until it is free."""
        threads = self.config.concurrency
        if threads == 1 or not self.inflight:
            return 0
        load = [0] * threads
        for running in self.inflight.values():
            load[running.executor] += 1
        return load.index(min(load))

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

    async def measure(self) -> int:
        """Refresh RSS and CPU now: sampled here for a local kernel, by its node (the
        provisioner's ``usage()``, one round trip) for a remote one."""
        if not self.remote:
            return self.sample()
        usage = getattr(self.km.provisioner, "usage", None) if self.km else None
        if usage is not None and self._state is not DEAD:
            with contextlib.suppress(Exception):
                found = await usage()
                if found.get("alive"):
                    self.rss, self.cpu = int(found["rss"]), float(found["cpu_percent"])
                    self.sampled_at = time.monotonic()
        return self.rss

    def sample(self, max_age: float = 0.0) -> int:
        """Refresh RSS (kernel plus children) and CPU %, unless sampled within ``max_age`` s
        (a remote kernel's last figures from :meth:`measure`: its pid is not on this machine)."""
        now = time.monotonic()
        if self.remote or not self.pid or self._state is DEAD or now - self.sampled_at < max_age:
            return self.rss
        try:
            if self._proc is None or self._proc.pid != self.pid:
                self._proc = psutil.Process(self.pid)
                self._proc.cpu_percent(None)
            with self._proc.oneshot():
                rss = own_rss(self._proc)
                self.cpu = self._proc.cpu_percent(None)
            for child in descendants(self._proc):
                with contextlib.suppress(psutil.Error):
                    rss += own_rss(child)
            self.rss = rss
        except psutil.Error:
            pass
        self.sampled_at = now
        return self.rss

    async def heartbeat(self, timeout: float) -> bool:
        """Echo on the kernel's own heartbeat channel; True when it answered in time."""
        import zmq
        import zmq.asyncio

        if self.km is None or self._state is DEAD:
            return False
        if self._hb is None:
            info = self.km.get_connection_info()
            self._hb = zmq.asyncio.Context.instance().socket(zmq.REQ)
            self._hb.setsockopt(zmq.LINGER, 0)
            self._hb.connect(channel_url(info, "hb"))
        try:
            await self._hb.send(b"kernelpit")
            await asyncio.wait_for(self._hb.recv(), timeout)
        except (asyncio.TimeoutError, zmq.ZMQError):
            if self._hb is not None:
                self._hb.close(linger=0)  # a REQ socket without its reply is stuck: make a new one
                self._hb = None
            return False
        self.last_heartbeat = time.time()
        return True

    def activity(self) -> str:
        running = [c.describe() for c in self.inflight.values()]
        return f"while running {', '.join(running)}" if running else "while idle"

    def info(self, recycle_in: dict[str, float] | None = None) -> WorkerInfo:
        self.sample(max_age=0.2)
        current = next(iter(self.inflight.values()), None)
        now = time.monotonic()
        return WorkerInfo(
            id=self.id, pool=self.config.name, state=self.state, pid=self.pid,
            connection_file=self.connection_file, rss=self.rss, cpu=self.cpu, calls=self.calls,
            uptime=time.time() - self.started_at,
            current_call=current.describe() if current else None,
            current_call_seconds=(now - current.started) if current and current.started else 0.0,
            sessions=self.sessions, recycles=self.recycles, recycle_reason=self.recycle_reason,
            last_heartbeat=self.last_heartbeat, recycle_in=recycle_in or {}, spare=self.spare,
            node=self.node, host=self.host)

