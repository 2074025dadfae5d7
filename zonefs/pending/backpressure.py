"""Backpressure: dirty data waiting for upload against the cache's size.

A write that would grow the dirty data past `cache_size` waits while closed files are uploaded
(at once, not after the write-back delay), instead of failing. The blob cache is told how much
of its capacity dirty data takes (`BlobStore.reserve`), so that clean blobs make room for it.
Part of the pending wing: it reads the ledger's rows and queues their uploads.

Invariant: files still open for writing cannot be uploaded, nor can files the store refused
until they change; when they alone hold the budget, the write goes on (the budget is then
exceeded rather than deadlocked).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

import trio

from zonefs.pending.rows import has_new_bytes

if TYPE_CHECKING:
    from zonefs.cache.blobs import BlobStore
    from zonefs.pending.rows import PendingRows
    from zonefs.pending.writeback import WriteBack

log = logging.getLogger(__name__)


class Backpressure:
    """Dirty bytes against the budget; see the module docstring."""

    def __init__(self, rows: PendingRows, writeback: WriteBack, blobs: BlobStore,
                 budget: int) -> None:
        self.rows, self.writeback, self.blobs = rows, writeback, blobs
        self.budget = budget  # dirty bytes beyond which writes wait for uploads
        self._progress = trio.Event()  # set whenever a dirty file leaves (uploaded, dropped)
        self._throttled = False
        # An estimate that only grows between exact sums: the common case costs O(1).
        self._estimate = 0

    def dirty_bytes(self) -> int:
        """Bytes of local data waiting for upload."""
        return sum(df.row.size for df in self.rows.values() if has_new_bytes(df))

    async def wait_for_room(self, growth: int) -> None:
        """While dirty data would pass the budget, upload closed files now and wait for them.
        The exact sum is taken only when the estimate passes the budget."""
        self._estimate += growth
        self.blobs.reserve(self._estimate)
        if self._estimate <= self.budget:
            self.blobs.evict()
            return
        while (exact := self.dirty_bytes() + growth) > self.budget:
            closed = [p for p, df in self.rows.items() if not df.writers and has_new_bytes(df)
                      and not self.writeback.is_refused(df.queue_key)]
            if not closed:
                return
            if not self._throttled:
                self._throttled = True
                log.info("dirty data reached cache_size (%d bytes): writes wait for uploads",
                         self.budget)
            for path in closed:
                self.writeback.schedule(path, delay=0)
            await self._progress.wait()
        self._throttled = False
        self._estimate = exact
        self.blobs.reserve(exact)
        self.blobs.evict()

    def note_progress(self) -> None:
        """A dirty file left (uploaded, dropped): writes waiting for room look again."""
        self._progress.set()
        self._progress = trio.Event()

    def released(self, size: int) -> None:
        """`size` dirty bytes were uploaded or dropped."""
        self._estimate = max(0, self._estimate - size)
        self.blobs.reserve(self._estimate)
