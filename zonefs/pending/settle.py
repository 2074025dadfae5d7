"""Settling an upload's outcome: what the ledger's rows, the journal, the blob cache and the
listing cache become once a change landed, was kept as a conflict copy, or was overtaken.

A part of the ledger (`ledger.Ledger.settler`), in a module of its own: it changes the
ledger's rows, and nothing outside this wing does.

Invariants:
- A row settles as clean only if it is still its path's row and its generation did not move
  while the upload ran; a row changed meanwhile is journaled with its new base and goes up
  again. A row with writers is not settled: what landed is parked on it for the last close.
- The object is journaled (not fsync'ed) before the row's data file joins the blob cache; the
  staging file stays until that commit is durable, so a power loss never loses the bytes.
"""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Protocol

from zonefs.cache.dircache import Entry
from zonefs.cache.journal_schema import ObjectRow
from zonefs.common import keys
from zonefs.pending.outcome import KeptAsConflict, Landed

if TYPE_CHECKING:
    from collections.abc import Callable

    from zonefs.cache.blobs import BlobStore, Digest
    from zonefs.cache.dircache import DirCache
    from zonefs.cache.journal import Journal
    from zonefs.pending.outcome import Outcome
    from zonefs.pending.rows import DirtyFile, PendingRows
    from zonefs.pending.upload import UploadJob
    from zonefs.remote.base import ObjectInfo


class RowOwner(Protocol):
    """What the settler asks of the ledger it belongs to (`ledger.Ledger`)."""

    rows: PendingRows

    def note_progress(self) -> None: ...
    def released_bytes(self, size: int) -> None: ...
    def source_released(self, df: DirtyFile, source: str | None = None) -> None: ...
    def schedule_key(self, key: str) -> None: ...


class Settler:
    """Settles outcomes on the ledger's rows; see the module docstring."""

    def __init__(self, ledger: RowOwner, journal: Journal, blobs: BlobStore, cache: DirCache,
                 forget_opened: Callable[[str], None]) -> None:
        self.ledger, self.journal, self.blobs, self.cache = ledger, journal, blobs, cache
        self.rows = ledger.rows
        # Tells the core's object reader that a name's object changed (its open pins go).
        self._forget_opened = forget_opened

    def settle(self, path: str, df: DirtyFile, job: UploadJob, outcome: Outcome, *,
               current_etag: str | None = None) -> None:
        """Settle `outcome` on `df`; after a conflict copy, `current_etag` is what the path
        holds now (None: nothing, or not asked)."""
        if isinstance(outcome, KeptAsConflict):
            self._settle_conflict(path, df, outcome, current_etag)
            return
        if not isinstance(outcome, Landed):
            return
        if self.rows.get(path) is not df:
            return  # removed or replaced meanwhile
        df.row.base_etag = outcome.info.etag
        if df.row.generation != job.generation:
            # Changed meanwhile: journaled with its new base, it goes up again.
            self.journal.put_dirty(df.row)
            return
        if df.is_dir:
            self._finish_dir(path, df, outcome.info)
        elif df.writers:
            df.uploaded_generation, df.uploaded = job.generation, (outcome.info, outcome.digest)
            self.journal.put_dirty(df.row)
        else:
            self.finish_clean(path, df, outcome.info, outcome.digest)

    def _finish_dir(self, path: str, df: DirtyFile, info: ObjectInfo) -> None:
        """The marker of a pending directory landed."""
        key = keys.dir_key(path)
        # Remembered: where the store drops a marker's metadata (the probe's
        # dir_markers=dropped), this machine still shows the attributes it set.
        self.journal.finish_upload(path, ObjectRow(key, info.etag, 0, df.row.meta))
        del self.rows[path]
        self.ledger.note_progress()
        self.cache.put_entry(path, Entry(True, 0, info.etag, time.time(), df.row.meta,
                                         marker=True))

    def _settle_conflict(self, path: str, df: DirtyFile, kept: KeptAsConflict,
                         current_etag: str | None) -> None:
        """The local bytes are stored as a conflict copy: `path` shows the bucket's version
        again, unless written again meanwhile or still open (then it stays pending, based on
        what the bucket holds now)."""
        if self.rows.get(path) is not df or df.writers:
            if current_etag is not None:
                df.row.base_etag = current_etag
            if self.rows.get(path) is df:
                self.journal.put_dirty(df.row)
                self.ledger.schedule_key(path)
            return
        self.journal.drop_dirty(path)
        if df.row.data is not None:
            self.blobs.ingest(self.blobs.abspath(df.row.data), kept.digest)
        del self.rows[path]
        self.ledger.released_bytes(df.row.size)
        self.ledger.note_progress()
        self.cache.invalidate(path)
        self.cache.invalidate(kept.name)
        self._forget_opened(path)

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
        del self.rows[path]
        self.ledger.source_released(df)
        self.ledger.released_bytes(row.size)
        self.ledger.note_progress()
        self.cache.put_entry(path, Entry(False, row.size, info.etag, time.time(), row.meta,
                                         info.version_id))
        self._forget_opened(path)
