"""The SHA-256 and SHA-1 of a local file hashed as it is written, from its start, in one pass.

A file copied, downloaded or extracted into the mount is written from offset 0 to its end, each
write where the last one ended (the kernel may hand a few of them over at once, so they can
arrive slightly out of order: a write that starts past the end is remembered, up to
`MAX_AHEAD` of them, until the gap before it is written). `StreamHasher` is told of every write
(`wrote`) and keeps the digest of the file's bytes so far, so that the upload after close does
not read the whole file once more to hash it: once more than `INLINE_UP_TO` bytes are written,
a worker thread of its own reads what was written from the file (still in the page cache) and
hashes it behind the writes (hashlib releases the GIL on large buffers, so the writes go on
meanwhile); it ends when idle. `result` hashes whatever is left and returns the digest.

Invariants:
- `result(size)` returns a digest only when every write of the file was reported, and the
  writes covered `[0, size)` exactly once with nothing past it: a write over bytes already
  written, a truncation (`abandon`), or too many writes past a gap turn the hasher off for
  good, and the caller hashes the file itself. Bytes are read only below `end`, which only
  appends move: no byte read can change afterwards without turning the hasher off.
- Nothing is kept in memory but the two hash states, and nothing here is durable: after a
  restart a file is hashed from its bytes on disk.
"""

from __future__ import annotations

import hashlib
import os
import threading

from zonefs.cache.blobs import Digest

#: Bytes written before the worker thread starts (a small file costs no thread: `result`
#: hashes it).
INLINE_UP_TO = 1 << 20
#: Writes past a gap remembered before hashing as written is given up.
MAX_AHEAD = 256
#: Bytes read and hashed at a time.
CHUNK = 1 << 20
#: Seconds the worker waits for more bytes before it ends (a later write starts another).
IDLE_EXIT = 2.0


class StreamHasher:
    """Digests of the file at `path` as it is written; see the module docstring."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.end = 0  # bytes written from the start without a gap (guarded by _cond)
        self._ahead: dict[int, int] = {}  # offset -> length of writes past a gap
        self.broken = False
        self._cond = threading.Condition()
        self._worker: threading.Thread | None = None
        # Whoever hashes (the worker, or `result`) holds _hashing: the states, `_hashed` and
        # `_fd` are theirs meanwhile.
        self._hashing = threading.Lock()
        self._sha256 = hashlib.sha256()
        self._sha1 = hashlib.sha1()
        self._hashed = 0
        self._fd: int | None = None

    # -- the writing side (the trio thread, in the order the writes were made) -----------

    def wrote(self, offset: int, length: int) -> None:
        """`length` bytes were written at `offset` of the file."""
        if length <= 0:
            return
        with self._cond:
            if self.broken:
                return
            if offset > self.end:
                if offset in self._ahead or len(self._ahead) >= MAX_AHEAD:
                    self._give_up()
                else:
                    self._ahead[offset] = length
                return
            if offset < self.end:
                self._give_up()  # bytes written again: what was hashed may be stale
                return
            self.end += length
            while (more := self._ahead.pop(self.end, None)) is not None:
                self.end += more
            if self._ahead and min(self._ahead) < self.end:
                self._give_up()  # a write past the gap overlaps what filled it
                return
            if self.end > INLINE_UP_TO and self._worker is None:
                self._worker = threading.Thread(target=self._run, name="zonefs-hash",
                                                daemon=True)
                self._worker.start()
            self._cond.notify_all()

    def abandon(self) -> None:
        """The file changed otherwise than by a write (truncated): hash it from disk."""
        with self._cond:
            self._give_up()

    def _give_up(self) -> None:
        self.broken = True
        self._ahead.clear()
        self._cond.notify_all()

    # -- hashing (the worker thread, or `result` in the caller's thread) ------------------

    def _step(self) -> bool:
        """Hash the next chunk below `end`; False when there is none (or the hasher is off)."""
        with self._hashing:
            with self._cond:
                if self.broken:
                    return False
                start = self._hashed
                stop = min(self.end, start + CHUNK)
            if start >= stop:
                return False
            try:
                if self._fd is None:
                    self._fd = os.open(self.path, os.O_RDONLY)
                data = os.pread(self._fd, stop - start, start)
            except OSError:
                data = b""
            if len(data) != stop - start:
                self.abandon()  # the file is gone or shorter: nothing to trust
                return False
            self._sha256.update(data)
            self._sha1.update(data)
            self._hashed = stop
            return True

    def _close_fd(self) -> None:
        with self._hashing:
            if self._fd is not None:
                os.close(self._fd)
                self._fd = None

    def _run(self) -> None:
        try:
            while True:
                while self._step():
                    pass
                with self._cond:
                    if not self.broken and self._hashed >= self.end:
                        self._cond.wait(IDLE_EXIT)
                    if self.broken or self._hashed >= self.end:
                        self._worker = None
                        return
        finally:
            self._close_fd()

    def result(self, size: int) -> Digest | None:
        """The digest of the file's first `size` bytes when they are exactly what was
        written, else None. Hashes what the worker has not yet: call it in a worker thread."""
        while self._step():
            pass
        self._close_fd()
        with self._hashing, self._cond:
            if self.broken or self._ahead or self.end != size or self._hashed != size:
                return None
            return Digest(self._sha256.hexdigest(), self._sha1.hexdigest(), size)
