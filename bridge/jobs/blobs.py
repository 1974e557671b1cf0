"""Where large stored values live: files next to the database, or chunks inside it.

A journal entry or request bigger than :data:`INLINE_LIMIT` is not put in its row; the
row keeps a reference and the bytes go to a :class:`Blobs` place.  Both places are used
from the store's writer thread, inside the transaction that writes the row.
"""

from __future__ import annotations

import os
import shutil
from typing import Any

INLINE_LIMIT = 256 * 1024
CHUNK = 1 << 20


class Blobs:
    """A place for large values, addressed by (job, name)."""

    def put(self, cur: Any, job: str, name: str, data: bytes) -> str:
        raise NotImplementedError

    def get(self, cur: Any, job: str, ref: str) -> bytes:
        raise NotImplementedError

    def drop(self, cur: Any, jobs: list[str]) -> None:
        raise NotImplementedError


class FileBlobs(Blobs):
    """One file per value under ``root/<job>/`` (directories 0700, files 0600).

    Written without fsync, like the rows under ``synchronous=NORMAL``: a power loss can
    lose the last values together with the last commits, never one without the other's
    reference being unreadable (a missing file reads as an error naming it).
    """

    def __init__(self, root: str) -> None:
        self.root = root

    def ensure(self) -> None:
        os.makedirs(self.root, mode=0o700, exist_ok=True)
        os.chmod(self.root, 0o700)

    def _dir(self, job: str) -> str:
        return os.path.join(self.root, job)

    def put(self, cur: Any, job: str, name: str, data: bytes) -> str:
        folder = self._dir(job)
        os.makedirs(folder, mode=0o700, exist_ok=True)
        path = os.path.join(folder, name)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        return name

    def get(self, cur: Any, job: str, ref: str) -> bytes:
        path = os.path.join(self._dir(job), ref)
        try:
            with open(path, "rb") as f:
                return f.read()
        except FileNotFoundError:
            raise LookupError(f"the stored value file {path} is missing; it was removed by "
                              "hand, or lost with a power failure") from None

    def drop(self, cur: Any, jobs: list[str]) -> None:
        for job in jobs:
            shutil.rmtree(self._dir(job), ignore_errors=True)


class TableBlobs(Blobs):
    """Chunks of at most 1 MiB in the ``job_blobs`` table of the same database."""

    def __init__(self, param: str = "?") -> None:
        self._p = param

    def put(self, cur: Any, job: str, name: str, data: bytes) -> str:
        p = self._p
        view = memoryview(data)
        rows = [(job, name, i, view[at:at + CHUNK].tobytes())
                for i, at in enumerate(range(0, len(view), CHUNK))]
        for row in rows:
            cur.put(f"INSERT INTO job_blobs(job, name, part, data) VALUES ({p},{p},{p},{p})", row)
        return name

    def get(self, cur: Any, job: str, ref: str) -> bytes:
        p = self._p
        cur.execute(f"SELECT data FROM job_blobs WHERE job={p} AND name={p} ORDER BY part",
                    (job, ref))
        parts = [bytes(r[0]) for r in cur.fetchall()]
        if not parts:
            raise LookupError(f"the stored value {ref} of job {job} is missing")
        return b"".join(parts)

    def drop(self, cur: Any, jobs: list[str]) -> None:
        p = self._p
        for job in jobs:
            cur.put(f"DELETE FROM job_blobs WHERE job={p}", (job,))
