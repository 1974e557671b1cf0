"""The job runner: runs durable jobs on a :class:`~kernelpit.pool.PoolManager` and keeps
their journal, ownership and retention.

Every job this runner holds runs as one task that streams the call
(``manager.stream``) and journals each event.  The runner renews its lease every
``lease / 3`` seconds; at start and on each renewal it takes over orphans: jobs whose
owner's lease has expired (its own previous incarnation, or a dead peer; never a live
peer).  An orphan that was queued runs; one that was running is re-run when it is
idempotent, has attempts left and no session (``restarted`` in its journal), else it is
``lost``.  Nothing about who submitted a job cancels it: only :meth:`JobRunner.cancel`
(from any process on the store) or its deadline.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import logging
import os
import socket
import time
import uuid
from typing import Any, AsyncIterator

from ..exceptions import (Cancelled, DeadlineExceeded, InvalidArguments, JobLost, PoolClosed,
                          ToolNotFound)
from ..kernels.schema import check_arguments
from ..options import CallOptions
from . import follow, values
from .journal import Journal
from .model import STATES, JobEvent, JobInfo, check_state, error_payload, event_data
from .store import Entry, JobStore, NewJob, Orphan

log = logging.getLogger("kernelpit.jobs")

DEFAULT_LEASE = 10.0
DEFAULT_TTL = 7 * 86400.0
DEFAULT_MAX_ATTEMPTS = 3
PRUNE_EVERY = 3600.0
CLOSE_TIMEOUT = 10.0  # seconds a stop waits for the store to take the last entries


class Run:
    """A job this runner is running: its task, why it was cancelled (None: the runner is
    stopping), its last event as soon as the call gave it (``reported``: handed to waiters
    in this process while its commit is in flight) and once committed (``outcome``)."""

    def __init__(self, info: JobInfo, task: asyncio.Task[None]) -> None:
        self.info = info
        self.task = task
        self.why: BaseException | None = None
        self.final = False
        self.slot = False  # holds one of the runner's slots
        loop = asyncio.get_running_loop()
        self.reported: asyncio.Future[Entry] = loop.create_future()
        self.outcome: asyncio.Future[None] = loop.create_future()

    def cancel(self, why: BaseException) -> None:
        if self.why is None:
            self.why = why
            self.task.cancel()


class Slots:
    """How many jobs may be in the pool at once; waiters are served in order."""

    def __init__(self, n: int) -> None:
        self.free = n
        self._waiters: collections.deque[asyncio.Future[None]] = collections.deque()

    def take_now(self) -> bool:
        if self.free > 0 and not self._waiters:
            self.free -= 1
            return True
        return False

    async def take(self) -> None:
        if self.take_now():
            return
        turn = asyncio.get_running_loop().create_future()
        self._waiters.append(turn)
        try:
            await turn
        except asyncio.CancelledError:
            if turn.done() and not turn.cancelled():
                self.give()  # handed a slot just as it was cancelled: pass it on
            raise

    def give(self) -> None:
        while self._waiters:
            turn = self._waiters.popleft()
            if not turn.done():
                turn.set_result(None)
                return
        self.free += 1


_ID_PREFIX = os.urandom(10).hex()  # 20 random hex digits per process (renewed after fork)
_id_count = itertools.count()


def _new_id() -> str:
    """A job id: 32 hex digits, unique everywhere (a random per-process prefix and a
    counter); cheaper than uuid4, which reads the OS random source each time."""
    return f"{_ID_PREFIX}{next(_id_count) & 0xFFFFFFFFFFFF:012x}"


def _renew_prefix() -> None:
    global _ID_PREFIX, _id_count
    _ID_PREFIX, _id_count = os.urandom(10).hex(), itertools.count()


os.register_at_fork(after_in_child=_renew_prefix)


def namespace_of(configs: Any) -> str:
    """The store namespace of a pool: its pools' names and adapters, so that a ``Pool()``
    never picks up another program's jobs for tools it does not serve."""
    import hashlib

    parts = sorted(f"{c.name}={','.join(sorted(c.adapters))}" for c in configs)
    digest = hashlib.sha256(";".join(parts).encode()).hexdigest()[:12]
    return f"{'+'.join(sorted(c.name for c in configs))}-{digest}"


