"""The embedded pool, asyncio flavour: worker kernels owned by this process."""

from __future__ import annotations

from typing import Any

from .caller import AsyncCaller
from .config import PoolConfig
from .info import SessionInfo, ToolInfo, WorkerInfo
from .pool import PoolManager


def build_configs(adapters: Any, workers: int | None, pools: dict[str, Any] | None,
                  settings: dict[str, Any]) -> list[PoolConfig]:
    """The named pools a ``Pool(...)`` call describes: the default one and ``pools=``."""
    configs: list[PoolConfig] = []
    if adapters or not pools:
        data = dict(settings)
        if workers is not None:
            data["workers"] = workers
        configs.append(PoolConfig(name=data.pop("name", "default"), adapters=adapters or [], **data))
    elif settings or workers is not None:
        raise TypeError("pool settings without adapters: put them in the pools={...} entries")
    for name, spec in (pools or {}).items():
        if isinstance(spec, PoolConfig):
            spec.name = name
            configs.append(spec)
        else:
            configs.append(PoolConfig.from_dict(name, dict(spec)))
    return configs


class AsyncPool(AsyncCaller):
    """A pool of worker kernels, used from asyncio::

        async with kernelpit.aio.Pool(adapters=["mytools"], workers=2) as pool:
            await pool.call("add", a=1, b=2)

    Takes the same arguments as :class:`kernelpit.Pool`.
    """

    def __init__(self, adapters: Any = (), workers: int | None = None, *,
                 pools: dict[str, Any] | None = None, **settings: Any) -> None:
        self._manager = PoolManager(build_configs(adapters, workers, pools, settings))
        super().__init__(self._manager)

    @property
    def run_id(self) -> str:
        return self._manager.run_id

    async def start(self) -> "AsyncPool":
        """Start every worker concurrently; returns when all are ready (or raises StartError)."""
        if not self._manager.started:
            await self._manager.start()
        return self

    async def close(self) -> None:
        """Stop every worker kernel.  Safe to call twice."""
        await self._manager.close()

    async def __aenter__(self) -> "AsyncPool":
        return await self.start()

    async def __aexit__(self, *exc: Any) -> None:
        await self.close()

    async def tools(self, pool: str | None = None) -> list[ToolInfo]:
        """The tools served, with name, doc, signature and parameter schema."""
        return self._manager.tools(pool)

    async def workers(self) -> list[WorkerInfo]:
        """A health snapshot of every worker."""
        return self._manager.workers()

    async def sessions(self) -> list[SessionInfo]:
        """Open sessions (including lost ones, until closed)."""
        return self._manager.list_sessions()

    async def interrupt(self, worker_id: int) -> None:
        """Interrupt a worker: cancel its tool calls and SIGINT its kernel."""
        await self._manager.interrupt(worker_id)

    async def restart(self, worker_id: int) -> None:
        """Kill a worker now; a fresh one takes its place."""
        await self._manager.restart(worker_id)

    async def recycle(self, worker_id: int) -> None:
        """Replace a worker without downtime: its successor starts first, then it drains."""
        await self._manager.recycle(worker_id)
