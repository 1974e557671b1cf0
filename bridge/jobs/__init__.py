"""Durable jobs: tool calls that outlive their submitter, journaled in a store.

::

    store = await open_store(None, namespace="default")     # SQLite in the Jupyter data dir
    runner = JobRunner(manager, store)                       # manager: a started PoolManager
    await runner.start()                                     # takes over what dead runners left
    info = await runner.submit("train", [], {"epochs": 10}, CallOptions(), idempotent=True)
    async for event in runner.events(info.id):              # replay, then follow live
        ...
    await runner.stop(grace=30)

See docs/jobs.md for the model, the stores, ownership, restarts and retention.
"""

from typing import Any

from .model import TERMINAL, JobEvent, JobInfo, JobState

# The runner and the stores are the server side (they load the pool machinery); a client
# process that only reads JobInfo / JobEvent, or talks to the Jobs service through
# kernelpit.jobs.remote, must not import them, so they load on first use.
_LAZY = {"JobRunner": ".runner", "namespace_of": ".runner", "JobStore": ".store",
         "StoreError": ".store", "open_store": ".store"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        value = getattr(importlib.import_module(_LAZY[name], __name__), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'kernelpit.jobs' has no attribute {name!r}")

__all__ = ["JobEvent", "JobInfo", "JobRunner", "JobState", "JobStore", "StoreError", "TERMINAL",
           "namespace_of", "open_store"]
