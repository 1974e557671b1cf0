"""A client of the ``kernelpit.v1.Jobs`` service, with the same async API as
:class:`~kernelpit.jobs.JobRunner` (submit, get, list, events, result, cancel, delete)."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Sequence

import grpc

from ..pool.call import CallOptions
from ..contract import convert as call_convert
from ..contract import errors
from ..contract.values import PLAIN, Codec
from ..v1 import jobs_pb2 as pb
from ..v1 import jobs_pb2_grpc as pb_grpc
from . import convert
from .model import FINAL_KINDS, JobEvent, JobInfo


class RemoteJobs:
    """Jobs of the bridge at the other end of ``channel`` (a ``grpc.aio.Channel``).

    ``metadata``: sent with every RPC (the bearer token); ``codec``: how values are
    encoded and decoded (the remote client's, to use blobs for large values).
    """

    def __init__(self, channel: grpc.aio.Channel, metadata: Sequence[tuple[str, str]] = (),
                 codec: Codec = PLAIN, address: str = "") -> None:
        self._stub = pb_grpc.JobsStub(channel)
        self._metadata = tuple(metadata)
        self._codec = codec
        self._address = address

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc, self._address) from None

    async def submit(self, tool: str, args: Any = (), kwargs: dict[str, Any] | None = None,
                     options: CallOptions | None = None, *, key: str | None = None,
                     idempotent: bool | None = None, deadline: float | None = None,
                     session: str | None = None, max_attempts: int | None = None) -> JobInfo:
        options = options or CallOptions()
        changes = {k: v for k, v in (("idempotent", idempotent), ("deadline", deadline),
                                     ("session", session)) if v is not None}
        if changes:
            options = options.merged(**changes)
        call = call_convert.call_request(tool, list(args), dict(kwargs or {}), options,
                                         self._codec)
        request = pb.SubmitJobRequest(call=call, key=key, max_attempts=max_attempts)
        return convert.job_from_proto(await self._unary(self._stub.SubmitJob, request))

    async def get(self, job_id: str) -> JobInfo:
        return convert.job_from_proto(await self._unary(self._stub.GetJob,
                                                        pb.GetJobRequest(id=job_id)))

    async def list(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        request = pb.ListJobsRequest(state=convert.STATE_TO_PROTO[state] if state else 0,
                                     tool=tool or "", limit=limit, before=before or "")
        reply = await self._unary(self._stub.ListJobs, request)
        return [convert.job_from_proto(j) for j in reply.jobs]

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Replay after seq ``after``, then follow live until the job ends."""
        call = self._stub.WatchJob(pb.WatchJobRequest(id=job_id, after_seq=after),
                                   metadata=self._metadata)
        try:
            async for batch in call:
                for m in batch.events:
                    yield convert.event_from_proto(m, codec=self._codec)
        except grpc.RpcError as exc:
            raise errors.from_rpc_error(exc, self._address) from None
        finally:
            call.cancel()

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        end = None if timeout is None else time.monotonic() + timeout
        info = await self.get(job_id)
        after = max(0, info.last_seq - 1) if info.done else info.last_seq
        try:
            async with _deadline(end):
                async for event in self.events(job_id, after):
                    if event.kind in FINAL_KINDS:
                        if event.kind == "result":
                            return event.value
                        raise event.error
        except TimeoutError:
            raise TimeoutError(f"job {job_id} ({info.tool}()) did not finish within "
                               f"{timeout:g} s; it keeps running: ask for its result again "
                               "later, or cancel it") from None
        info = await self.get(job_id)
        raise info.error or RuntimeError(f"job {job_id} ended without a result")

    async def cancel(self, job_id: str) -> JobInfo:
        return convert.job_from_proto(await self._unary(self._stub.CancelJob,
                                                        pb.CancelJobRequest(id=job_id)))

    async def delete(self, job_id: str) -> None:
        await self._unary(self._stub.DeleteJob, pb.DeleteJobRequest(id=job_id))


class _deadline:
    """``async with``: cancel the body at the monotonic time ``end`` (None: never) and
    raise the builtin TimeoutError (asyncio.timeout, also on Python 3.10)."""

    def __init__(self, end: float | None) -> None:
        self._end = end
        self._handle: asyncio.TimerHandle | None = None
        self._fired = False

    async def __aenter__(self) -> None:
        if self._end is not None:
            task = asyncio.current_task()
            assert task is not None

            def fire() -> None:
                self._fired = True
                task.cancel()

            self._handle = asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + max(0.0, self._end - time.monotonic()), fire)

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if self._handle is not None:
            self._handle.cancel()
        if self._fired and kind is asyncio.CancelledError:
            raise TimeoutError
        return False
