"""The local pool manager: the supervision tree behind ``kernelpit.Pool``.

::

    PoolManager            (manager.py)  run id, the call channel, named pools, sessions, calls,
    │                                    the crash barrier (classify, retry, taint)
    ├── RunRegistry        (registry.py) kernels of every run on disk (SQLite), two-phase
    ├── reaper.py                        ends kernels whose controller is gone (the process killer)
    ├── leftovers.py                     a run's files on disk; removes those of runs that are over
    ├── Channel            (channel.py)  one Unix socket every agent thread connects to
    ├── SessionTable       (sessions.py) session -> worker affinity, idle expiry
    ├── HealthMonitor      (health.py)   heartbeat + ping, RSS and age checks -> recycle/unhealthy
    └── WorkerGroup × N    (group.py)    one named pool: workers, spares, recycling, replacement
        ├── WaitQueue      (dispatch.py) bounded FIFO of calls waiting for a worker
        ├── TaintTracker   (crash.py)    tools that keep crashing workers are quarantined
        └── Worker × M     (worker.py)   one kernel: launch, readiness, in-flight calls
            ├── WorkerBase (state.py)    its state machine (WorkerState), roles and load
            ├── kernel.py                the kernelspec and AsyncKernelManager launch
            └── deathwatch.py            notices the kernel process exit at once (pidfd)

Calls (call.py) are owned by the manager from submission to their last event.
"""

from .manager import PoolManager

__all__ = ["PoolManager"]
