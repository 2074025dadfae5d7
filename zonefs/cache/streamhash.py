"""The SHA-256 and SHA-1 of a file hashed as it is written, from its start, in one pass.

A file copied, downloaded or extracted into the mount is written from offset 0 to its end, each
write where the last one ended. `StreamHasher` is fed every such write and keeps the digest of
the bytes so far, so that the upload after close does not read the whole file once more to
hash it. The first `INLINE_UP_TO` bytes are hashed at once, on the caller's thread (a small
file costs no thread); past them, pieces go to a worker thread of the hasher's own (hashlib
releases the GIL on large buffers, so the writes go on meanwhile), which ends when idle.

Invariants:
- `result(size)` returns a digest only when every byte of `[0, size)` was fed, in order, exactly
  once, and nothing else was: a write anywhere but at the end, a truncation (`abandon`), or
  more than `MAX_BACKLOG` bytes waiting for the worker turn the hasher off for good, and the
  caller hashes the file itself.
- The pieces fed are `bytes` (immutable): the worker reads them later without a copy.
- Nothing here is durable: after a restart a file is hashed from its bytes on disk.
"""

from __future__ import annotations

import collections
import hashlib
import threading

from zonefs.cache.blobs import Digest

#: Bytes hashed on the feeding thread before the worker thread takes over.
INLINE_UP_TO = 1 << 20
#: Bytes waiting for the worker past which hashing as written is given up (memory bound).
MAX_BACKLOG = 64 << 20
#: Seconds the worker waits for more bytes before it ends (a later write starts another).
IDLE_EXIT = 2.0


class StreamHasher:
    """Digests of a file written sequentially from its start; see the module docstring."""

    def __init__(self) -> None:
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()
        self.end = 0  # bytes fed so far: the offset where the next write must start
        self._pending: collections.deque[bytes] = collections.deque()
        self._backlog = 0  # bytes in _pending
        self._busy = False  # the worker is hashing a piece it took from _pending
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        self.broken = False

    def feed(self, offset: int, data: bytes) -> None:
        """`data` was written at `offset` (call on the writing thread, in write order)."""
        if self.broken or not data:
            return
        with self._cond:
            if offset != self.end:
                self._give_up()
                return
            self.end += len(data)
            if self.end <= INLINE_UP_TO:
                self._sha256.update(data)
                self._sha1.update(data)
                return
            if self._backlog + len(data) > MAX_BACKLOG:
                self._give_up()
                return
            self._pending.append(data)
            self._backlog += len(data)
            if self._worker is None:
                self._worker = threading.Thread(target=self._run, name="zonefs-hash",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def abandon(self) -> None:
        """The file changed otherwise than by an append (truncated, written in the middle)."""
        with self._cond:
            self._give_up()

    def _give_up(self) -> None:
        self.broken = True
        self._pending.clear()
        self._backlog = 0
        self._cond.notify_all()

    def _run(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self.broken:
                    if not self._cond.wait(IDLE_EXIT) and not self._pending:
                        self._worker = None
                        return
                if self.broken:
                    self._worker = None
                    return
                piece = self._pending.popleft()
                self._busy = True
            try:
                self._sha256.update(piece)
                self._sha1.update(piece)
            finally:
                with self._cond:
                    self._busy = False
                    self._backlog -= len(piece)
                    self._cond.notify_all()

    def result(self, size: int) -> Digest | None:
        """The digest of the file's first `size` bytes when they are exactly what was fed,
        else None. Blocks until the worker has hashed what it was given: call it in a worker
        thread."""
        with self._cond:
            while (self._pending or self._busy) and not self.broken:
                self._cond.wait()
            if self.broken or self.end != size:
                return None
            return Digest(self._sha256.hexdigest(), self._sha1.hexdigest(), size)
