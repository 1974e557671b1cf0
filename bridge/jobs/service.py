"""The ``kernelpit.v1.Jobs`` gRPC service over a :class:`~kernelpit.jobs.JobRunner`.

::

    add_jobs_service(server, runner)            # next to the Bridge service, same port

Every handler turns what it raises into a status with the structured error attached
(:func:`kernelpit.contract.errors.to_status`), so a bad request fails one RPC only.
"""

from __future__ import annotations

import asyncio
from typing import Any, AsyncIterator

import grpc

from ..contract import convert as call_convert
from ..contract import errors
from ..contract.framing import batch as message_batch
from ..contract.values import Codec
from ..v1 import jobs_pb2 as pb
from ..v1 import jobs_pb2_grpc as pb_grpc
from ..service.servicer import abort, handles_errors
from . import convert
from .follow import follow_batches
from .runner import JobRunner

SERVICE = pb.DESCRIPTOR.services_by_name["Jobs"].full_name


class JobsServicer(pb_grpc.JobsServicer):
    """``requests`` decodes submitted arguments, ``results`` encodes values in events
    (pass the Bridge's codecs to have large values travel as blobs)."""

    def __init__(self, runner: JobRunner, requests: Codec | None = None,
                 results: Codec | None = None) -> None:
        self.runner = runner
        self._requests = requests or Codec(untrusted=True)
        self._results = results or Codec()

    @handles_errors
    async def SubmitJob(self, request: pb.SubmitJobRequest, context: Any) -> pb.Job:
        args, kwargs, options = call_convert.call_from_request(request.call, self._requests)
        info = await self.runner.submit(
            request.call.tool, args, kwargs, options,
            key=request.key if request.HasField("key") else None,
            max_attempts=request.max_attempts if request.HasField("max_attempts") else None)
        return convert.job_to_proto(info)

    @handles_errors
    async def GetJob(self, request: pb.GetJobRequest, context: Any) -> pb.Job:
        return convert.job_to_proto(await self.runner.get(request.id))

    @handles_errors
    async def ListJobs(self, request: pb.ListJobsRequest, context: Any) -> pb.ListJobsResponse:
        state = convert.STATE_FROM_PROTO.get(request.state) if request.state else None
        jobs = await self.runner.list(state, request.tool or None, request.limit or 100,
                                      request.before or None)
        return pb.ListJobsResponse(jobs=[convert.job_to_proto(j) for j in jobs])

    async def WatchJob(self, request: pb.WatchJobRequest,
                       context: grpc.aio.ServicerContext) -> AsyncIterator[pb.JobEventBatch]:
        batches = follow_batches(self.runner.store, request.id, request.after_seq)
        try:
            async for batch in batches:
                yield message_batch(pb.JobEventBatch, "events",
                                    [convert.event_to_proto(e, self._results) for e in batch])
        except (grpc.aio.AbortError, asyncio.CancelledError):
            raise
        except Exception as exc:  # noqa: BLE001
            await abort(context, exc)
        finally:
            await batches.aclose()

    @handles_errors
    async def CancelJob(self, request: pb.CancelJobRequest, context: Any) -> pb.Job:
        return convert.job_to_proto(await self.runner.cancel(request.id))

    @handles_errors
    async def DeleteJob(self, request: pb.DeleteJobRequest, context: Any) -> pb.DeleteJobResponse:
        await self.runner.delete(request.id)
        return pb.DeleteJobResponse()


def add_jobs_service(server: grpc.aio.Server, runner: JobRunner, *,
                     requests: Codec | None = None, results: Codec | None = None) -> JobsServicer:
    """Serve ``runner``'s jobs on ``server`` (before ``server.start()``) as
    ``kernelpit.v1.Jobs``; returns the servicer.  The server's interceptors (the Bridge's
    token check) cover it too."""
    servicer = JobsServicer(runner, requests, results)
    pb_grpc.add_JobsServicer_to_server(servicer, server)
    return servicer
