"""Reading remote objects into the blob cache.

Small objects are downloaded whole. Large ones fill a sparse local file with ranged GETs:
sequential reads fetch whole chunks and start read-ahead of the next ones, random reads fetch
only the pages they touch, and a file whose pages are all present becomes a blob.

The blob's digest is computed while the file fills: the bytes are hashed in order as soon as
they are contiguous from the start, from the fetched buffers themselves when a sequential reader
brought them (no pass over the file once it is whole), else read back from the file.

An object larger than the whole cache (`cache_size`) is read through: it can never be kept, so
its bytes are not hashed, and the disk space of the chunks a sequential reader has left behind
is released as it goes (holes punched in the sparse file), so reading it takes a few chunks of
disk, not its size.

Invariants:
- Every ranged GET carries If-Match with the ETag the reader opened (or asks for its version),
  so one file never mixes bytes of two versions.
- A partial file becomes a blob only after it was hashed locally (`blobs.ingest` with the digest).
- Bytes are hashed once each, in order, by one task at a time (`_hash_along`).
- With a buffer budget (`-o max_memory`, core/memory.py), every GET holds its bytes in it
  until they are written to the file, and bytes kept for the hash until they are hashed;
  read-ahead starts only where there is room, and near the cap a chunk comes in PIECE GETs.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import ctypes
import ctypes.util
import errno
import hashlib
import logging
import os
import threading
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING, Any

import trio

from zonefs.cache.blobs import BlobStore, Digest
from zonefs.common.errors import RemoteError

if TYPE_CHECKING:
    from zonefs.core.memory import MemoryBudget
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)

#: The unit of what is fetched and remembered as present: a read that does not follow on from
#: what was read before fetches only the pages it touches (random reads cost about what they
#: ask for, not a whole chunk each).
PAGE = 128 << 10
#: A sequential reader fetches whole chunks, with READAHEAD more in flight ahead of it.
CHUNK = 8 << 20
READAHEAD = 4
PAGES_PER_CHUNK = CHUNK // PAGE
#: Near the `max_memory` cap a chunk is fetched with GETs of this size, one after another:
#: a GET that goes alone there adds this much, not a chunk.
PIECE = 1 << 20
#: Fetched bytes are written to the file from the loop's thread up to this size (a page cache
#: copy is cheaper than a thread hop); larger pieces are written from a worker thread.
INLINE_WRITE = 1 << 20
#: Bytes a sequential reader fetched are kept in memory for the hash while they start at most
#: this far ahead of what is hashed; anything else is read back from the file when the hash
#: gets there.
HOLD = 32 << 20
#: The most read back from the file for the hash at once, outside the buffer budget (a hash
#: that waited for room could hold up the bytes kept for it): 8 MiB pieces, one per reader,
#: were 32 MiB of peak memory with four cold readers under `max_memory=160M`.
READ_BACK_PAGES = 8
#: Chunks behind a sequential reader of a read-through object kept on disk (a reader that
#: steps back a little still finds them); older ones are punched out.
KEEP_BEHIND = 2

_FALLOC_PUNCH_HOLE = 0x02 | 0x01  # FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE
_libc = ctypes.CDLL(ctypes.util.find_library("c"), use_errno=True)


def _punch_hole(fd: int, offset: int, length: int) -> bool:
    """Release the disk space of [offset, offset+length) of `fd` (reads give zeros); False
    where the file system cannot."""
    if _libc.fallocate(fd, _FALLOC_PUNCH_HOLE, ctypes.c_int64(offset),
                       ctypes.c_int64(length)) == 0:
        return True
    err = ctypes.get_errno()
    if err not in (errno.EOPNOTSUPP, errno.ENOSYS):
        log.debug("cannot release cache space: %s", os.strerror(err))
    return False

Spawn = Callable[[Callable[[], Awaitable[Any]]], None]


def _write_at(path: str, data: bytes, offset: int) -> None:
    fd = os.open(path, os.O_WRONLY)
    try:
        os.pwrite(fd, data, offset)
    finally:
        os.close(fd)


def _read_at(path: str, offset: int, length: int) -> bytes:
    fd = os.open(path, os.O_RDONLY)
    try:
        return os.pread(fd, length, offset)
    finally:
        os.close(fd)


def _update(hashes: tuple[Any, Any], data: bytes) -> None:
    for h in hashes:
        h.update(data)  # hashlib lets go of the GIL for buffers this large


def _lower_priority() -> None:
    with contextlib.suppress(OSError):  # where threads have no priority of their own
        os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), HASH_NICENESS)


#: Hashing downloaded bytes is the largest CPU cost of a cold read (SHA-256 and SHA-1 of
#: every byte), and nothing waits for it but the blob's entry into the cache: it runs in one
#: thread of its own at the lowest priority, so that it takes only CPU time that serving
#: reads, downloads (and a store on the same machine) leave.
HASH_NICENESS = 19
_hasher = concurrent.futures.ThreadPoolExecutor(
    max_workers=1, thread_name_prefix="zonefs-hash", initializer=_lower_priority)


async def _hash_in_background(hashes: tuple[Any, Any], data: bytes) -> None:
    """`_update` in the hashing thread; returns once it is done."""
    done = trio.Event()
    token = trio.lowlevel.current_trio_token()

    def wake(_: object) -> None:
        with contextlib.suppress(trio.RunFinishedError):
            token.run_sync_soon(done.set)

    future = _hasher.submit(_update, hashes, data)
    future.add_done_callback(wake)
    with trio.CancelScope(shield=True):  # the caller counts these bytes as hashed only after
        await done.wait()
    future.result()


class RangeFetcher:
    """A sparse local copy of one object version, filled on demand. Shared by its readers.

    What is present is kept by page (`PAGE`). A read that starts the object, starts where the
    last read ended, or follows on from a page in flight or a run of present pages is taken as
    sequential: the whole chunks it touches are fetched, and READAHEAD more; any other read
    fetches only its own pages. A fetch covers a
    run of pages that are neither present nor in flight, so no byte is fetched twice."""

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
        budget: MemoryBudget | None = None,
    ) -> None:
        self._remote, self._blobs, self._spawn = remote, blobs, spawn
        self._budget = budget
        self.key, self.etag, self.version_id, self.size = key, etag, version_id, size
        self._on_complete = on_complete
        self.path = blobs.new_tmp()
        os.truncate(self.path, size)
        self._fd = os.open(self.path, os.O_RDWR)
        self._npages = (size + PAGE - 1) // PAGE
        self._nchunks = (size + CHUNK - 1) // CHUNK
        # Chunks already asked for whole: a sequential read checks these instead of scanning
        # every page of its chunk and read-ahead on every call (a 1 MiB FUSE read would
        # otherwise walk 320 pages). A chunk whose fetch fails leaves it, to be asked again.
        self._claimed: set[int] = set()
        self._hashes = (hashlib.sha256(), hashlib.sha1())
        self._hashed = 0  # bytes [0, _hashed) are in self._hashes
        self._held: dict[int, bytes] = {}  # fetched bytes by offset, kept for the hash
        self._hashing = False
        self._handed_on = False  # the digest went to on_complete
        # Larger than the whole cache: never kept (see the module docstring).
        self.read_through = size > blobs.capacity
        self._released = 0  # read-through: chunks below this one were punched out
        self._have: set[int] = set()  # pages present
        self._events: dict[int, trio.Event] = {}  # pages in flight (or failed, until read)
        self._errors: dict[int, BaseException] = {}
        self._next_offset = -1
        self.users = 0
        self.closed = False
        self.complete = False

    async def read(self, offset: int, length: int) -> bytes:
        if offset >= self.size or length <= 0:
            return b""
        end = min(offset + length, self.size)
        first, last = offset // PAGE, (end - 1) // PAGE
        before = first - 1
        if (offset == 0 or offset == self._next_offset or before in self._events
                or (before in self._have and before - 1 in self._have)):
            chunk, last_chunk = first // PAGES_PER_CHUNK, last // PAGES_PER_CHUNK
            for c in range(chunk, min(last_chunk + 1 + READAHEAD, self._nchunks)):
                if c not in self._claimed:
                    reserved = 0
                    if c > last_chunk and self._budget is not None:
                        # Read-ahead: only where the budget has room now.
                        if not self._budget.try_take(CHUNK):
                            break
                        reserved = CHUNK
                    self._claimed.add(c)
                    self._start(c * PAGES_PER_CHUNK, (c + 1) * PAGES_PER_CHUNK, hold=True,
                                reserved=reserved)
        else:
            self._start(first, last + 1)
        for p in range(first, last + 1):
            while p not in self._have:
                event = self._events.get(p)
                if event is None:  # failed meanwhile, and that error went to another reader
                    self._start(p, p + 1)
                    event = self._events[p]
                await event.wait()
                if p in self._errors:
                    err = self._errors.pop(p)
                    del self._events[p]  # let a later read try again
                    raise err
        self._next_offset = end
        data = os.pread(self._fd, end - offset, offset)
        if self.read_through:
            self._release_before(first // PAGES_PER_CHUNK - KEEP_BEHIND)
        return data

    def _release_before(self, chunk: int) -> None:
        """Read-through: punch out the present pages of the chunks below `chunk` (those in
        flight stay), and forget them: a read that comes back fetches them again."""
        if chunk <= self._released:
            return
        for c in range(self._released, chunk):
            first, stop = c * PAGES_PER_CHUNK, min((c + 1) * PAGES_PER_CHUNK, self._npages)
            p = first
            while p < stop:  # each run of present pages alone: a page in flight may be
                if p not in self._have:  # written already, and not yet marked present
                    p += 1
                    continue
                run = p
                while p < stop and p in self._have:
                    p += 1
                if not _punch_hole(self._fd, run * PAGE, min(p * PAGE, self.size) - run * PAGE):
                    self._released = chunk  # this file system cannot: keep the bytes
                    return
                self._have.difference_update(range(run, p))
            self._claimed.discard(c)
        self._released = chunk

    def _start(self, first: int, stop: int, *, hold: bool = False, reserved: int = 0) -> None:
        """Fetch every run of pages in [first, stop) neither present nor in flight; `hold`:
        keep the bytes for the hash (a sequential reader's, which the hash reaches soon).
        `reserved`: bytes of the budget already taken for these fetches (the rest is given
        back)."""
        run: int | None = None
        for p in range(first, min(stop, self._npages) + 1):
            free = p < min(stop, self._npages) and p not in self._have and p not in self._events
            if free and run is None:
                run = p
            elif not free and run is not None:
                event = trio.Event()
                for q in range(run, p):
                    self._events[q] = event
                size = min(p * PAGE, self.size) - run * PAGE
                taken = min(size, reserved)
                reserved -= taken
                self._spawn(lambda a=run, b=p, e=event, t=taken: self._fetch(a, b, e, hold, t))
                run = None
        if reserved and self._budget is not None:
            self._budget.give(reserved)

    async def _get(self, start: int, length: int) -> bytes:
        """`length` bytes of the object from `start`, of the version this reader opened."""
        data = await self._remote.get_range(
            self.key, start, length, self.version_id, None if self.version_id else self.etag
        )
        if len(data) != length:
            raise RemoteError(f"short read of {self.key} at {start}: the object changed")
        return data

    async def _write(self, data: bytes, start: int) -> None:
        """Write fetched bytes at `start` of the file (RemoteError if it was closed)."""
        if self.closed:
            raise RemoteError(f"{self.key}: read after close")
        if len(data) <= INLINE_WRITE:
            os.pwrite(self._fd, data, start)  # not closed: checked above, no await since
        else:
            # A descriptor of its own: close() may close the readers' one meanwhile.
            await trio.to_thread.run_sync(_write_at, self.path, data, start)
            if self.closed:
                raise RemoteError(f"{self.key}: read after close")  # the file may be gone

    async def _fetch(self, first: int, stop: int, event: trio.Event, hold: bool,
                     taken: int = 0) -> None:
        start = first * PAGE
        want = min(stop * PAGE, self.size) - start
        budget = self._budget
        try:
            if budget is not None and taken < want and budget.near_cap(want - taken):
                # Near the cap: smaller GETs, each taking its bytes, so what one GET going
                # alone adds stays small. Nothing is kept for the hash (keep refuses here).
                if taken:
                    budget.give(taken)
                    taken = 0
                for piece in range(start, start + want, PIECE):
                    n = min(PIECE, start + want - piece)
                    await budget.take(n)
                    taken = n
                    await self._write(await self._get(piece, n), piece)
                    budget.give(n)
                    taken = 0
            else:
                if budget is not None and taken < want:
                    await budget.take(want - taken)
                taken = want if budget is not None else 0
                data = await self._get(start, want)
                await self._write(data, start)
                if hold and not self.read_through and start - self._hashed < HOLD and \
                        (budget is None or budget.keep(taken)):
                    self._held[start] = data
                elif budget is not None:
                    budget.give(taken)
                taken = 0
            self._have.update(range(first, stop))
            for p in range(first, stop):
                if self._events.get(p) is event:
                    del self._events[p]
        except BaseException as exc:  # reported to the reader waiting on these pages
            if taken and budget is not None:
                budget.give(taken)
            error = exc if isinstance(exc, Exception) else RemoteError("cancelled")
            for p in range(first, stop):
                self._errors[p] = error
            self._claimed.difference_update(
                range(first // PAGES_PER_CHUNK, (stop - 1) // PAGES_PER_CHUNK + 1))
            if not isinstance(exc, Exception):
                raise
        finally:
            event.set()
        if self.read_through:
            return  # never a blob: nothing to hash
        if len(self._have) == self._npages:
            # Whole now, even if its readers are gone: worth keeping as a blob. Readers still
            # open keep using their descriptor after the file moves into blobs/.
            self.complete = True
        if not self._hashing:
            await self._hash_along()

    async def _hash_along(self) -> None:
        """Hash the bytes contiguous from what is hashed; once all are, make the file a blob.

        One call runs at a time (`_hashing`); pieces that arrive meanwhile are taken by its
        loop. An incomplete file whose readers are gone is deleted, and the hash stops."""
        self._hashing = True
        try:
            while self._hashed < self.size and not (self.closed and not self.complete):
                pos = self._hashed
                data = self._held.pop(pos, None)
                kept = data is not None
                if data is None:
                    data = await self._read_back(pos)
                    if data is None:
                        return  # the next bytes are not here yet
                try:
                    await _hash_in_background(self._hashes, data)
                finally:
                    if kept and self._budget is not None:
                        self._budget.give_kept(len(data))
                self._hashed = pos + len(data)
        except OSError as exc:  # a background task must not take the mount down
            log.warning("%s: not cached: %s", self.key, exc)
            return
        finally:
            self._hashing = False
        if self._hashed < self.size or not self.complete or self._handed_on:
            return  # closed before it was whole (the file is gone), or handed on already
        self._handed_on = True
        h256, h1 = self._hashes
        digest = Digest(h256.hexdigest(), h1.hexdigest(), self.size)
        try:
            self._on_complete(digest, self.path)
        except Exception as exc:  # a background task must not take the mount down
            log.warning("%s: not cached: %s", self.key, exc)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)

    async def _read_back(self, pos: int) -> bytes | None:
        """The present bytes from `pos` (page-aligned), READ_BACK_PAGES at most, read from the
        file, up to the next held piece; None when the page at `pos` is not present."""
        page = pos // PAGE
        stop = page
        while (stop < self._npages and stop in self._have and stop - page < READ_BACK_PAGES
               and (stop == page or stop * PAGE not in self._held)):
            stop += 1
        if stop == page:
            return None
        end = min(stop * PAGE, self.size)
        return await trio.to_thread.run_sync(_read_at, self.path, pos, end - pos)

    def close(self) -> None:
        """Release the local copy; an incomplete one is deleted."""
        if self.closed:
            return
        self.closed = True
        os.close(self._fd)
        if self._budget is not None:
            for data in self._held.values():
                self._budget.give_kept(len(data))
        self._held.clear()
        if not self.complete:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.path)
