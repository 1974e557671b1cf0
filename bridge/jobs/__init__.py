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

from .model import TERMINAL, JobEvent, JobInfo, JobState
from .runner import JobRunner, namespace_of
from .store import JobStore, StoreError, open_store

__all__ = ["JobEvent", "JobInfo", "JobRunner", "JobState", "JobStore", "StoreError", "TERMINAL",
           "namespace_of", "open_store"]
