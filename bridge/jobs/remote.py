"""A client of the ``kernelpit.v1.Jobs`` service, with the same async API as
:class:`~kernelpit.jobs.JobRunner` (submit, get, list, events, result, cancel, delete).

The bridge client (:class:`kernelpit.remote.RemoteBackend`) does its jobs through one of
these; this module is client side: it imports neither the runner nor the pool."""

from __future__ import annotations

import asyncio
import time
from typing import Any, AsyncIterator, Awaitable, Callable, Sequence

import grpc

from ..contract import convert as call_convert
from ..contract import errors
from ..contract.values import PLAIN, Codec
from ..exceptions import JobsDisabled
from ..options import CallOptions
from ..v1 import jobs_pb2 as pb
from ..v1 import jobs_pb2_grpc as pb_grpc
from . import convert
from .model import FINAL_KINDS, JobEvent, JobInfo, check_state


class RemoteJobs:
    """Jobs of the bridge at the other end of ``channel`` (a ``grpc.aio.Channel``).

    ``metadata``: sent with every RPC (the bearer token), or a function returning it (read
    at each RPC, so a client's renewed token is used); ``codec``: how values are encoded and
    decoded; ``incoming``: given a value message that references blobs, a codec that
    decodes it with them read in (the bridge client's ReadBlob).
    """

    def __init__(self, channel: grpc.aio.Channel,
                 metadata: Sequence[tuple[str, str]] | Callable[[], Sequence[tuple[str, str]]] = (),
                 codec: Codec = PLAIN, address: str = "",
                 incoming: Callable[[Any], Awaitable[Codec]] | None = None) -> None:
        self._stub = pb_grpc.JobsStub(channel)
        self._metadata = metadata if callable(metadata) else (lambda m=tuple(metadata): m)
        self._codec = codec
        self._address = address
        self._incoming = incoming

    def _error(self, exc: grpc.RpcError) -> BaseException:
        if exc.code() == grpc.StatusCode.UNIMPLEMENTED:  # type: ignore[attr-defined]
            return JobsDisabled(f"the bridge at {self._address} serves no jobs (it was started "
                                "with --no-store); restart it with a job store (`kernelpit serve "
                                "--store PATH`, or without --no-store for the default one)")
        return errors.from_rpc_error(exc, self._address)

    async def _unary(self, method: Any, request: Any) -> Any:
        try:
            return await method(request, metadata=self._metadata())
        except grpc.RpcError as exc:
            raise self._error(exc) from None

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
        return await self.submit_request(call, key, max_attempts)

    async def submit_request(self, call: Any, key: str | None = None,
                             max_attempts: int | None = None) -> JobInfo:
        """Submit an already encoded ``CallRequest`` (its blobs uploaded)."""
        request = pb.SubmitJobRequest(key=key, max_attempts=max_attempts)
        request.call.CopyFrom(call)  # not SubmitJobRequest(call=...): see contract.framing.batch
        return convert.job_from_proto(await self._unary(self._stub.SubmitJob, request))

    async def get(self, job_id: str) -> JobInfo:
        return convert.job_from_proto(await self._unary(self._stub.GetJob,
                                                        pb.GetJobRequest(id=job_id)))

    async def list(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        request = pb.ListJobsRequest(state=convert.STATE_TO_PROTO[check_state(state)] if state else 0,
                                     tool=tool or "", limit=limit, before=before or "")
        reply = await self._unary(self._stub.ListJobs, request)
        return [convert.job_from_proto(j) for j in reply.jobs]

    async def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Replay after seq ``after``, then follow live until the job ends."""
        call = self._stub.WatchJob(pb.WatchJobRequest(id=job_id, after_seq=after),
                                   metadata=self._metadata())
        err = None
        try:
            async for batch in call:
                for m in batch.events:
                    codec = self._codec
                    if self._incoming is not None and m.WhichOneof("kind") == "event":
                        kind = m.event.WhichOneof("kind")
                        if kind in ("partial", "result") and getattr(m.event, kind).blobs:
                            codec = await self._incoming(getattr(m.event, kind))
                    yield convert.event_from_proto(m, codec=codec)
        except grpc.RpcError as exc:
            err = self._error(exc)
        finally:
            call.cancel()
        if err is not None:
            raise err

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        end = None if timeout is None else time.monotonic() + timeout
        info = await self.get(job_id)
        after = max(0, info.last_seq - 1) if info.done else info.last_seq
        limit = _deadline(end)
        try:
            async with limit:
                async for event in self.events(job_id, after):
                    if event.kind in FINAL_KINDS:
                        if event.kind == "result":
                            return event.value
                        raise event.error
        except TimeoutError:
            if not limit.fired:  # the job's own error (DeadlineExceeded is a TimeoutError)
                raise
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
        self.fired = False

    async def __aenter__(self) -> None:
        if self._end is not None:
            task = asyncio.current_task()
            assert task is not None

            def fire() -> None:
                self.fired = True
                task.cancel()

            self._handle = asyncio.get_running_loop().call_at(
                asyncio.get_running_loop().time() + max(0.0, self._end - time.monotonic()), fire)

    async def __aexit__(self, kind: Any, exc: Any, tb: Any) -> bool:
        if self._handle is not None:
            self._handle.cancel()
        if self.fired and kind is asyncio.CancelledError:
            raise TimeoutError
        return False
