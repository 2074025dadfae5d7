"""Making what a close acknowledged durable: one journal fsync shared by the closes at the
time (`GroupCommit`), and the bytes of small files kept in the journal with their rows
(`bytes_to_journal`, `restore_journaled_bytes`; cache/journal.py says when they are used).

A part of the ledger (`ledger.Ledger`), in a module of its own; it holds no pending state.

Invariants:
- `GroupCommit.wait` returns only once an fsync of the WAL that started after the call has
  returned: every commit made before the call is on the disk.
- `restore_journaled_bytes` rewrites a data file only from bytes journaled in an earlier boot
  (its data file was never fsync'ed), and makes both durable before the row is used.
"""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

import trio

from zonefs.pending.rows import INLINE_MAX

if TYPE_CHECKING:
    from zonefs.cache.journal import DirtyRow, Journal


class GroupCommit:
    """Fsyncs of the journal in a worker thread, shared by the callers waiting at once."""

    def __init__(self, journal: Journal) -> None:
        self.journal = journal
        self._asked = 0  # callers so far
        self._synced = 0  # callers whose commits an fsync covered
        self._running: trio.Event | None = None  # set when the fsync running now ends

    async def wait(self) -> None:
        """Return once every journal commit made before this call is fsync'ed. Callers that
        come while an fsync runs share the next one; the trio thread never blocks on it."""
        self._asked += 1
        mine = self._asked
        while self._synced < mine:
            if self._running is not None:
                await self._running.wait()
                continue
            target = self._asked
            done = self._running = trio.Event()
            callbacks = self.journal.start_sync()
            try:
                await trio.to_thread.run_sync(self.journal.fsync_wal)
            except BaseException:
                for fn in callbacks:
                    self.journal.after_sync(fn)
                raise
            finally:
                self._running = None
                done.set()
            self._synced = target
            for fn in callbacks:
                fn()


def bytes_to_journal(path: str, size: int) -> bytes | None:
    """The bytes of the data file `path` (`size` bytes as far as the row knows) to journal
    with its row: None for a file over INLINE_MAX, which is fsync'ed instead (blocking: a
    truncation by name, which is rare)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        if size <= INLINE_MAX:
            content = os.pread(fd, INLINE_MAX + 1, 0)
            if len(content) <= INLINE_MAX:
                return content
        os.fsync(fd)
        return None
    finally:
        os.close(fd)


def restore_journaled_bytes(journal: Journal, row: DirtyRow, path: str) -> None:
    """After a reboot, the data file `path` of a small file's row (never fsync'ed) is written
    again from the bytes its last close journaled (at start, before the row is used)."""
    content = journal.inline_bytes(row.path)
    if content is None:
        return
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, content)
        os.fsync(fd)
    finally:
        os.close(fd)
    # Durable now: the row need not be restored again after another reboot.
    journal.put_dirty(row, inline=None)
