"""The ledger: the one owner of pending state.

A pending change is what this mount acknowledged and the bucket does not hold yet: a pending
row (`rows.DirtyFile`: a file's new bytes, a symlink, a metadata change, a copy of a renamed
file, a directory marker), a pending delete (`deletes.PendingDelete`), and the write-back
queue's entry that applies it. The `Ledger` alone creates, changes and removes them (with the
other modules of this wing: `moves` moves rows to new names, `deletes` keeps the deletes),
and bumps a row's `generation`. The core asks it through named operations: `created`,
`opened_for_write`, `took_local_copy`, `wrote`, `truncated`, `metadata_changed`, `closed`,
`last_close`, `removed`, the moves of `moves.LocalMoves`, and reads rows through `row` and the
queries below. One upload (`upload.Uploader.send`) changes nothing: `settle.Settler` settles
its outcome.

Invariants (tests/t2_ledger.py, and t3's check after every test):
- A row is in the journal (fsync'ed) before its path is handed to the write-back queue by
  close, fsync or setattr (a close's commit is fsync'ed by `wait_durable`, which the close
  awaits; the last close, which queues the upload, comes after it); it leaves the journal
  only in the transaction that records the uploaded object, before its data file moves into
  the blob cache.
- Every change of a row's bytes or attributes bumps its generation (`_changed`); an upload
  settles a row as clean only if its generation did not move while it ran, and never while
  the row has writers (the last close does, with what the upload parked on the row).
- A key has at most one pending change: a row takes over a pending delete of its key
  (`DirtyFile.claimed`), and a removal turns a row into a delete in one transaction.
- At start, a row whose bytes were journaled with it in an earlier boot gets its data file
  written again from them; rows whose data file is gone are dropped with an error, and
  staging files no row names (never closed, so never acknowledged) are removed.
- A row's journaled bytes are those of its last close: replaced at the next close or by a
  truncation by name (`truncated` with no writer), kept by every other persist.
"""

from __future__ import annotations

import contextlib
import logging
import os
from typing import TYPE_CHECKING

import trio

from zonefs.cache.journal import KEEP, DirtyRow
from zonefs.cache.streamhash import StreamHasher
from zonefs.common import keys
from zonefs.common.errors import Refused, RemoteError, StoreFailing, ZonefsError
from zonefs.pending.backpressure import Backpressure
from zonefs.pending.deletes import PendingDeletes
from zonefs.pending.durable import GroupCommit, bytes_to_journal, restore_journaled_bytes
from zonefs.pending.leftovers import abort_leftover_uploads
from zonefs.pending.outcome import KeptAsConflict
from zonefs.pending.rows import (
    ANY_OBJECT,
    MOVED_DELAY,
    STREAMED_DELAY,
    DirtyFile,
    Kind,
    PendingRows,
    may_exist,
    streamed,
)
from zonefs.pending.settle import Settler
from zonefs.pending.upload import Uploader, UploadJob
from zonefs.pending.writeback import WriteBack

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable, ItemsView, Iterator

    from zonefs.cache.blobs import BlobStore
    from zonefs.cache.dircache import DirCache
    from zonefs.cache.journal import Journal
    from zonefs.common.config import MountOptions
    from zonefs.common.keys import PosixMeta
    from zonefs.pending.deletes import PendingDelete
    from zonefs.pending.writeback import Progress, Refusal
    from zonefs.remote.base import Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)

#: Longest time a lazy journal commit (an attribute change) waits for its fsync.
JOURNAL_SYNC_INTERVAL = 1.0
#: The write-back delay while other mounts of the zone are known to be watching it (the change
#: log hears their heartbeats), when `writeback_delay` is longer: they see a closed file soon.
SHARED_WRITEBACK_DELAY = 0.5