class JobRunner:
    """Runs the jobs of one store namespace on ``manager`` (started by the caller).

    ``lease``: seconds a runner's ownership lasts without renewal (renewed every third of
    it).  ``job_ttl``: finished jobs older than this are deleted (rows and files).
    ``max_running``: jobs handed to the pool at once (default: its worker slots); the
    others wait ``queued``.  A job is ``running`` from the moment it is handed to the pool,
    and that is committed *before* it is handed over: so a job that a dead runner left
    ``queued`` never started, and running it cannot run a non-idempotent tool twice.  ``owner``: this runner's id in the store (default: host,
    pid and a random part, new at each start).
    """

    def __init__(self, manager: Any, store: JobStore, *, lease: float = DEFAULT_LEASE,
                 job_ttl: float | None = DEFAULT_TTL, max_attempts: int = DEFAULT_MAX_ATTEMPTS,
                 max_running: int | None = None, owner: str | None = None) -> None:
        self.manager = manager
        self.store = store
        self.lease = lease
        self.job_ttl = job_ttl
        self.max_attempts = max_attempts
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self._max_running = max_running
        self._slots: Slots | None = None
        self._journal = Journal(store)
        self._runs: dict[str, Run] = {}  # the jobs this runner is running (or waiting to)
        self._loops: list[asyncio.Task[None]] = []
        self._check_cancels = asyncio.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self.closing = False
        self.started = False
        #: told ``enter()`` when a job is taken on here and ``exit()`` when it leaves (a
        #: bridge's idle monitor: a bridge never idles out while it holds a job)
        self.activity: Any = None

    # -- lifecycle ------------------------------------------------------------------------
    async def start(self) -> "JobRunner":
        """Register this runner's lease, take over orphans, start renewing and pruning."""
        self._slots = Slots(self._max_running or max(1, sum(
            c.workers * c.concurrency for c in self.manager.configs)))
        self._loop = asyncio.get_running_loop()
        self._journal.start()
        await self.store.heartbeat(self.owner, self.lease)
        self.store.on_cancel(self._cancel_signal)
        self.started = True
        if self.job_ttl is not None:
            await self.prune()
        await self._take_over()
        self._loops = [asyncio.ensure_future(self._keep_lease()),
                       asyncio.ensure_future(self._serve_cancels())]
        if self.job_ttl is not None:
            self._loops.append(asyncio.ensure_future(self._prune_loop()))
        return self

    async def stop(self, grace: float = 0.0) -> None:
        """Take no more jobs; let running ones finish within ``grace`` seconds.  Jobs still
        running then are left to the next runner on this store (re-run or lost), and this
        runner's lease ends now, so a live peer takes them over at once."""
        if self.closing:
            return
        self.closing = True
        tasks = [run.task for run in self._runs.values()]
        if tasks and grace > 0:
            await asyncio.wait(tasks, timeout=grace)
        tasks = [run.task for run in self._runs.values()]
        for task in tasks:
            task.cancel()  # no reason given: left to the next runner, not cancelled
        await asyncio.gather(*tasks, return_exceptions=True)
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)
        try:
            await asyncio.wait_for(self._journal.close(), CLOSE_TIMEOUT)
        except asyncio.TimeoutError:
            log.warning("job runner %s stopped with journal entries not written: the job "
                        "store %s did not take them within %g s", self.owner, self.store.url,
                        CLOSE_TIMEOUT)
        with contextlib.suppress(Exception):
            await asyncio.wait_for(self.store.release(self.owner), CLOSE_TIMEOUT)

    # -- the job API ----------------------------------------------------------------------
    async def submit(self, tool: str, args: Any = (), kwargs: dict[str, Any] | None = None,
                     options: CallOptions | None = None, *, key: str | None = None,
                     idempotent: bool | None = None, deadline: float | None = None,
                     session: str | None = None, max_attempts: int | None = None) -> JobInfo:
        """Store a job and start it; returns at once with its info.  ``key``: an idempotency
        key (the existing job when the arguments are equal, InvalidArguments otherwise).
        ``idempotent`` / ``deadline`` / ``session`` default to ``options``' and then the
        tool's; the deadline counts from submission."""
        if self.closing or not self.started:
            raise PoolClosed("the job runner is stopped" if self.closing else
                             "the job runner is not started")
        options = options or CallOptions()
        args, kwargs = list(args), dict(kwargs or {})
        session = session if session is not None else options.session
        pool, desc = self._check(tool, args, kwargs, options.merged(session=session))
        if idempotent is None:
            idempotent = options.idempotent if options.idempotent is not None else bool(
                desc.get("idempotent"))
        request = values.pack({"args": args, "kwargs": dict(sorted(kwargs.items()))},
                              f"the arguments of {tool}()")
        info = JobInfo(id=_new_id(), tool=tool, state="queued", created=time.time(),
                       key=key, idempotent=bool(idempotent),
                       deadline=deadline if deadline is not None else options.deadline,
                       session=session, pool=options.pool, namespace=self.store.namespace,
                       max_attempts=max_attempts or self.max_attempts, owner=self.owner)
        job = NewJob(info, request, values.digest_of(tool, request))
        assert self._slots is not None
        if key is None and self._slots.take_now():
            # A free slot, and nothing can make the insert return another job: the row goes
            # in as running and the call starts while it commits (the job's events are
            # written after it; a crash before the commit leaves no job to run again).
            # Everything up to the await happens now, so a submitter that goes away while
            # the insert commits leaves a job that runs.
            info.state, info.started = "running", time.time()
            created = self.store.create_soon(job)
            self._publish("job.submitted", info, state="running")
            self._schedule(info, args, kwargs, options.worker, created)
            return (await asyncio.shield(created))[0]
        # shielded: a submitter that goes away after the job is stored must not leave it
        # stored but never started
        return await asyncio.shield(self._create(job, args, kwargs, options.worker))

    async def _create(self, job: NewJob, args: list[Any], kwargs: dict[str, Any],
                      worker: int | None) -> JobInfo:
        if job.info.key is not None:
            await self._settled()  # the job of that key may have just finished here
        info, new = await self.store.create(job)
        if new:
            self._schedule(info, args, kwargs, worker)
            self._publish("job.submitted", info, state=info.state)
        return info

    async def counts(self) -> dict[str, int]:
        """How many jobs of the store's namespace are in each state (every state listed)."""
        return {**dict.fromkeys(STATES, 0), **await self.store.counts()}

    def counts_now(self, timeout: float = 2.0) -> dict[str, int] | None:
        """:meth:`counts` from another thread (a metrics scrape); None when the runner is
        stopped or the store does not answer within ``timeout`` seconds."""
        loop = self._loop
        if loop is None or self.closing or loop.is_closed():
            return None
        future = asyncio.run_coroutine_threadsafe(self.counts(), loop)
        try:
            return future.result(timeout)
        except Exception:  # noqa: BLE001 - a scrape shows no job gauge rather than failing
            future.cancel()
            return None

    def _publish(self, kind: str, info: JobInfo, worker: int | None = None,
                 **data: Any) -> None:
        """A ``job.*`` telemetry event (docs/observability.md) on the pool's bus."""
        telemetry = self.manager.telemetry
        if not telemetry.active:
            return
        pool = info.pool
        if pool is None:
            try:
                pool = self.manager.group_for(info.tool, CallOptions()).name
            except Exception:  # noqa: BLE001 - a tool no pool serves any more
                pool = ""
        telemetry.publish(kind, pool, worker, info.tool, None, job=info.id,
                          attempt=info.attempt, **data)

    async def get(self, job_id: str) -> JobInfo:
        await self._settled(job_id)
        return await self.store.get(job_id)

    async def list(self, state: str | None = None, tool: str | None = None, limit: int = 100,
                   before: str | None = None) -> list[JobInfo]:
        await self._settled()
        return await self.store.list(check_state(state), tool, limit, before)

    async def _settled(self, job_id: str | None = None) -> None:
        """Wait until the last events of finished jobs (of ``job_id``; None: of all), which
        result() waiters here may already have, are committed: so a read in this process
        after result() sees the job finished."""
        runs = [r for r in ([self._runs.get(job_id)] if job_id else self._runs.values())
                if r is not None and r.final]
        if runs:
            await asyncio.wait([asyncio.shield(run.outcome) for run in runs])

    def events(self, job_id: str, after: int = 0) -> AsyncIterator[JobEvent]:
        """Replay the journal after seq ``after``, then follow live until the job ends."""
        return follow.follow(self.store, job_id, after)

    async def result(self, job_id: str, timeout: float | None = None) -> Any:
        """The job's value, or its error raised; the builtin TimeoutError after ``timeout``
        seconds (the job keeps running).  A job running here is answered from memory as soon
        as the call ends, while its last event is being committed (docs/jobs.md, "When a
        result is reported"); any other is read (and followed) in the store."""
        run = self._runs.get(job_id)
        if run is not None:
            start = time.monotonic()
            await asyncio.wait([run.reported, run.task], timeout=timeout,
                               return_when=asyncio.FIRST_COMPLETED)
            if run.reported.done() and not run.reported.cancelled():
                last = run.reported.result()
                return follow.outcome(last.kind, last.data or {}, job_id, run.info.tool)
            if timeout is not None:
                timeout = max(0.0, timeout - (time.monotonic() - start))
        return await follow.result(self.store, job_id, timeout)

    async def cancel(self, job_id: str) -> JobInfo:
        """Cancel a queued or running job wherever it runs (a finished one stays as it is).
        Here: the task's stream is closed, which interrupts the tool.  Elsewhere: the
        owner is told through the store; an orphan is cancelled at once."""
        run = self._runs.get(job_id)
        if run is not None:
            run.cancel(Cancelled(f"job {job_id} was cancelled", tool=run.info.tool))
            with contextlib.suppress(BaseException):
                await asyncio.shield(run.task)
            return await self.store.get(job_id)
        info = await self.store.request_cancel(job_id)
        if not info.done:
            for orphan in await self.store.orphans(self.owner):
                if orphan.info.id == job_id:
                    await self._cancel_orphan(orphan.info)
        return await self.store.get(job_id)

    async def delete(self, job_id: str) -> None:
        """Remove a finished job, its journal and files (its key is free again)."""
        info = await self.get(job_id)
        if not info.done:
            raise InvalidArguments(f"job {job_id} ({info.tool}()) is {info.state}; cancel it "
                                   "first, then delete it")
        await self.store.delete(job_id)

    async def prune(self, older_than: float | None = None) -> int:
        """Delete jobs that finished more than ``older_than`` seconds ago (default: the
        runner's job_ttl); returns how many."""
        age = self.job_ttl if older_than is None else older_than
        if age is None:
            return 0
        await self._settled()
        return await self.store.prune(time.time() - age)

    # -- checks ---------------------------------------------------------------------------
    def _check(self, tool: str, args: list[Any], kwargs: dict[str, Any],
               options: CallOptions) -> tuple[str, dict[str, Any]]:
        """The pool serving the tool and its description; InvalidArguments / ToolNotFound
        before anything is stored."""
        if not isinstance(tool, str):
            raise InvalidArguments(f"the tool name must be a str, got {type(tool).__name__}")
        if options.session is not None:
            session = self.manager.sessions.get(options.session)
            options = options.merged(pool=session.pool)
        group = self.manager.group_for(tool, options)
        desc = group.tools.get(tool)
        if desc is None:
            raise ToolNotFound(f"pool '{group.name}' has no tool named '{tool}'", tool=tool)
        problem = check_arguments(tool, desc["params"], args, kwargs)
        if problem:
            raise InvalidArguments(problem, tool=tool)
        return group.name, desc

    # -- running --------------------------------------------------------------------------
    def _schedule(self, info: JobInfo, args: list[Any], kwargs: dict[str, Any],
                  worker: int | None = None, created: asyncio.Future[Any] | None = None) -> None:
        """Run the job in a task; ``created``: the insert, if it is still committing."""
        self._journal.begin(info.id, info.last_seq, created)
        run = Run(info, asyncio.ensure_future(self._drive(info, args, kwargs, worker, created)))
        self._runs[info.id] = run
        if self.activity is not None:
            self.activity.enter()
        if created is not None:  # never stored: stop the call (submit() raises the error)
            created.add_done_callback(
                lambda f: run.task.cancel() if f.cancelled() or f.exception() else None)
        run.task.add_done_callback(lambda _t: self._forget(run))

    def _forget(self, run: Run) -> None:
        if self.activity is not None:
            self.activity.exit()
        if self._runs.get(run.info.id) is run:
            del self._runs[run.info.id]
        self._journal.end(run.info.id)
        for future in (run.reported, run.outcome):
            if not future.done():
                future.cancel()

    def _finish(self, job_id: str, kind: str, data: dict[str, Any], state: str,
                at: float | None = None) -> None:
        at = time.time() if at is None else at
        run = self._runs.get(job_id)
        if run is not None:
            run.final = True
        changes: dict[str, Any] = {"state": state, "finished": at, "owner": None}
        if kind == "error":
            changes["error"] = data["error"]
        last = Entry(job_id, kind, at, data, changes,
                     committed=run.outcome if run is not None else None)
        self._journal.add(last)
        if run is not None:
            self._give_slot(run)  # the call is over: the next job may start (also the next
            # submit, which then takes the fast path)
        if run is not None and not run.reported.done():
            run.reported.set_result(last)
        if run is not None:
            self._publish("job.finished", run.info, state=state,
                          seconds=at - (run.info.started or run.info.created))

    def _give_slot(self, run: Run) -> None:
        if run.slot:
            run.slot = False
            assert self._slots is not None
            self._slots.give()

    async def _drive(self, info: JobInfo, args: list[Any], kwargs: dict[str, Any],
                     worker: int | None, created: asyncio.Future[Any] | None) -> None:
        job, slots = info.id, self._slots
        assert slots is not None
        run = self._runs[job]
        try:
            if created is None:  # not yet committed as running: take a slot, then say so
                await slots.take()
            run.slot = True
            try:
                if created is None:
                    running = Entry(job, None, changes={"state": "running", "started": time.time()},
                                    committed=asyncio.get_running_loop().create_future())
                    self._journal.add(running)
                    await running.committed  # type: ignore[misc]
                await self._run(info, args, kwargs, worker)
            finally:
                self._give_slot(run)
            await asyncio.shield(run.outcome)  # the job is done once that is durable
        except asyncio.CancelledError:
            run = self._runs.get(job)
            why = run.why if run is not None else None
            if why is not None and not run.final:  # type: ignore[union-attr]
                # else: the runner is stopping (the job is left to the next one), or its
                # last event was already journaled
                self._finish(job, "error", {"error": error_payload(why)}, "cancelled")
                await self._journal.flush()
        except Exception as exc:  # noqa: BLE001 - the call could not start: the job fails
            if created is not None and created.done() and created.exception() is not None:
                return  # it was never stored: submit() raises that error to the submitter
            self._finish(job, "error", {"error": error_payload(exc)}, "failed")

    async def _run(self, info: JobInfo, args: list[Any], kwargs: dict[str, Any],
                   worker: int | None) -> None:
        job, add = info.id, self._journal.add
        deadline = None
        if info.deadline is not None:
            deadline = info.created + info.deadline - time.time()
            if deadline <= 0:
                raise DeadlineExceeded(f"job {job} ({info.tool}()) did not start within its "
                                       f"deadline of {info.deadline:g} s", tool=info.tool)
        options = CallOptions(deadline=deadline, session=info.session, pool=info.pool,
                              worker=worker, idempotent=info.idempotent)
        async for event in self.manager.stream(info.tool, args, kwargs, options):
            kind = event.kind
            data = event_data(event)
            if kind == "result":
                self._finish(job, kind, data, "succeeded", event.time)
            elif kind == "error":
                self._finish(job, kind, data, "failed", event.time)
            elif kind == "progress":
                add(Entry(job, kind, event.time, data, {"progress": data}))
            elif kind == "started":
                add(Entry(job, kind, event.time, data, {"worker": data["worker"]}))
                self._publish("job.started", info, data["worker"])
            else:
                add(Entry(job, kind, event.time, data))

    # -- ownership --------------------------------------------------------------------------
    async def _keep_lease(self) -> None:
        while True:
            await asyncio.sleep(self.lease / 3)
            try:
                await self.store.heartbeat(self.owner, self.lease)
                await self._take_over()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001 - a store hiccup: try again next tick
                log.warning("job runner %s could not renew its lease in %s: %s", self.owner,
                            self.store.url, exc)

    async def _take_over(self) -> None:
        for orphan in await self.store.orphans(self.owner):
            if self.closing:
                return
            if orphan.cancel_requested:
                await self._cancel_orphan(orphan.info)
            else:
                await self._adopt(orphan)

    async def _cancel_orphan(self, info: JobInfo) -> None:
        exc = Cancelled(f"job {info.id} was cancelled", tool=info.tool)
        now = time.time()
        if await self.store.claim(info.id, self.owner, info.owner, [Entry(
                info.id, "error", now, {"error": error_payload(exc)},
                {"state": "cancelled", "finished": now, "owner": None,
                 "error": error_payload(exc)})]) is not None:
            self._publish("job.finished", info, state="cancelled", seconds=now - info.created)

    async def _adopt(self, orphan: Orphan) -> None:
        info = orphan.info
        if info.state == "queued":
            claimed = await self.store.claim(info.id, self.owner, info.owner, [])
        elif info.idempotent and not info.session and info.attempt < info.max_attempts:
            attempt = info.attempt + 1
            claimed = await self.store.claim(info.id, self.owner, info.owner, [Entry(
                info.id, "restarted", time.time(), {"attempt": attempt},
                {"attempt": attempt, "state": "queued", "worker": None})])
            if claimed is not None:
                log.info("job %s (%s()): its runner stopped while it ran; running it again "
                         "(attempt %d of %d)", info.id, info.tool, attempt, info.max_attempts)
                self._publish("job.restarted", claimed)
        else:
            await self._lose(info)
            return
        if claimed is not None:
            request = await self.store.request(info.id)
            self._schedule(claimed, request["args"], request["kwargs"])

    async def _lose(self, info: JobInfo) -> None:
        why = (f"it ran in session '{info.session}', and sessions do not survive a restart"
               if info.session else
               f"it had already run {info.attempt} time(s) of its max_attempts "
               f"{info.max_attempts}" if info.idempotent else
               "it is not idempotent, so it was not run again")
        exc = JobLost(f"job {info.id} ({info.tool}()) was lost: the bridge (or program) running "
                      f"it stopped while it ran, and {why}; submit it again (mark the tool or "
                      "the job idempotent to have it re-run after a restart)", tool=info.tool)
        now = time.time()
        if await self.store.claim(info.id, self.owner, info.owner, [Entry(
                info.id, "error", now, {"error": error_payload(exc)},
                {"state": "lost", "finished": now, "owner": None,
                 "error": error_payload(exc)})]) is not None:
            self._publish("job.finished", info, state="lost", seconds=now - info.created)

    # -- cancels from elsewhere -----------------------------------------------------------
    def _cancel_signal(self, job_id: str | None) -> None:
        if job_id is None or job_id in self._runs:
            self._check_cancels.set()

    async def _serve_cancels(self) -> None:
        while True:
            await self._check_cancels.wait()
            self._check_cancels.clear()
            if not self._runs:
                continue
            try:
                wanted = await self.store.cancel_requests(self.owner)
            except Exception:  # noqa: BLE001 - the next wake-up or lease tick looks again
                continue
            for job in wanted:
                run = self._runs.get(job)
                if run is not None:
                    run.cancel(Cancelled(f"job {job} was cancelled", tool=run.info.tool))

    async def _prune_loop(self) -> None:
        while True:
            await asyncio.sleep(min(PRUNE_EVERY, max(1.0, (self.job_ttl or PRUNE_EVERY) / 4)))
            try:
                await self.prune()
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # noqa: BLE001
                log.warning("job retention could not prune %s: %s", self.store.url, exc)

