"""Large buffers beside the messages: the bridge's blob store (the chunk framing, which
clients use too, is :mod:`kernelpit.contract.framing`).

A value whose bytes or Arrow data would make a message too big travels as a *blob*
(see ``Value.blobs`` in values.proto): the message carries its id and size,
the data goes as a stream of chunks of at most :data:`CHUNK` bytes
(``ReadBlob`` for results, ``WriteBlob`` for arguments).

Result blobs hold the data as a list of segments that point into the
value's own buffers (the bytes object, or an Arrow IPC stream's buffers) (no copy: a table that came from a worker by
shared memory is streamed straight from its memory map).  Uploaded blobs are
written to a file in the run's shared-memory directory as they arrive; the
request that references one maps the file and unlinks it at once, so the
table's buffers point into the mapping and nothing stays on disk.

A streamed result (:mod:`.streamed`) is a blob too, whose records are put on
it as they are made and read as they come (:meth:`BlobStore.open_feed`,
:meth:`BlobStore.records`).

A blob is freed when it has been read (result) or used (upload), when its
read or upload is cut short, when the stream that made it is cancelled, and
after ``ttl`` seconds unread; :meth:`BlobStore.close` frees everything.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import tempfile
import time
import uuid
from dataclasses import dataclass
from typing import Any, AsyncIterator, Callable, Iterable, Iterator

from ..contract.framing import CHUNK, frame, framed
from ..kernels.arena import drop_gone, read_once

DEFAULT_TTL = 60.0  # seconds a blob waits to be read or used

class BlobError(LookupError):
    """A blob id that is unknown, expired or already used."""


@dataclass
class _Blob:
    id: str
    size: int
    expires: float
    segments: list[Any] | None = None   # a result: its IPC stream, pointing into the value
    path: str | None = None             # an upload: the file it was written to
    owner: Any = None                   # the stream that made it (freed when cancelled)
    busy: bool = False                  # being read
    feed: "asyncio.Queue[Any] | None" = None  # a streamed result: its records as they come
    on_free: Callable[[], None] | None = None  # told when the blob is freed, however


class BlobStore:
    """The bridge's blobs: results waiting to be read, uploads waiting to be used."""

    def __init__(self, directory: str | None, ttl: float = DEFAULT_TTL, chunk: int = CHUNK) -> None:
        self._own_dir = directory is None
        self.directory = directory or tempfile.mkdtemp(prefix="kernelpit-blobs-")
        self.ttl = ttl
        self.chunk = chunk
        self._blobs: dict[str, _Blob] = {}
        self._sweeper: asyncio.Task[None] | None = None
        self.streamed = 0  # results streamed (kernelpit_results_streamed)

    def __len__(self) -> int:
        return len(self._blobs)

    @property
    def being_read(self) -> int:
        """How many blobs are being read now."""
        return sum(blob.busy for blob in self._blobs.values())

    @property
    def nbytes(self) -> int:
        return sum(b.size for b in self._blobs.values())

    def start(self) -> None:
        self._sweeper = asyncio.ensure_future(self._sweep())

    async def _sweep(self) -> None:
        while True:
            await asyncio.sleep(max(0.05, min(self.ttl / 4, 5.0)))
            now = time.monotonic()
            # ids only: a blob left bound here would keep its value while this sleeps
            for blob_id in [b.id for b in self._blobs.values() if b.expires < now and not b.busy]:
                self._free(blob_id)
            # blobs are read through kept mappings of the run's slabs (arena.read_once): let
            # go of those whose files are gone, which would otherwise keep their pages
            drop_gone()

    # -- results ---------------------------------------------------------------------------
    def put(self, segments: list[Any], size: int, owner: Any = None) -> str:
        """Keep a result's IPC stream (as segments, not copied) until it is read."""
        blob_id = uuid.uuid4().hex
        self._blobs[blob_id] = _Blob(blob_id, size, time.monotonic() + self.ttl,
                                     segments=segments, owner=owner)
        return blob_id

    def open_feed(self, on_free: Callable[[], None]) -> tuple[str, "asyncio.Queue[Any]"]:
        """A blob read as it is made (a streamed result, :mod:`kernelpit.service.streamed`):
        its id, and the queue to put its records on, each ``(head, body)`` (two buffers, each
        sent as chunks of its own), then None at the end.  ``on_free`` is told when the blob
        is freed: read to its end, cut short, or unread for ``ttl`` seconds."""
        blob_id = uuid.uuid4().hex
        self.streamed += 1
        feed: asyncio.Queue[Any] = asyncio.Queue()
        self._blobs[blob_id] = _Blob(blob_id, 0, time.monotonic() + self.ttl, feed=feed,
                                     on_free=on_free)
        return blob_id, feed

    def is_streamed(self, blob_id: str) -> bool:
        """Whether ``blob_id`` is a streamed result (read with :meth:`records`)."""
        blob = self._blobs.get(blob_id)
        return blob is not None and blob.feed is not None

    async def records(self, blob_id: str) -> AsyncIterator[tuple[bytes, Any]]:
        """A streamed result's records, ``(head, body)``, as they are made; the blob is freed
        when this ends, however it ends (close it: ``contextlib.aclosing``)."""
        blob = self._blobs.get(blob_id)
        if blob is None or blob.feed is None or blob.busy:
            raise BlobError(f"no streamed result '{blob_id}' to read: it is being read or was "
                            f"read already, or expired after {self.ttl:g} s unread, or its "
                            "call was cancelled")
        blob.busy = True
        try:
            while (record := await blob.feed.get()) is not None:
                yield record
                del record  # not kept while the next record is awaited
        finally:
            self._free(blob_id)

    async def read(self, blob_id: str) -> AsyncIterator[bytes]:
        """The blob as serialized BlobChunks; the blob is freed when this ends, however it ends."""
        if self.is_streamed(blob_id):
            async with contextlib.aclosing(self.records(blob_id)) as records:
                async for head, body in records:
                    yield frame(head)  # each record's head a chunk of its own (its format)
                    for chunk in framed([body], self.chunk):
                        yield chunk
                    del head, body
            return
        with self.reading(blob_id) as (_, segments):
            for chunk in framed(segments, self.chunk):
                yield chunk

    @contextlib.contextmanager
    def reading(self, blob_id: str) -> Iterator[tuple[int, list[Any]]]:
        """A result blob's size and data while it is read (``ReadBlob``, the blob lane): the
        data as it lies in the value's buffers, read through this process's kept mappings of
        shared memory.  The blob is freed when the block ends, however it ends."""
        blob = self._blobs.get(blob_id)
        if blob is None:
            raise BlobError(f"no blob '{blob_id}': it was already read, or expired after "
                            f"{self.ttl:g} s unread, or its call was cancelled")
        if blob.busy or blob.segments is None:
            raise BlobError(f"blob '{blob_id}' is being read already, or is an upload "
                            "(uploads are used by the request that references them), or is "
                            "a streamed result (read with ReadBlob)")
        blob.busy = True
        try:
            yield blob.size, [read_once(s) for s in blob.segments]
        finally:
            self._free(blob_id)

    def release(self, owner: Any) -> None:
        """Free the blobs made for ``owner`` that nobody has started reading (it was cancelled)."""
        for blob in [b for b in self._blobs.values() if b.owner is owner and not b.busy]:
            self._free(blob.id)

    # -- uploads ---------------------------------------------------------------------------
    async def write(self, chunks: AsyncIterator[Any], expected: int | None = None) -> tuple[str, int]:
        """Store an upload as it arrives; returns (id, size).  Cut short: nothing is kept.

        An upload announced as ``expected`` bytes that would not fit in the directory's
        file system (tmpfs: memory) is refused before anything is written (OSError).
        """
        if expected is not None:
            free = shutil.disk_usage(self.directory).free
            if expected > free - (64 << 20):
                raise OSError(f"an upload of {expected} bytes does not fit in {self.directory} "
                              f"({free} bytes free)")
        blob_id = uuid.uuid4().hex
        path = os.path.join(self.directory, f"blob-{blob_id}.arrow")
        size = 0
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        loop = asyncio.get_running_loop()
        writing: asyncio.Future[None] | None = None
        try:
            # each chunk is written on a thread while the next one is received
            async for data in chunks:
                if writing is not None:
                    await writing
                writing = loop.run_in_executor(None, _write_all, fd, data)
                size += len(data)
            if writing is not None:
                await writing
        except BaseException:
            if writing is not None:
                await asyncio.wait([writing])
            os.close(fd)
            _unlink(path)
            raise
        os.close(fd)
        self._blobs[blob_id] = _Blob(blob_id, size, time.monotonic() + self.ttl, path=path)
        return blob_id, size

    def take(self, blob_id: str, size: int | None = None) -> Any:
        """Use an upload: memory-map it (a pyarrow Buffer over the mapping; without pyarrow,
        the blob can only be bytes and is read in) and forget the file."""
        blob = self._blobs.pop(blob_id, None)
        if blob is None or blob.path is None:
            if blob is not None:
                self._blobs[blob_id] = blob
            raise BlobError(f"no uploaded blob '{blob_id}': upload it with WriteBlob first; an "
                            f"upload is used by one request and kept {self.ttl:g} s unused")
        try:
            if size is not None and size != blob.size:
                raise BlobError(f"blob '{blob_id}' has {blob.size} bytes, the value says {size}")
            try:
                import pyarrow as pa
            except ImportError:
                with open(blob.path, "rb") as f:
                    return f.read()
            if blob.size == 0:
                return pa.py_buffer(b"")
            with pa.memory_map(blob.path, "r") as mapped:
                return mapped.read_buffer(blob.size)  # keeps the mapping alive, not the file
        finally:
            _unlink(blob.path)

    # -- freeing ---------------------------------------------------------------------------
    def drop(self, ids: Iterable[str]) -> None:
        for blob_id in ids:
            blob = self._blobs.get(blob_id)
            if blob is not None and not blob.busy:
                self._free(blob_id)

    def _free(self, blob_id: str) -> None:
        blob = self._blobs.pop(blob_id, None)
        if blob is None:
            return
        if blob.path is not None:
            _unlink(blob.path)
        if blob.on_free is not None:
            blob.on_free()

    def close(self) -> None:
        if self._sweeper is not None:
            self._sweeper.cancel()
        for blob_id in list(self._blobs):
            self._free(blob_id)
        if self._own_dir:
            shutil.rmtree(self.directory, ignore_errors=True)

    def files(self) -> list[str]:
        """Upload files on disk now (for tests and diagnostics)."""
        try:
            return [n for n in os.listdir(self.directory) if n.startswith("blob-")]
        except FileNotFoundError:
            return []


def _write_all(fd: int, data: Any) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _unlink(path: str) -> None:
    try:
        os.unlink(path)
    except FileNotFoundError:
        pass
