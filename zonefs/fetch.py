"""Reading remote objects into the blob cache.

Small objects are downloaded whole. Large ones fill a sparse local file chunk by chunk with
ranged GETs: random reads fetch only the chunks they touch, sequential reads start read-ahead of
the next chunks, and a file whose chunks are all present is hashed and becomes a blob.

Invariants:
- Every ranged GET carries If-Match with the ETag the reader opened (or asks for its version),
  so one file never mixes bytes of two versions.
- A partial file becomes a blob only after it was hashed locally (`blobs.ingest` with the digest).
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from .blobs import BlobStore, Digest, hash_file
from .errors import RemoteError
from .remote.base import Remote

log = logging.getLogger(__name__)

CHUNK = 8 << 20
READAHEAD = 4  # chunks in flight ahead of a sequential reader

Spawn = Callable[[Callable[[], Awaitable[Any]]], None]


def _write_at(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


class RangeFetcher:
    """A sparse local copy of one object version, filled on demand. Shared by its readers."""

    def __init__(
        self,
        remote: Remote,
        blobs: BlobStore,
        spawn: Spawn,
        *,
        key: str,
        etag: str,
        version_id: str | None,
        size: int,
        on_complete: Callable[[Digest, str], None],
    ) -> None:
        self._remote, self._blobs, self._spawn = remote, blobs, spawn
        self.key, self.etag, self.version_id, self.size = key, etag, version_id, size
        self._on_complete = on_complete
        self.path = blobs.new_tmp()
        os.truncate(self.path, size)
        self._fd = os.open(self.path, os.O_RDWR)
        self._nchunks = (size + CHUNK - 1) // CHUNK
        self._have: set[int] = set()
        self._events: dict[int, trio.Event] = {}
        self._errors: dict[int, BaseException] = {}
        self._next_offset = -1
        self.users = 0
        self.closed = False
        self.complete = False

    async def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        first, last = offset // CHUNK, (end - 1) // CHUNK
        for i in range(first, last + 1):
            self._start(i)
        if offset == self._next_offset or offset == 0:
            for i in range(last + 1, min(last + 1 + READAHEAD, self._nchunks)):
                self._start(i)
        for i in range(first, last + 1):
            await self._events[i].wait()
            if i in self._errors:
                err = self._errors.pop(i)
                del self._events[i]  # let a later read try again
                raise err
        self._next_offset = end
        return os.pread(self._fd, end - offset, offset)

    def _start(self, i: int) -> None:
        if i in self._have or i in self._events:
            return
        self._events[i] = trio.Event()
        self._spawn(lambda: self._fetch(i))

    async def _fetch(self, i: int) -> None:
        event = self._events[i]
        try:
            start = i * CHUNK
            want = min(CHUNK, self.size - start)
            data = await self._remote.get_range(
                self.key, start, want, self.version_id, None if self.version_id else self.etag
            )
            if len(data) != want:
                raise RemoteError(f"short read of {self.key} at {start}: the object changed")
            if self.closed:
                return
            # A descriptor of its own: close() may close the readers' one meanwhile.
            await trio.to_thread.run_sync(_write_at, self.path, data, start)
            self._have.add(i)
        except BaseException as exc:  # reported to the reader waiting on this chunk
            self._errors[i] = exc if isinstance(exc, Exception) else RemoteError("cancelled")
            if not isinstance(exc, Exception):
                raise
        finally:
            event.set()
        if len(self._have) == self._nchunks and not self.complete:
            # Whole now, even if its readers are gone: worth keeping as a blob. Readers still
            # open keep using their descriptor after the file moves into blobs/.
            self.complete = True
            digest = await trio.to_thread.run_sync(hash_file, self.path)
            try:
                self._on_complete(digest, self.path)
            except Exception as exc:  # a background task must not take the mount down
                log.warning("%s: not cached: %s", self.key, exc)
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(self.path)

    def close(self) -> None:
        """Release the local copy; an incomplete one is deleted."""
        if self.closed:
            return
        self.closed = True
        os.close(self._fd)
        if not self.complete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
