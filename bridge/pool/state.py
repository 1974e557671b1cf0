"""A worker's state machine, roles and load, without its kernel.

:class:`WorkerBase` is everything dispatch (``dispatch.py``) and the crash barrier decide on:
the state, whether it is a warm spare, a pending recycle, who killed it, its calls in flight.
Only its own methods change the state, along :data:`TRANSITIONS`; the manager and the group
ask (``ready``, ``drain``, ``mark_unhealthy``, ``begin_stop``, ``died``), they never set
fields.  :class:`~kernelpit.pool.worker.Worker` adds the kernel process.  Being free of
kernels, this class is what the fast unit tests (tests/test_pool_unit.py) build workers from.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ..config import PoolConfig
from ..info import WorkerState

if TYPE_CHECKING:
    from .call import Call

S = WorkerState
# Module constants for the hot paths: reading an Enum member off its class costs ~170 ns.
STARTING, IDLE, BUSY, RECYCLING = S.STARTING, S.IDLE, S.BUSY, S.RECYCLING
UNHEALTHY, STOPPING, DEAD = S.UNHEALTHY, S.STOPPING, S.DEAD

# The stored state's moves.  ``idle`` stands for "ready": ``state`` reports ``busy`` while
# calls are in flight, so that a call costs no transition.
TRANSITIONS: dict[WorkerState, frozenset[WorkerState]] = {
    S.STARTING: frozenset({S.IDLE, S.STOPPING, S.DEAD}),
    S.IDLE: frozenset({S.RECYCLING, S.UNHEALTHY, S.STOPPING, S.DEAD}),
    S.RECYCLING: frozenset({S.UNHEALTHY, S.STOPPING, S.DEAD}),
    S.UNHEALTHY: frozenset({S.STOPPING, S.DEAD}),
    S.STOPPING: frozenset({S.DEAD}),
    S.DEAD: frozenset(),
}
# States of a worker on its way out: a move they do not allow is a race with its end (the
# process died while it was being recycled, say) and is refused, not an error.
LEAVING = frozenset({S.UNHEALTHY, S.STOPPING, S.DEAD})


class IllegalTransition(RuntimeError):
    """A move that :data:`TRANSITIONS` does not allow from a live state: a bug in the pool."""


class WorkerBase:
    """A worker's state, roles and load.  See the module docstring.

    Roles beside the state: ``spare`` (a ready worker held back from calls until
    :meth:`promote`), ``recycle_pending`` (the reason of a recycle whose successor is still
    starting; the worker serves on until :meth:`drain`), ``killed_by`` (why the pool killed
    it: its death is then not the tool's fault).
    """

    def __init__(self, worker_id: int, config: PoolConfig, spare: bool = False) -> None:
        self.id = worker_id
        self.config = config
        self._state = STARTING
        self.inflight: dict[int, Call] = {}
        self.calls = 0
        self.sessions = 0
        self.spare = spare
        self.recycle_pending: str | None = None
        self.killed_by: str | None = None
        self.state_at_death: WorkerState | None = None

    # -- state -----------------------------------------------------------------------
    @property
    def state(self) -> WorkerState:
        state = self._state
        if state is IDLE and self.inflight and not self.spare:
            return BUSY
        return state

    def _move(self, to: WorkerState) -> bool:
        """Take one transition; False when refused because the worker is already leaving."""
        if to in TRANSITIONS[self._state]:
            self._state = to
            return True
        if self._state in LEAVING:
            return False
        raise IllegalTransition(f"worker {self.id} of pool '{self.config.name}' cannot go from "
                                f"{self._state.value} to {to.value}")

    def ready(self) -> None:
        """The readiness check passed: serve calls (or wait as a spare)."""
        self._move(IDLE)

    def drain(self) -> bool:
        """A successor serves now: take no new calls, finish those in flight, then stop."""
        return self._move(RECYCLING)

    def mark_unhealthy(self) -> bool:
        """It stopped answering; False when it is already unhealthy, stopping or dead."""
        return self._state is not UNHEALTHY and self._move(UNHEALTHY)

    def begin_stop(self) -> bool:
        """Asked to exit; False when it is already stopping or dead."""
        return self._state is not STOPPING and self._move(STOPPING)

    def died(self) -> WorkerState:
        """Its process is gone; returns the state it was in."""
        was = self._state
        if self._move(DEAD) and self.state_at_death is None:
            self.state_at_death = was
        return was

    # -- roles -----------------------------------------------------------------------
    @property
    def serving(self) -> bool:
        return self._state is IDLE and not self.spare

    def promote(self) -> bool:
        """A ready spare starts serving calls; False when it is not one (any more)."""
        if not (self.spare and self._state is IDLE):
            return False
        self.spare = False
        return True

    def request_recycle(self, reason: str) -> bool:
        """Note that a successor is being found; False when one already is, or it is not
        serving (a spare, starting, draining, leaving)."""
        if self.recycle_pending is not None or not self.serving:
            return False
        self.recycle_pending = reason
        return True

    def note_kill(self, why: str) -> None:
        """The pool is killing it (cancel grace, unhealthy, restart): not the tool's fault."""
        if self.killed_by is None:
            self.killed_by = why

    @property
    def killed_by_pool(self) -> bool:
        return self.killed_by is not None

    @property
    def replace_reason(self) -> str | None:
        """Why its successor replaces it, as a recycle reason: "unhealthy", or None (a crash)."""
        return "unhealthy" if self.state_at_death is UNHEALTHY else None

    # -- load ------------------------------------------------------------------------
    def saturated(self) -> bool:
        """True when no waiting call of any kind could start here now (skip the queue scan)."""
        if not self.serving:
            return True
        if not self.inflight:
            return False
        running = self.inflight.values()
        batches = all(c.columns is not None for c in running)
        if len(self.inflight) >= self.config.concurrency:
            return not batches or len(self.inflight) > self.config.concurrency
        return not (batches or all(c.thread_safe for c in running))

    def can_take(self, call: "Call") -> bool:
        if not self.serving:
            return False
        if not self.inflight:
            return True
        if call.columns is not None and len(self.inflight) <= self.config.concurrency and all(
                c.columns is not None for c in self.inflight.values()):
            return True  # map chunks: one more queued in the worker hides the round trip
        if len(self.inflight) >= self.config.concurrency or not call.thread_safe:
            return False
        return all(c.thread_safe for c in self.inflight.values())

    def take_inflight(self) -> list["Call"]:
        """Hand over its calls in flight (it is lost: unhealthy or dead); none are left."""
        calls = list(self.inflight.values())
        self.inflight.clear()
        return calls

    def end(self, call: "Call") -> None:
        if self.inflight.pop(call.id, None) is not None:
            self.calls += 1
