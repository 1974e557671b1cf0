"""Jobs <-> ``kernelpit.v1`` job messages (jobs.proto), for the service and its clients.

Events reuse the Bridge service's ``Event`` message and its conversion
(:mod:`kernelpit.contract.convert`); values and errors go through the same codecs.
"""

from __future__ import annotations

from typing import Any

from ..contract import convert, errors
from ..contract.values import PLAIN, Codec
from ..v1 import jobs_pb2 as pb
from .model import RESTARTED, JobEvent, JobInfo, event_data

STATE_TO_PROTO = {"queued": pb.JOB_STATE_QUEUED, "running": pb.JOB_STATE_RUNNING,
                  "succeeded": pb.JOB_STATE_SUCCEEDED, "failed": pb.JOB_STATE_FAILED,
                  "cancelled": pb.JOB_STATE_CANCELLED, "lost": pb.JOB_STATE_LOST}
STATE_FROM_PROTO = {v: k for k, v in STATE_TO_PROTO.items()}


def job_to_proto(i: JobInfo) -> pb.Job:
    out = pb.Job(id=i.id, tool=i.tool, state=STATE_TO_PROTO[i.state], attempt=i.attempt,
                 max_attempts=i.max_attempts, created=i.created, started=i.started,
                 finished=i.finished, worker=i.worker, key=i.key, idempotent=i.idempotent,
                 deadline=i.deadline, session=i.session, pool=i.pool, namespace=i.namespace,
                 last_seq=i.last_seq, owner=i.owner)
    if i.progress is not None:
        out.progress.done = i.progress.get("done") or 0
        if i.progress.get("total") is not None:
            out.progress.total = i.progress["total"]
        out.progress.message = i.progress.get("message") or ""
    if i.error is not None:
        out.error.CopyFrom(errors.to_proto(i.error))
    return out


def job_from_proto(m: pb.Job) -> JobInfo:
    def opt(name: str) -> Any:
        return getattr(m, name) if m.HasField(name) else None

    progress = None
    if m.HasField("progress"):
        progress = {"done": m.progress.done, "message": m.progress.message,
                    "total": m.progress.total if m.progress.HasField("total") else None}
    return JobInfo(id=m.id, tool=m.tool, state=STATE_FROM_PROTO.get(m.state, "queued"),  # type: ignore[arg-type]
                   attempt=m.attempt, max_attempts=m.max_attempts, created=m.created,
                   started=opt("started"), finished=opt("finished"), worker=opt("worker"),
                   progress=progress,
                   error=errors.from_proto(m.error) if m.HasField("error") else None,
                   key=opt("key"), idempotent=m.idempotent, deadline=opt("deadline"),
                   session=opt("session"), pool=opt("pool"), namespace=m.namespace,
                   owner=opt("owner"), last_seq=m.last_seq)


def event_to_proto(e: JobEvent, codec: Codec = PLAIN) -> pb.JobEvent:
    out = pb.JobEvent(seq=e.seq, time=e.time)
    if e.kind == RESTARTED:
        out.restarted.attempt = e.data["attempt"]
    else:
        event = e.to_event()
        assert event is not None
        out.event.CopyFrom(convert.event_to_proto(event, codec))
    return out


def event_from_proto(m: pb.JobEvent, tool: str = "", codec: Codec = PLAIN) -> JobEvent:
    if m.WhichOneof("kind") == "restarted":
        return JobEvent(m.seq, RESTARTED, m.time, {"attempt": m.restarted.attempt}, tool)
    event = convert.event_from_proto(m.event, codec)
    return JobEvent(m.seq, event.kind, m.time, event_data(event), tool)
