"""The job commands of ``kernelpit``: ``submit``, ``jobs``, ``job``, ``cancel`` (docs/jobs.md).

::

    kernelpit submit train epochs=10 --idempotent    # prints the job id, returns at once
    kernelpit jobs [--state running] [--tool train]  # newest first
    kernelpit job ID --follow                        # replay, then follow with a progress bar
    kernelpit cancel ID
    kernelpit jobs --prune 0                         # delete every finished job now
"""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any, Callable

from .terminal import JOB_COLUMNS, EventPrinter, job_row, table

STATES = ("queued", "running", "succeeded", "failed", "cancelled", "lost")


def cmd_submit(args: argparse.Namespace) -> int:
    from .cli import connect_from, parse_assignments

    kwargs = parse_assignments(args.arguments)
    options = {k: v for k, v in (("deadline", args.deadline), ("session", args.session),
                                 ("pool", args.pool), ("key", args.key),
                                 ("idempotent", True if args.idempotent else None))
               if v is not None}
    with connect_from(args) as client:
        job = (client.options(**options) if options else client).submit(args.tool, **kwargs)
    print(job.id)
    return 0


def cmd_jobs(args: argparse.Namespace) -> int:
    from .cli import connect_from, to_json

    with connect_from(args) as client:
        if args.prune is not None:
            print(f"deleted {prune(client, args.prune)} finished job(s)")
            return 0
        jobs = client.jobs(state=args.state, tool=args.tool, limit=args.limit)
    if args.json:
        print(to_json([{k: v for k, v in vars(j).items() if k != "error"}
                       | {"error": None if j.error is None else str(j.error)} for j in jobs]))
        return 0
    now = time.time()
    print(table([job_row(j, now) for j in jobs], JOB_COLUMNS) if jobs else "no jobs")
    return 0


def prune(client: Any, older_than: float) -> int:
    """Delete the finished jobs that finished more than ``older_than`` seconds ago."""
    cutoff, doomed, before = time.time() - older_than, [], None
    while True:  # list first: deleting while paging would remove the page's anchor
        page = client.jobs(limit=500, before=before)
        if not page:
            break
        doomed += [i.id for i in page
                   if i.done and i.finished is not None and i.finished <= cutoff]
        before = page[-1].id
    for job_id in doomed:
        client.delete_job(job_id)
    return len(doomed)


def cmd_job(args: argparse.Namespace) -> int:
    from .cli import connect_from, print_error, to_json

    with connect_from(args) as client:
        job = client.job(args.id)
        if not args.follow:
            info = job.info()
            print(table([job_row(info, time.time())], JOB_COLUMNS))
            if info.error is not None:
                print(f"error: {type(info.error).__name__}: {info.error}")
            return 0
        printer = EventPrinter(sys.stdout, sys.stderr, progress=not args.quiet, partials=to_json)
        try:
            for ev in job.events(after=args.after):
                if ev.kind == "restarted":
                    printer.flush()
                    print(f"kernelpit: job restarted (attempt {ev.attempt})", file=sys.stderr)
                    continue
                printer.feed(ev)
                if ev.kind == "result":
                    printer.flush()
                    print(to_json(ev.value))
                    return 0
                if ev.kind == "error":
                    printer.flush()
                    print_error(ev.error, sys.stderr)
                    return 1
        except KeyboardInterrupt:
            printer.flush()
            print(f"kernelpit: stopped following; job {job.id} keeps running", file=sys.stderr)
            return 130
        finally:
            printer.flush()
        print(f"job {job.id} is {job.state}")
    return 0


def cmd_cancel(args: argparse.Namespace) -> int:
    from .cli import connect_from

    with connect_from(args) as client:
        info = client.job(args.id).cancel()
    print(f"job {info.id} ({info.tool}()) is {info.state}")
    return 0


def add_parsers(sub: Any, client_options: Callable[[argparse.ArgumentParser], None]) -> None:
    """The job subcommands (``sub``: the CLI's subparsers)."""
    p = sub.add_parser("submit", help="run a tool as a durable job; prints its id",
                       description="Run a tool as a durable job: stored before it runs, it "
                       "outlives this command. Arguments are key=value (values parsed as JSON "
                       "when they parse). Prints the job id; follow it with `kernelpit job ID "
                       "--follow`.")
    client_options(p)
    p.add_argument("tool")
    p.add_argument("arguments", nargs="*", metavar="key=value")
    p.add_argument("--deadline", type=float, help="seconds from now before the job is stopped")
    p.add_argument("--session", help="run in this session")
    p.add_argument("--pool", help="run in this named pool")
    p.add_argument("--key", help="idempotency key: the same key and arguments give the same job")
    p.add_argument("--idempotent", action="store_true",
                   help="safe to run again after a crash or a bridge restart")
    p.set_defaults(func=cmd_submit)

    p = sub.add_parser("jobs", help="list durable jobs, newest first")
    client_options(p)
    p.add_argument("--state", choices=STATES, help="only jobs in this state")
    p.add_argument("--tool", help="only jobs of this tool")
    p.add_argument("--limit", type=int, default=100, help="at most this many (default 100)")
    p.add_argument("--prune", type=float, metavar="SECONDS", nargs="?", const=0.0,
                   help="delete finished jobs that finished more than SECONDS ago (default 0: "
                   "every finished job)")
    p.add_argument("--json", action="store_true", help="print JSON")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("job", help="show a job; --follow replays its events, then follows it")
    client_options(p)
    p.add_argument("id")
    p.add_argument("-f", "--follow", action="store_true",
                   help="replay the job's output and progress, then follow it live to its end "
                   "(Ctrl-C stops following; the job keeps running)")
    p.add_argument("--after", type=int, default=0, help="replay from after this seq")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.set_defaults(func=cmd_job)

    p = sub.add_parser("cancel", help="cancel a job (the tool is interrupted)")
    client_options(p)
    p.add_argument("id")
    p.set_defaults(func=cmd_cancel)
