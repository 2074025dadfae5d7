"""Empty staging files made ahead of the creates that will need them.

Creating a file on the cache disk costs a few hundred microseconds (measured 0.3 ms on ext4),
and `tar -x` or `cp -r` create thousands of files, each needing a staging file. Made on the
event loop's thread, those creates stall every other FUSE request; made here, in a worker
thread while the loop serves the kernel, a create only takes a descriptor from a queue.

Owns: the queue of (path, descriptor) pairs of empty 0600 files under `staging/`, open for
reading and writing, that nobody has taken yet.

Invariants:
- A file in the queue is empty, and no journal row names it: a crash leaves it an orphan, which
  the ledger's start-up removes with every staging file no row names.
- The queue is filled lazily: a mount that never creates a file never makes one.
- At most one refill thread runs at a time; it stops at `HIGH` files, at the first error (a full
  disk: the caller's own create then fails with the real error) and once the pool is closed.
- `close` unlinks what is queued; a refill still running drains what it made after that.
"""

from __future__ import annotations

import collections
import contextlib
import itertools
import logging
import os

import trio

log = logging.getLogger(__name__)

#: A refill starts when fewer than LOW files are queued, and stops at HIGH.
LOW = 16
HIGH = 48


def new_private_file(directory: str, prefix: str, counter: itertools.count[int],
                     flags: int = os.O_RDWR) -> tuple[str, int]:
    """A new empty 0600 file `<prefix><n>` in `directory`, with the first n from `counter`
    not taken: its path and a descriptor opened with `flags`. `next` on an itertools.count is
    atomic, so threads may share one."""
    while True:
        path = os.path.join(directory, f"{prefix}{next(counter)}")
        try:
            return path, os.open(path, os.O_CREAT | os.O_EXCL | flags, 0o600)
        except FileExistsError:
            continue


class StagingPool:
    """Hands out new empty staging files under `directory`, made ahead in a worker thread."""

    def __init__(self, directory: str) -> None:
        self.directory = directory
        # Named apart from the blob store's own files (`<pid>-<n>`) in the same directories.
        self._prefix = f"{os.getpid()}-s"
        self._counter = itertools.count()
        # deque's append and popleft are atomic: the refill thread appends, the loop takes.
        self._ready: collections.deque[tuple[str, int]] = collections.deque()
        self._refilling = False
        self._closed = False

    def take(self) -> tuple[str, int]:
        """A new empty staging file open for reading and writing (from the queue when it has
        one), and a refill started in the background when the queue runs low."""
        try:
            item = self._ready.popleft()
        except IndexError:
            item = new_private_file(self.directory, self._prefix, self._counter)
        if len(self._ready) < LOW and not self._refilling and not self._closed:
            self._refilling = True
            trio.lowlevel.start_thread_soon(self._refill, self._refill_done)
        return item

    @property
    def refilling(self) -> bool:
        """A refill thread is making files (one may exist on disk before it is queued)."""
        return self._refilling

    def ahead(self) -> set[str]:
        """Paths of the files queued, made ahead and not taken yet."""
        return {path for path, _ in list(self._ready)}

    def _refill(self) -> None:
        """Worker thread: queue new files up to HIGH."""
        while len(self._ready) < HIGH and not self._closed:
            self._ready.append(new_private_file(self.directory, self._prefix, self._counter))
        if self._closed:  # `close` ran while the file was being made: drain what is left
            self._drain()

    def _refill_done(self, outcome: object) -> None:
        """Still in the worker thread: an error (a full disk) only stops this refill; the next
        create makes its own file and meets the error itself."""
        self._refilling = False
        error = getattr(outcome, "error", None)
        if error is not None and not self._closed:
            log.debug("staging files could not be made ahead: %s", error)

    def close(self) -> None:
        """Unlink the files nobody took."""
        self._closed = True
        self._drain()

    def _drain(self) -> None:
        # popleft is atomic: when the loop and the refill thread both drain, each file is
        # discarded once.
        while True:
            try:
                _discard(self._ready.popleft())
            except IndexError:
                return


def _discard(item: tuple[str, int]) -> None:
    path, fd = item
    os.close(fd)
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)
