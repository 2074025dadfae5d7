"""Paths whose local state is not yet in the bucket, and the uploads that put it there.

`PendingFiles` owns the in-memory mirror of the journal's dirty rows (`dirty`: files, symlinks
and directory markers to put), their data files under `staging/`, the pending deletes
(`deletes`, see `deletes`), and the write-back queue, whose callable `_apply` uploads a
file, puts a directory marker or applies a delete, by the zone key it is queued under. `vfs`
decides when a path becomes dirty or deleted; this module decides how that reaches the journal
and the bucket.

Invariants:
- A dirty row is in the journal (fsync'ed) before its path is handed to the write-back queue
  by close, fsync or setattr; it leaves the journal only in the transaction that records the
  uploaded object, before its data file moves into the blob cache.
- An upload marks a file clean only if nothing changed it while the upload ran (generation),
  and never while it has writers (that happens at their last close).
- At start, rows whose data file is gone are dropped with an error, and staging files no row
  names (never closed, so never acknowledged) are removed.
- A key has at most one pending change: a row takes over a pending delete of its key
  (`DirtyFile.claimed`), and a removal turns a row into a delete in one transaction.
- Every multipart upload (or copy) the remote creates is journaled before it is created and
  before its first part is sent (`leftovers.MultipartJournal`, installed as the remote's
  `multipart_log`); at mount, before anything is uploaded, `leftovers` aborts those a dead
  process left.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import logging
import os
import stat as st
import threading
import time
from typing import TYPE_CHECKING

import trio

from zonefs.cache.blobs import BlobStore, Digest, hash_file
from zonefs.cache.dircache import DirCache, Entry
from zonefs.cache.journal import DirtyRow, Journal, ObjectRow
from zonefs.common import keys
from zonefs.common.errors import (
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
    StoreFailing,
    ZonefsError,
)
from zonefs.common.keys import SHA1_KEY, SHA256_KEY, PosixMeta
from zonefs.pending.deletes import PendingDeletes
from zonefs.pending.leftovers import MultipartJournal, abort_leftover_uploads
from zonefs.pending.rows import ANY_OBJECT, DirtyFile, PendingRows, has_new_bytes
from zonefs.pending.writeback import WriteBack
from zonefs.remote.probe import Capabilities

if TYPE_CHECKING:
    from collections.abc import Callable

    from zonefs.common.config import MountOptions
    from zonefs.remote.base import ObjectInfo, Remote

log = logging.getLogger(__name__)

#: Longest time a lazy journal commit (an attribute change) waits for its fsync.
JOURNAL_SYNC_INTERVAL = 1.0


class _Conflict(Exception):
    """The object changed in the bucket since the local edit began."""


class PendingFiles:
    """Dirty files by path, their journal rows and data files, and their uploads."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore, cache: DirCache,
                 forget_opened: Callable[[str], None], opts: MountOptions) -> None:
        self.remote, self.journal, self.blobs, self.cache = remote, journal, blobs, cache
        # Tells the core's object reader that a name's object changed (its open pins go).
        self._forget_opened = forget_opened
        self.writeback = WriteBack(self._apply, delay=opts.writeback_delay)
        self.dirty = PendingRows()
        self.uploaded_bytes = 0
        self.budget = opts.cache_size  # dirty bytes beyond which writes wait for uploads
        self.kachery_mirror = opts.kachery_mirror
        # The store probe's answers, set by the daemon before the mount answers; the defaults
        # send no checksums.
        self.capabilities = Capabilities()
        self._mirroring: set[str] = set()  # mirror keys being copied right now
        self.conflicts = 0  # conflict copies made (see _keep_conflict)
        # SHA-256 of the last uploads started per path: an object holding one of them is
        # this mount's own (see _own_landed_upload), not another writer's.
        self._attempted: dict[str, collections.deque[str]] = {
            path: collections.deque(shas, maxlen=8) for path, shas in journal.attempts().items()}
        self._progress = trio.Event()  # set whenever a dirty file leaves (uploaded, dropped)
        self._throttled = False
        self._estimate = 0
        remote.multipart_log = MultipartJournal(journal)
        self.deletes = PendingDeletes(remote, journal, cache, schedule=self.writeback.schedule,
                                      progress=self._note_progress,
                                      still_needed=self.dirty.copies_from)
        for row in journal.dirty_rows():
            if row.data is not None and not os.path.exists(blobs.abspath(row.data)):
                log.error("%r: its pending bytes are gone from the cache dir; dropped", row.path)
                journal.drop_dirty(row.path)
                continue
            if row.data is not None:
                # Writes after the last close may have reached the data file before a crash:
                # the file, which is what gets uploaded, says how long the file is.
                row.size = os.stat(blobs.abspath(row.data)).st_size
            self.dirty[row.path] = DirtyFile(row, persisted=True)
        self._remove_orphans()

    async def keep_journal_synced(self) -> None:
        """Run by the daemon: fsync lazy journal commits (attribute changes, the end of
        uploads) every JOURNAL_SYNC_INTERVAL, so that a power loss undoes at most that much."""
        while True:
            await trio.sleep(JOURNAL_SYNC_INTERVAL)
            self.sync_journal()

    def sync_journal(self) -> None:
        self.journal.sync()

    def dirty_bytes(self) -> int:
        """Bytes of local data waiting for upload."""
        return sum(df.row.size for df in self.dirty.values() if has_new_bytes(df))

    async def wait_for_room(self, growth: int) -> None:
        """Backpressure: while dirty data would pass the budget, upload closed files now and
        wait for them, instead of failing the write.

        Files still open for writing cannot be uploaded, nor can files the store refused
        until they change; when they alone hold the budget the write goes on (the budget is
        then exceeded rather than deadlocked).
        """
        # An estimate that only grows keeps the common case O(1); the exact sum is taken only
        # when the estimate passes the budget.
        self._estimate += growth
        self.blobs.reserved = self._estimate
        if self._estimate <= self.budget:
            self.blobs.evict()
            return
        while (exact := self.dirty_bytes() + growth) > self.budget:
            closed = [p for p, df in self.dirty.items() if not df.writers and has_new_bytes(df)
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
        self._estimate = self.blobs.reserved = exact
        self.blobs.evict()

    def _note_progress(self) -> None:
        self._progress.set()
        self._progress = trio.Event()

    async def abort_leftover_uploads(self) -> int:
        """Abort the multipart uploads a process that died left in the bucket (at mount,
        before `requeue`): see `leftovers.abort_leftover_uploads`."""
        return await abort_leftover_uploads(self.remote, self.journal)

    def requeue(self) -> int:
        """Hand every journaled change to the write-back queue (at mount)."""
        for df in self.dirty.values():
            self.writeback.schedule(df.queue_key)
        return len(self.dirty) + self.deletes.requeue()

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
            grown = [p for key in grown for p in self.dirty.copies_reading(key)
                     if p not in todo]
            todo.update(grown)
        while todo:
            ready = [k for k in todo if not self.dirty.copies_from(k, ignore=k)
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

    def _has_change(self, key: str) -> bool:
        """Whether the zone key `key` has a pending change (a row to put, or a delete)."""
        if key in self.deletes:
            return True
        df = self.dirty.get(key[:-1] if key.endswith("/") else key)
        return df is not None and df.queue_key == key

    def schedule(self, df: DirtyFile, *, delay: float | None = None) -> None:
        """Queue the upload of a dirty row (journaled by the caller)."""
        self.writeback.schedule(df.queue_key, delay=delay)

    @property
    def count(self) -> int:
        """Changes not yet in the bucket: dirty rows and deletes."""
        return len(self.dirty) + len(self.deletes)

    async def _apply(self, key: str, cancel: threading.Event) -> None:
        """Write-back callable: bring the zone key `key` up to date in the store. Not while a
        pending copy (a renamed file) still reads the object there: queued again when that
        copy is made (`source_released`)."""
        if key not in self.deletes and self.dirty.copies_from(key, ignore=key):
            return
        try:
            if key in self.deletes:
                await self.deletes.apply(key, cancel)
            elif key.endswith("/"):
                await self._put_dir(key[:-1])
            else:
                await self.upload(key, cancel)
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

    # -- new rows and removals ---------------------------------------------------------------

    async def claim(self, key: str) -> tuple[bool, str | None]:
        """Take over a pending delete of `key`, for a write of that key about to be made:
        (True, the ETag the deleted object had, None when unknown), or (False, None) when no
        delete was pending."""
        if key not in self.deletes:
            return False, None
        await self.writeback.cancel(key)
        d = self.deletes.take(key)
        return (False, None) if d is None else (True, d.etag)

    async def add_row(self, row: DirtyRow) -> DirtyFile:
        """A new pending path that is acknowledged at once (mkdir, symlink): journaled
        (taking over a pending delete of its key) and queued."""
        df = DirtyFile(row)
        key = df.queue_key
        claimed, etag = await self.claim(key)
        if claimed:
            df.claimed, row.base_etag = key, etag or ANY_OBJECT
        else:
            df.absent = True
        self.dirty[row.path] = df
        self.persist(df)
        self.schedule(df)
        return df

    def presence(self, df: DirtyFile | None, etag: str | None) -> tuple[bool, str | None]:
        """Whether the store may hold an object under the name of `df` (a pending row, or
        None for a clean path whose object has `etag`), and its ETag when known."""
        if df is None:
            return True, etag
        if df.absent and df.claimed is None and df.row.base_etag is None:
            return False, None
        return True, df.row.base_etag

    async def remove(self, path: str, *, is_dir: bool, etag: str | None) -> None:
        """unlink or rmdir of `path` (a directory or not; `etag`: its object's): its pending
        row goes, and a delete of its key is journaled unless the store cannot hold one."""
        key = keys.dir_key(path) if is_dir else path
        await self.writeback.cancel(key)
        df = self.dirty.pop(path, None)
        maybe, etag = self.presence(df, etag)
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
            self._note_progress()

    def _remove_orphans(self) -> None:
        """Staging files no journal row names were never closed: nothing acknowledged them."""
        used = {df.row.data for df in self.dirty.values() if df.row.data}
        top = os.path.join(self.blobs.root, "staging")
        for entry in os.scandir(top):
            if self.blobs.relpath(entry.path) not in used:
                os.unlink(entry.path)

    def persist(self, df: DirtyFile, *, durable: bool = True) -> None:
        """Write the dirty row to the journal if it is still the path's current one; a pending
        delete it took over leaves the journal in the same transaction. Fsync'ed, unless
        `durable` is False (attribute changes): then at the next `sync_journal`, within
        JOURNAL_SYNC_INTERVAL."""
        if self.dirty.get(df.row.path) is df:
            self.journal.put_dirty(df.row, replaces_delete=df.claimed, durable=durable)
            df.persisted = True
            df.claimed = None

    def discard_data(self, df: DirtyFile) -> None:
        """Delete the file's local data file, if it has one."""
        if df.row.data is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.blobs.abspath(df.row.data))

    def drop(self, path: str, df: DirtyFile) -> None:
        """Forget a dirty file (deleted or replaced): its journal row and its data."""
        if df.persisted:
            self.journal.drop_dirty(path)
        elif df.claimed is not None:
            # Its delete was taken over but its row never journaled: the delete still stands.
            d = df.claimed
            self.deletes.remember(d, df.row.base_etag)
        self.discard_data(df)
        self.source_released(df)
        self._note_progress()

    def source_released(self, df: DirtyFile, source: str | None = None) -> None:
        """`df` no longer copies from its source (`source`, else its row's: copied, removed,
        written to): what waited for that copy there (a delete, an upload) may go."""
        source = source if source is not None else df.row.source
        if source is not None and self._has_change(source):
            self.writeback.schedule(source)

    def hash_headers(self, key: str, etag: str | None) -> dict[str, str]:
        """The content-ID headers of `key` at `etag`, when known, to keep them on a copy."""
        memo = self.journal.get_object(key, etag)
        out = {}
        if memo is not None and memo.sha256:
            out[SHA256_KEY] = memo.sha256
        if memo is not None and memo.sha1:
            out[SHA1_KEY] = memo.sha1
        return out

    def revert_unchanged(self, path: str, df: DirtyFile) -> None:
        """A file opened for write but never written: drop its local copy; only a metadata
        change (touch, chmod through the handle) is left to upload, as a copy in place."""
        self.discard_data(df)
        if df.meta_changed:
            df.row.data = None
            self.persist(df, durable=False)
            self.writeback.schedule(path)
        else:
            del self.dirty[path]
            if df.persisted:
                self.journal.drop_dirty(path)

    # -- upload -----------------------------------------------------------------------------------

    async def upload(self, path: str, cancel: threading.Event) -> None:
        """Write-back callable: upload the dirty file at `path` as it is now."""
        df = self.dirty.get(path)
        if df is None or df.is_dir or df.writers and df.uploaded_generation == df.row.generation:
            return
        row = df.row
        generation = row.generation
        digest: Digest | None = None
        if row.data is not None and not df.data_changed and not df.meta_changed:
            return  # an unchanged copy, still open: nothing to upload
        # From here on an object of ours may land under this name (unless the store refuses
        # the request: a refusal created nothing).
        was_absent, df.absent = df.absent, False
        if df.is_copy:
            # A renamed clean file: a server-side copy from its old name, with its attributes
            # and content IDs (the old name's delete waits for this).
            assert row.source is not None
            memo = self.journal.get_object(row.source)
            md = keys.encode_meta(row.meta, **self.hash_headers(
                row.source, memo.etag if memo else None))
            info = await self.remote.copy(row.source, path, md)
        elif row.data is None or not df.data_changed:
            md = keys.encode_meta(row.meta, **self.hash_headers(path, row.base_etag))
            info = await self.remote.copy(path, path, md)
        else:
            src = self.blobs.abspath(row.data)
            digest = await trio.to_thread.run_sync(hash_file, src)
            md = keys.encode_meta(row.meta, **{SHA256_KEY: digest.sha256, SHA1_KEY: digest.sha1})
            # Where the probe saw the store verify checksums, it checks the bytes it receives
            # against the hash taken here (single-part PUTs; zone-buckets.md §6.3).
            checksum = digest.sha256 if self.capabilities.checksums else None
            # Before sending: an upload cancelled too late lands without telling us.
            self._attempted.setdefault(path, collections.deque(maxlen=8)).append(digest.sha256)
            self.journal.add_attempt(path, digest.sha256)
            try:
                info = await self._upload_if_unchanged(path, row.base_etag, src, md, cancel,
                                                       checksum)
            except _Conflict:
                ours = await self._own_landed_upload(path)
                if ours is None:
                    await self._keep_conflict(path, df, src, md, digest, cancel)
                    return
                # The object is an upload of ours that landed although it was cancelled
                # (a rewrite, a rename): no other writer, so replace it.
                info = await self._upload_if_unchanged(path, ours, src, md, cancel, checksum)
            except Refused:
                df.absent = was_absent  # nothing to delete if the file is removed meanwhile
                raise
            self.uploaded_bytes += digest.size
            if self.kachery_mirror and not st.S_ISLNK(row.meta.mode):
                await self._mirror(path, digest, row.meta)
        if not self._landed(path, df, info.etag, generation):
            return
        if df.writers:
            df.uploaded_generation, df.uploaded = generation, (info, digest)
            self.journal.put_dirty(row)
            return
        self.finish_clean(path, df, info, digest)

    def _landed(self, path: str, df: DirtyFile, etag: str, generation: int) -> bool:
        """An upload of `df` (begun at `generation`) landed as `etag`: the row now starts
        from it. Whether it is clean: still the path's row, and not changed meanwhile (a
        changed one is journaled with its new base and goes up again)."""
        if self.dirty.get(path) is not df:
            return False
        df.row.base_etag = etag
        if df.row.generation != generation:
            self.journal.put_dirty(df.row)
            return False
        return True

    async def _put_dir(self, path: str) -> None:
        """Put the marker of the pending directory `path` with its attributes."""
        df = self.dirty.get(path)
        if df is None or not df.is_dir:
            return
        row, generation = df.row, df.row.generation
        was_absent, df.absent = df.absent, False
        key = keys.dir_key(path)
        try:
            info = await self.remote.put_bytes(key, b"", keys.encode_meta(row.meta),
                                               keys.DIR_CONTENT_TYPE)
        except Refused:
            df.absent = was_absent  # a refusal created nothing: an rmdir needs no delete
            raise
        if not self._landed(path, df, info.etag, generation):
            return
        # Remembered: where the store drops a marker's metadata (the probe's
        # dir_markers=dropped), this machine still shows the attributes it set.
        self.journal.finish_upload(path, ObjectRow(key, info.etag, 0, row.meta))
        del self.dirty[path]
        self._note_progress()
        self.cache.put_entry(path, Entry(True, 0, info.etag, time.time(), row.meta))

    # -- concurrent writers ----------------------------------------------------------------------

    async def _upload_if_unchanged(
        self, path: str, base: str | None, src: str, md: dict[str, str],
        cancel: threading.Event, checksum: str | None,
    ) -> ObjectInfo:
        """Upload `src` as `path` only over the version the local edit started from (`base`,
        None for a new file); raise _Conflict when another writer replaced it meanwhile.

        With conditional writes the store decides (If-Match / If-None-Match: *), atomically.
        Without them (the probe found them ignored, unimplemented, or refusing every If-Match),
        the current ETag is compared first and the PUT follows: a writer landing in between
        is not detected. A file deleted in the bucket meanwhile is written again. `base`
        ANY_OBJECT replaces whatever is there."""
        # The file's SHA-256, hashed already: the remote need not hash it again to sign it.
        upload = functools.partial(self.remote.upload, payload_sha256=md.get(SHA256_KEY))
        if base == ANY_OBJECT:
            return await upload(path, src, md, None, cancel, checksum_sha256=checksum)
        if self.capabilities.conditional_writes == "enforced":
            try:
                return await upload(path, src, md, None, cancel, checksum_sha256=checksum,
                                    if_match=base, if_none_match=base is None)
            except PreconditionFailed:
                if await self._current_etag(path) is not None:
                    raise _Conflict from None
                # Nothing is there: the store lost the condition for a reason of its own
                # (SeaweedFS answers 412 to If-Match on a key deleted meanwhile, and to
                # If-None-Match where a directory of that name was emptied). Written anew.
            except NotFound:  # If-Match on a key someone deleted: write it anew
                pass
            try:
                return await upload(path, src, md, None, cancel,
                                    checksum_sha256=checksum, if_none_match=True)
            except PreconditionFailed:
                if await self._current_etag(path) is not None:
                    raise _Conflict from None
            # Still nothing there: as on a store without conditions, a writer landing
            # between the look and the PUT is not detected.
            return await upload(path, src, md, None, cancel, checksum_sha256=checksum)
        current = await self._current_etag(path)
        if current is not None and current != base:
            raise _Conflict
        return await upload(path, src, md, None, cancel, checksum_sha256=checksum)

    async def _current_etag(self, path: str) -> str | None:
        """The ETag of the object at `path` now, None when there is none."""
        try:
            return (await self.remote.head(path)).etag
        except NotFound:
            return None

    async def _own_landed_upload(self, path: str) -> str | None:
        """The ETag of the object at `path` when its bytes are ones this mount sent there
        (an upload cancelled too late to stop it lands anyway), else None."""
        try:
            info = await self.remote.head(path)
        except NotFound:
            return None
        sha256 = (info.metadata or {}).get(SHA256_KEY)
        return info.etag if sha256 and sha256 in self._attempted.get(path, ()) else None

    async def _keep_conflict(self, path: str, df: DirtyFile, src: str, md: dict[str, str],
                             digest: Digest, cancel: threading.Event) -> None:
        """Another writer replaced `path` since the local edit began: the local bytes go to
        `<path>.conflict-<UTC time>` beside it, and `path` shows the bucket's version again.
        The dirty row leaves the journal only after the copy is stored: a crash in between
        makes another conflict copy, never none."""
        name = self._conflict_name(path)
        info = await self.remote.upload(name, src, md, None, cancel, if_none_match=(
            self.capabilities.conditional_writes == "enforced"))
        self.uploaded_bytes += digest.size
        log.warning("conflict: %r was changed in the bucket by another writer after this "
                    "edit began; the local bytes are kept as %r", path, name)
        self.conflicts += 1
        self.journal.put_object(ObjectRow(name, info.etag, digest.size, df.row.meta,
                                          digest.sha256, digest.sha1))
        self.journal.saw(digest.sha256, info.etag)
        if self.dirty.get(path) is not df or df.writers:
            # Written again meanwhile, or still open: the local file stays pending, now
            # based on what the bucket holds (the conflict copy keeps what it had).
            with contextlib.suppress(NotFound):
                df.row.base_etag = (await self.remote.head(path)).etag
            if self.dirty.get(path) is df:
                self.journal.put_dirty(df.row)
                self.writeback.schedule(path)
            return
        self.journal.drop_dirty(path)
        if df.row.data is not None:
            self.blobs.ingest(self.blobs.abspath(df.row.data), digest)
        del self.dirty[path]
        self._estimate = self.blobs.reserved = max(0, self._estimate - df.row.size)
        self._note_progress()
        self.cache.invalidate(path)
        self.cache.invalidate(name)
        self._forget_opened(path)

    def _conflict_name(self, path: str) -> str:
        """`<path>.conflict-<UTC time>`, the name cut short to fit NAME_MAX if need be."""
        head, base = keys.split(path)
        suffix = time.strftime(".conflict-%Y%m%dT%H%M%SZ", time.gmtime())
        room = keys.NAME_MAX - len(suffix) - 4  # and "-NNN" for a second one this second
        base = base.encode()[:room].decode(errors="ignore")
        name, n = keys.join(head, base + suffix), 2
        while name in self.dirty:
            name, n = keys.join(head, f"{base}{suffix}-{n}"), n + 1
        return name

    async def _mirror(self, path: str, digest: Digest, meta: PosixMeta) -> None:
        """Copy the new object to the Kachery zone layout, where Kachery clients fetch a
        file by its SHA-1 (once per content: the copy is remembered)."""
        s = digest.sha1
        key = f"sha1/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}"
        known = self.journal.get_object(key)
        if (known is not None and known.sha1 == s) or key in self._mirroring:
            return  # done before, or by a concurrent upload of the same bytes
        self._mirroring.add(key)
        try:
            info = await self.remote.copy(path, key)  # headers too: it is the same file
            self.journal.saw(digest.sha256, info.etag)
            self.journal.put_object(ObjectRow(key, info.etag, digest.size, meta, digest.sha256,
                                              s))
        finally:
            self._mirroring.discard(key)

    def finish_clean(self, path: str, df: DirtyFile, info: ObjectInfo,
                     digest: Digest | None) -> None:
        """The upload of `df` landed as `info`: record the object, cache the bytes as a blob."""
        row = df.row
        # A copy in place, or of a renamed file's old name: the same bytes as that object.
        memo = self.journal.get_object(row.source if df.is_copy and row.source else path)
        sha256 = digest.sha256 if digest else (memo.sha256 if memo else None)
        sha1 = digest.sha1 if digest else (memo.sha1 if memo else None)
        obj = ObjectRow(path, info.etag, row.size, row.meta, sha256, sha1)
        # Journal first, not fsync'ed: the data file stays in staging/ (the blob is a second
        # link to it) until the commit is durable, so that a power loss undoing it finds the
        # row's bytes again; a crash in between leaves an orphan staging file (removed at the
        # next start), never a row whose bytes are gone.
        self.journal.finish_upload(path, obj)
        if digest is not None:
            self.journal.saw(digest.sha256, info.etag)
        elif memo is not None:  # a copy in place with new headers: the same bytes
            self.journal.saw_copy(sha256, memo.etag, info.etag)
        if digest is not None and row.data is not None:
            staging = self.blobs.abspath(row.data)
            self.blobs.ingest(staging, digest, keep_source=True)
            self.journal.after_sync(
                lambda: self.blobs.drop_source(staging, digest.sha256))
        del self.dirty[path]
        self.source_released(df)
        self._estimate = self.blobs.reserved = max(0, self._estimate - row.size)
        self._note_progress()
        self.cache.put_entry(path, Entry(False, row.size, info.etag, time.time(), row.meta,
                                         info.version_id))
        self._forget_opened(path)

    def open_for_write(self) -> int:
        """How many write handles are open: an unmount now would cut their files short."""
        return sum(df.writers for df in self.dirty.values())