class Ledger:
    """Pending rows, pending deletes and the write-back queue; see the module docstring."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore, cache: DirCache,
                 opts: MountOptions, capabilities: Capabilities, *,
                 forget_opened: Callable[[str], None]) -> None:
        self.remote, self.journal, self.blobs, self.cache = remote, journal, blobs, cache
        self.writeback = WriteBack(self._apply, delay=opts.writeback_delay)
        self._writeback_delay = opts.writeback_delay
        self.rows = PendingRows()
        self.uploader = Uploader(remote, journal, blobs, capabilities,
                                 kachery_mirror=opts.kachery_mirror,
                                 is_pending=self.rows.__contains__)
        self.backpressure = Backpressure(self.rows, self.writeback, blobs, opts.cache_size)
        self.deletes = PendingDeletes(remote, journal, cache, schedule=self.writeback.schedule,
                                      progress=self.note_progress,
                                      still_needed=self.rows.copies_from)
        for row in list(journal.dirty_rows()):
            if row.data is not None:
                restore_journaled_bytes(journal, row, blobs.abspath(row.data))
            if row.data is not None and not os.path.exists(blobs.abspath(row.data)):
                log.error("%r: its pending bytes are gone from the cache dir; dropped", row.path)
                journal.drop_dirty(row.path)
                continue
            if row.data is not None:
                # Writes after the last close may have reached the data file before a crash:
                # the file, which is what gets uploaded, says how long the file is.
                row.size = os.stat(blobs.abspath(row.data)).st_size
            self.rows[row.path] = DirtyFile(row, persisted=True)
        self.settler = Settler(self, journal, blobs, cache, forget_opened)
        self.group_commit = GroupCommit(journal)
        self._remove_orphans()

    # -- queries (the core reads; it never changes what these return) ----------------------

    def row(self, path: str) -> DirtyFile | None:
        """The pending row of `path`, if any."""
        return self.rows.get(path)

    def items(self) -> ItemsView[str, DirtyFile]:
        """Every pending row by path (read only)."""
        return self.rows.items()

    def has_below(self, path: str) -> bool:
        """Whether a pending row lies strictly below the directory `path`."""
        return self.rows.has_below(path)

    def is_uploading(self, df: DirtyFile) -> bool:
        return df.queue_key in self.writeback.in_flight_paths()

    def copies_reading(self, key: str) -> list[str]:
        return self.rows.copies_reading(key)

    def copies_reading_under(self, prefix: str) -> list[str]:
        return self.rows.copies_reading_under(prefix)

    def copies_from(self, key: str) -> bool:
        """Whether a pending copy row still reads the object `key`."""
        return self.rows.copies_from(key)

    def has_deletes(self) -> bool:
        return bool(self.deletes)

    def has_delete(self, key: str) -> bool:
        return key in self.deletes

    def delete_of(self, key: str) -> PendingDelete | None:
        return self.deletes.get(key)

    def hides(self, path: str, is_dir: bool) -> bool:
        """Whether a pending delete hides the object (or marker) of `path`."""
        return self.deletes.hides(path, is_dir)

    def deletes_below(self, path: str) -> list[str]:
        return list(self.deletes.below(path))

    def delete_keys(self) -> list[str]:
        return list(self.deletes.by_key)

    def is_queued(self, key: str) -> bool:
        """Whether the write-back queue holds a change of `key` (waiting or in flight)."""
        return self.writeback.is_pending(key)

    def refused(self) -> list[Refusal]:
        return self.writeback.refused()

    def writeback_stats(self) -> dict[str, int | str | None]:
        return self.writeback.stats_dict()

    @property
    def uploaded_bytes(self) -> int:
        return self.uploader.uploaded_bytes

    @property
    def conflicts(self) -> int:
        """Conflict copies made (another writer replaced a file this mount changed)."""
        return self.uploader.conflicts

    def hash_headers(self, key: str, etag: str | None) -> dict[str, str]:
        """The content-ID headers of `key` at `etag`, when known, to keep them on a copy."""
        return self.uploader.hash_headers(key, etag)

    @property
    def count(self) -> int:
        """Changes not yet in the bucket: pending rows and deletes."""
        return len(self.rows) + len(self.deletes)

    def dirty_bytes(self) -> int:
        """Bytes of local data waiting for upload."""
        return self.backpressure.dirty_bytes()

    def open_for_write(self) -> int:
        """How many write handles are open: an unmount now would cut their files short."""
        return sum(df.writers for df in self.rows.values())

    # -- the daemon's side ---------------------------------------------------------------------

    async def keep_journal_synced(self) -> None:
        """Run by the daemon: fsync lazy journal commits (attribute changes, the end of
        uploads) every JOURNAL_SYNC_INTERVAL, so that a power loss undoes at most that much."""
        while True:
            await trio.sleep(JOURNAL_SYNC_INTERVAL)
            self.sync_journal()

    def sync_journal(self) -> None:
        self.journal.sync()

    async def wait_durable(self) -> None:
        """Return once every journal commit made before this call is fsync'ed (group
        commit: see `durable.GroupCommit`)."""
        await self.group_commit.wait()

    async def abort_leftover_uploads(self) -> int:
        """Abort the multipart uploads a process that died left in the bucket (at mount,
        before `requeue`): see `leftovers.abort_leftover_uploads`."""
        return await abort_leftover_uploads(self.remote, self.journal)

    async def run_writeback(self, *,
                            task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the write-back queue (the daemon starts it in its nursery)."""
        await self.writeback.run(task_status=task_status)

    async def drain(self, progress: Progress | None = None) -> int:
        """Apply every queued change now and wait (`zonefs sync`, unmount); see
        `WriteBack.drain`."""
        return await self.writeback.drain(progress)

    def stop_uploads(self) -> None:
        """No new upload; one in flight is cut off (and retried at the next mount)."""
        self.writeback.close()

    def failing(self) -> list[str]:
        """The queued changes whose last attempt failed, with why."""
        return self.writeback.failing()

    def queued_count(self) -> int:
        """Changes in the write-back queue (waiting or in flight)."""
        return len(self.writeback.pending_paths())

    def requeue(self) -> int:
        """Hand every journaled change to the write-back queue (at mount)."""
        for df in self.rows.values():
            self.writeback.schedule(df.queue_key)
        return len(self.rows) + self.deletes.requeue()

    # -- backpressure ----------------------------------------------------------------------

    async def wait_for_room(self, growth: int) -> None:
        """A write is about to grow the dirty data by `growth` bytes: see `Backpressure`."""
        await self.backpressure.wait_for_room(growth)

    def note_progress(self) -> None:
        self.backpressure.note_progress()

    def released_bytes(self, size: int) -> None:
        self.backpressure.released(size)

    # -- applying changes now ------------------------------------------------------------------

    async def flush(self, queue_keys: list[str]) -> None:
        """Apply the pending changes of `queue_keys` now and wait for them; raises the first
        failure. What they wait for is applied first: the deletes below a directory's, and
        the pending copies that read a key (and those that read them) before its own change.
        Each round starts every change nothing holds back, deepest first."""
        todo = set(queue_keys)
        for key in queue_keys:
            if key.endswith("/") and key in self.deletes:
                todo.update(self.deletes.below(key[:-1]))
        grown = list(todo)
        while grown:  # the copies reading what is to be flushed, and those reading them
            grown = [p for key in grown for p in self.rows.copies_reading(key)
                     if p not in todo]
            todo.update(grown)
        while todo:
            ready = [k for k in todo if not self.rows.copies_from(k, ignore=k)
                     and not (k.endswith("/") and self.deletes.any_below(k)
                              and any(d in todo and d != k
                                      for d in self.deletes.below(k[:-1])))]
            if not ready:
                raise RemoteError(f"pending changes wait for each other: {sorted(todo)[:3]}")
            ready.sort(key=lambda k: -k.rstrip("/").count("/"))
            for key in ready:
                # Also a change whose queue entry is gone (a directory's delete that waited
                # for those below it): flushing must apply it, not find it "not queued".
                if self.writeback.is_pending(key) or self._has_change(key):
                    self.writeback.schedule(key, delay=0)
            for key in ready:
                await self.writeback.flush(key)
            todo.difference_update(ready)

    async def upload_now(self, key: str) -> None:
        """Apply the queued change of `key` now, if any, and wait for it (fsync, the history
        commands)."""
        if self.writeback.is_pending(key):
            self.writeback.schedule(key, delay=0)
            await self.writeback.flush(key)

    def _has_change(self, key: str) -> bool:
        """Whether the zone key `key` has a pending change (a row to put, or a delete)."""
        if key in self.deletes:
            return True
        df = self.rows.get(key[:-1] if key.endswith("/") else key)
        return df is not None and df.queue_key == key

    def schedule_key(self, key: str) -> None:
        """Queue the change of the zone key `key` (journaled already)."""
        self.writeback.schedule(key)

    def others_watching(self, watching: bool) -> None:
        """Whether other mounts of the zone are watching it (the change log's word): while
        they are, changes upload at most SHARED_WRITEBACK_DELAY after their last close."""
        self.writeback.delay = (min(self._writeback_delay, SHARED_WRITEBACK_DELAY) if watching
                                else self._writeback_delay)

    def schedule(self, df: DirtyFile, *, delay: float | None = None,
                 keep_due: bool = False) -> None:
        """Queue the upload of a row (journaled already); `keep_due`: see WriteBack.schedule."""
        self.writeback.schedule(df.queue_key, delay=delay, keep_due=keep_due)

    async def cancel(self, key: str) -> None:
        """Stop a queued or running change of `key` (it stays pending) before the caller
        changes what it would send."""
        await self.writeback.cancel(key)

    # -- named operations on rows ------------------------------------------------------------

    def _changed(self, df: DirtyFile) -> None:
        """Every change of a row's bytes or attributes: an upload running now is stale."""
        df.row.generation += 1

    async def claim(self, key: str) -> tuple[bool, str | None]:
        """Take over a pending delete of `key`, for a write of that key about to be made:
        (True, the ETag the deleted object had, None when unknown), or (False, None) when no
        delete was pending."""
        if key not in self.deletes:
            return False, None
        await self.writeback.cancel(key)
        d = self.deletes.take(key)
        return (False, None) if d is None else (True, d.etag)

    async def created(self, path: str, data: str, meta: PosixMeta,
                      existing_etag: str | None, exists: bool) -> DirtyFile:
        """create(): a new empty file at `path` (its staging file `data`, relative), open
        for writing once, replacing what the path held (`exists`, with `existing_etag`).
        Journaled at close, unless it replaces a journaled row, which must not outlive its
        bytes: then the empty file takes over at once."""
        self.writeback.note_create()
        await self.writeback.cancel(path)
        old = self.rows.pop(path, None)
        if old is not None:
            self.drop(path, old)
        # A file just removed here is still in the store until its delete runs: the new one
        # replaces that object instead (its upload expects it), and the delete is dropped.
        claimed, claimed_etag = await self.claim(path)
        if exists:
            base = existing_etag
        elif claimed:
            base = claimed_etag or ANY_OBJECT
        else:
            base = None
        if base is None and old is not None and may_exist(old, None)[0]:
            base = ANY_OBJECT  # the file it replaces may have reached the store
        row = DirtyRow(path, data, 0, meta, base, 1)
        df = self.rows[path] = DirtyFile(row, Kind.BYTES, writers=1,
                                         absent=not exists and not claimed,
                                         claimed=path if claimed else None,
                                         hasher=StreamHasher(self.blobs.abspath(data)))
        if old is not None and old.persisted:
            self.persist(df)
        return df

    async def created_entry(self, row: DirtyRow, *, may_exist: bool = False) -> DirtyFile:
        """mkdir or symlink: a new pending path acknowledged at once, journaled (taking over
        a pending delete of its key) and queued. `may_exist`: an object of this create may be
        in the store already (a conditional create whose answer was lost)."""
        df = DirtyFile(row)
        key = df.queue_key
        claimed, etag = await self.claim(key)
        if claimed:
            df.claimed, row.base_etag = key, etag or ANY_OBJECT
        else:
            df.absent = not may_exist
        self.rows[row.path] = df
        self.persist(df)
        self.schedule(df)
        return df

    def truncated(self, df: DirtyFile, size: int) -> None:
        """The row's local file was cut (or grown) to `size` (truncate, O_TRUNC, ftruncate).
        With no writer (a truncation by name) no close follows: the bytes journaled with the
        row become the truncated file's (journaled within JOURNAL_SYNC_INTERVAL)."""
        df.row.size = size
        df.kind = Kind.BYTES
        df.row.meta = df.row.meta.modified_now()  # POSIX, for O_TRUNC too
        if df.writers == 0 and df.persisted and df.row.data is not None:
            self.persist(df, durable=False, inline=bytes_to_journal(
                self.blobs.abspath(df.row.data), df.row.size))
        if df.hasher is not None:
            df.hasher.abandon()
        # Emptied, it may be written again from its start (`cp` over a file, O_TRUNC).
        df.hasher = (StreamHasher(self.blobs.abspath(df.row.data))
                     if size == 0 and df.row.data is not None else None)
        self._changed(df)

    def took_local_copy(self, path: str, data: str, size: int, meta: PosixMeta,
                        base_etag: str | None, *, truncated: bool) -> DirtyFile:
        """`path` got a local file `data` (relative) for writing: a copy of its object at
        `base_etag` (`size` bytes), or an empty one when `truncated`. A pending metadata
        change or copy the path had becomes this row; a copy's bytes are new under this name
        (uploaded even if unwritten)."""
        df = self.rows.get(path)
        if truncated:  # O_TRUNC: its data changed, so mtime is now, even if it was empty
            meta = meta.modified_now()
        row = DirtyRow(path, data, size, meta, base_etag, (df.row.generation + 1) if df else 1)
        hasher = StreamHasher(self.blobs.abspath(data)) if truncated or size == 0 else None
        if df is None:
            df = self.rows[path] = DirtyFile(row, Kind.BYTES if truncated else Kind.UNCHANGED,
                                             hasher=hasher)
            return df
        source = df.row.source if df.is_copy else None
        df.row = row  # was a metadata-only change, or a copy still to be made
        df.hasher = hasher
        df.kind = Kind.BYTES if truncated or source is not None else Kind.METADATA
        if source is not None:
            self.source_released(df, source)
        return df

    def opened_for_write(self, df: DirtyFile) -> None:
        df.writers += 1

    def wrote(self, df: DirtyFile, offset: int, length: int) -> None:
        """`length` bytes were written at `offset` of the row's local file (told in the
        order of the writes: the file's digest is taken as it is written, see
        `StreamHasher`)."""
        row = df.row
        df.kind = Kind.BYTES
        if df.hasher is not None:
            df.hasher.wrote(offset, length)
        row.size = max(row.size, offset + length)
        row.meta = row.meta.modified_now()
        self._changed(df)

    def metadata_changed(self, path: str, meta: PosixMeta, *, size: int,
                         etag: str | None, keep_due: bool = False) -> DirtyFile:
        """chmod, chown or utimens of `path` (not its size): its row (a new metadata-only one
        for a clean file of `size` at `etag`) takes the attributes, journaled within
        JOURNAL_SYNC_INTERVAL and queued unless open for writing (`keep_due`: see
        WriteBack.schedule)."""
        df = self.rows.get(path)
        if df is None:
            df = self.rows[path] = DirtyFile(DirtyRow(path, None, size, meta, etag, 0))
        elif df.kind is Kind.UNCHANGED:
            df.kind = Kind.METADATA
        self.set_meta(df, meta, keep_due=keep_due)
        return df

    def set_meta(self, df: DirtyFile, meta: PosixMeta, *, keep_due: bool = False) -> None:
        """The attributes of a row (also one whose name is gone, open only) become `meta`;
        journaled within JOURNAL_SYNC_INTERVAL and queued unless open for writing."""
        df.row.meta = meta
        self._changed(df)
        # Not fsync'ed at once: `tar` sets the times of each file it has just closed (one
        # fsync per file, not two).
        self.persist(df, durable=False)
        if df.writers == 0 and self.rows.get(df.row.path) is df:
            self.schedule(df, keep_due=keep_due)

    def closed(self, df: DirtyFile, *, wrote: bool, inline: bytes | None = None,
               durable: bool = True) -> bool:
        """close() of a writer: journal the row (fsync'ed), with the file's bytes `inline`
        (a file up to INLINE_MAX; else the caller fsync'ed the data file when it `wrote`).
        With `durable` False the commit is not fsync'ed here: the caller awaits
        `wait_durable` before it acknowledges the close. False when there was nothing to
        journal."""
        if df.kind is not Kind.BYTES or not (wrote or not df.persisted):
            return False
        self.persist(df, inline=inline, durable=durable)
        return True

    def last_close(self, df: DirtyFile) -> None:
        """A writer let go of `df`; at the last one the row is settled: an unwritten copy
        goes (a metadata change stays, as a copy in place), an upload that landed while it
        was open is its end, anything else is queued."""
        df.writers -= 1
        path = df.row.path
        if df.writers > 0 or self.rows.get(path) is not df:
            return
        if df.kind in (Kind.UNCHANGED, Kind.METADATA):
            self._revert_unchanged(path, df)
        elif df.uploaded_generation == df.row.generation and df.uploaded is not None:
            self.settler.finish_clean(path, df, *df.uploaded)
        elif streamed(df):
            self.writeback.schedule(path, at_most=STREAMED_DELAY)
        else:
            self.writeback.schedule(path)

    def _revert_unchanged(self, path: str, df: DirtyFile) -> None:
        """A file opened for write but never written: drop its local copy; only a metadata
        change (touch, chmod through the handle) is left to upload, as a copy in place."""
        self.discard_data(df)
        if df.kind is Kind.METADATA:
            df.row.data = None
            self.persist(df, durable=False)
            self.writeback.schedule(path)
        else:
            del self.rows[path]
            if df.persisted:
                self.journal.drop_dirty(path)

    async def removed(self, path: str, *, is_dir: bool, etag: str | None) -> None:
        """unlink or rmdir of `path` (a directory or not; `etag`: its object's): its pending
        row goes, and a delete of its key is journaled unless the store cannot hold one."""
        key = keys.dir_key(path) if is_dir else path
        await self.writeback.cancel(key)
        df = self.rows.pop(path, None)
        maybe, etag = may_exist(df, etag)
        if is_dir and self.deletes.any_below(key):
            # Keys below it, whose deletes are pending, keep the directory in the store's
            # listings until they are applied: its own delete hides it meanwhile.
            maybe = True
        if maybe:
            self.deletes.add(key, etag, drop_dirty=path if df is not None and df.persisted
                             else None)
        elif df is not None and df.persisted:
            self.journal.drop_dirty(path)
        if df is not None:
            self.discard_data(df)
            self.source_released(df)
            self.note_progress()

    def delete_later(self, key: str, etag: str | None) -> None:
        """A delete of `key` that waits (for a copy reading it, or for those below it)."""
        if key not in self.deletes:
            self.deletes.add(key, etag)

    # -- rows, journal and data files --------------------------------------------------------

    def _remove_orphans(self) -> None:
        """Staging files no journal row names were never closed: nothing acknowledged them."""
        used = {df.row.data for df in self.rows.values() if df.row.data}
        top = os.path.join(self.blobs.root, "staging")
        for entry in os.scandir(top):
            if self.blobs.relpath(entry.path) not in used:
                os.unlink(entry.path)

    def persist(self, df: DirtyFile, *, durable: bool = True, inline: bytes | None = KEEP) -> None:
        """Write the row to the journal if it is still the path's current one; a pending
        delete it took over leaves the journal in the same transaction. Fsync'ed, unless
        `durable` is False (attribute changes): then at the next `sync_journal`, within
        JOURNAL_SYNC_INTERVAL. `inline`: the file's bytes to journal with it (KEEP: those
        its last close journaled)."""
        if self.rows.get(df.row.path) is df:
            self.journal.put_dirty(df.row, replaces_delete=df.claimed, durable=durable,
                                   inline=inline)
            df.persisted = True
            df.claimed = None

    def discard_data(self, df: DirtyFile) -> None:
        """Delete the row's local data file, if it has one (and stop hashing it)."""
        if df.hasher is not None:
            df.hasher.abandon()
        if df.row.data is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blobs.abspath(df.row.data))

    def drop(self, path: str, df: DirtyFile) -> None:
        """Forget a row (deleted or replaced, out of `rows` already): its journal row and its
        data."""
        if df.persisted:
            self.journal.drop_dirty(path)
        elif df.claimed is not None:
            # Its delete was taken over but its row never journaled: the delete still stands.
            d = df.claimed
            self.deletes.remember(d, df.row.base_etag)
        self.discard_data(df)
        self.source_released(df)
        self.note_progress()

    def source_released(self, df: DirtyFile, source: str | None = None) -> None:
        """`df` no longer copies from its source (`source`, else its row's: copied, removed,
        written to): what waited for that copy there (a delete, an upload) may go."""
        source = source if source is not None else df.row.source
        if source is not None and self._has_change(source):
            # The delete a rename left there follows its copy at once (see MOVED_DELAY).
            self.writeback.schedule(source,
                                    at_most=MOVED_DELAY if source in self.deletes else None)

    # -- the write-back queue's callable, and settling what an upload did ---------------------

    async def _apply(self, key: str, cancel: threading.Event) -> None:
        """Write-back callable: bring the zone key `key` up to date in the store. Not while a
        pending copy (a renamed file) still reads the object there: queued again when that
        copy is made (`source_released`)."""
        if key not in self.deletes and self.rows.copies_from(key, ignore=key):
            return
        try:
            if key in self.deletes:
                await self.deletes.apply(key, cancel)
            else:
                await self._upload(key, cancel)
        except StoreFailing as exc:
            if exc.internal:
                # Tells the write-back queue whether this request alone fails (SeaweedFS
                # answers some names with a 500 every time) or the store as a whole.
                exc.others_answered = await self._store_answers()
            raise

    async def _store_answers(self) -> bool:
        """Whether the store answers a cheap request (HeadBucket) now."""
        with trio.move_on_after(10):
            try:
                await self.remote.check_answers()
            except ZonefsError:
                return False
            return True
        return False

    async def _upload(self, key: str, cancel: threading.Event) -> None:
        """Upload the row queued as `key` as it is now, and settle what came of it."""
        path = key[:-1] if key.endswith("/") else key
        df = self.rows.get(path)
        if df is None or df.queue_key != key:
            return
        if df.writers and df.uploaded_generation == df.row.generation:
            return
        if df.kind is Kind.UNCHANGED:
            return  # an unchanged copy, still open: nothing to upload
        job = UploadJob.of(df, self.blobs.abspath)
        # From here on an object of ours may land under this name (unless the store refuses
        # the request: a refusal created nothing, so removing the file needs no delete).
        was_absent, df.absent = df.absent, False
        try:
            outcome = await self.uploader.send(job, cancel)
        except Refused:
            df.absent = was_absent
            raise
        current = None
        if isinstance(outcome, KeptAsConflict) and (self.rows.get(path) is not df or df.writers):
            # The file stays pending: it starts over from what the bucket holds now.
            current = await self.uploader.current_etag(path)
        self.settler.settle(path, df, job, outcome, current_etag=current)

    def below(self, path: str) -> Iterator[tuple[str, DirtyFile]]:
        """The pending rows at or below `path` (a snapshot)."""
        return iter([(p, df) for p, df in self.rows.items() if keys.is_within(p, path)])

