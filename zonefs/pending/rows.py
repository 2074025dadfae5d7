"""Pending rows: a path whose local state is not yet in the bucket (a file, a symlink, or a
directory marker to put), as the pending wing keeps it in memory.

`DirtyFile` is its journal row plus what lives only while mounted (open writers, whether its
upload landed while open), with an explicit `Kind` (new bytes, symlink, metadata only, copy,
directory marker, unchanged copy); `PendingRows` is the dict of them by path, with the indexes
the core asks of it. Only the pending wing changes either (tests/t1_layers.py checks).
"""

from __future__ import annotations

import enum
import stat as st
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

from zonefs.common.keys import parents

if TYPE_CHECKING:
    from zonefs.cache.blobs import Digest
    from zonefs.cache.journal import DirtyRow
    from zonefs.cache.streamhash import StreamHasher
    from zonefs.remote.base import ObjectInfo

#: The base ETag of an edit that replaces whatever object its name holds: the name's delete
#: was pending with the object's ETag unknown (an upload of ours may have landed there). Its
#: upload is unconditional. Never a real ETag (those are hex digits).
ANY_OBJECT = "*"
#: A file up to this size has its bytes journaled with its row at close (one fsync for both;
#: the data file is not fsync'ed: see cache/journal.py).
INLINE_MAX = 64 << 10
#: A file larger than this, written from its start to its end in one pass, is uploaded
#: STREAMED_DELAY after its last close instead of `writeback_delay` (docs/semantics.md#close):
#: it is finished output (a copy, a download, an archive member), and its upload takes longer
#: than the delay would save.
STREAMED_OVER = 16 << 20
#: Seconds between the last close of such a file and its upload: long enough for what a
#: program does right after closing it (`tar`'s and `cp -p`'s utime and chmod, the rename of
#: a temporary name) to reach the row before the upload starts.
STREAMED_DELAY = 0.1
#: Seconds between the rename of a clean file (a pending copy in the store) and that copy:
#: a `mv` in the mount shows in the bucket about as soon as it does with any S3 tool, since
#: there are no bytes to coalesce; a rename that follows within it still moves the pending
#: copy locally (one copy for the chain).
MOVED_DELAY = 0.1


class Kind(enum.Enum):
    """What a pending row puts in the store: its state, named (the ledger moves it)."""

    #: New local bytes (row.data) to upload: a file written, truncated or created.
    BYTES = "new bytes"
    #: A symlink: its body (row.data, the target) to put.
    SYMLINK = "symlink"
    #: The object keeps its bytes and gets new attributes: a copy in place with new headers.
    #: row.data may hold a local copy for a writer that has not written yet.
    METADATA = "metadata only"
    #: A renamed clean file: its object is to be a server-side copy of row.source.
    COPY = "copy"
    #: A directory marker to put (mkdir, or chmod/chown/touch of a directory).
    DIRECTORY = "directory marker"
    #: A file open for writing, not written: row.data is an unchanged local copy of the
    #: object at base_etag. Nothing to upload; the last close drops the row.
    UNCHANGED = "unchanged copy"


def kind_of(row: DirtyRow) -> Kind:
    """The kind of a row as the journal holds it (the journal keeps no kind: a row with data
    is new bytes, one without a metadata change or, with a source, a copy)."""
    if st.S_ISDIR(row.meta.mode):
        return Kind.DIRECTORY
    if row.data is None:
        return Kind.COPY if row.source is not None else Kind.METADATA
    return Kind.SYMLINK if st.S_ISLNK(row.meta.mode) else Kind.BYTES


@dataclass(slots=True)
class DirtyFile:
    """A pending row: the journal row plus what only lives while mounted. Only the pending
    wing creates or changes one (the core reads it)."""

    row: DirtyRow
    #: What it puts in the store; derived from the row when not given.
    kind: Kind = None  # type: ignore[assignment]
    writers: int = 0
    persisted: bool = False  # the row is in the journal (written at close, fsync or setattr)
    # What an upload that landed while the file was still open put there (its generation,
    # the object and its digest): the last close finishes with it unless written since.
    uploaded_generation: int = -1
    uploaded: tuple[ObjectInfo, Digest | None] | None = None
    # True while the store holds no object under this name as far as this mount knows: the
    # file was created where nothing was, and no upload of it has started since. Removing
    # such a file needs no delete in the store.
    absent: bool = False
    # The key of a pending delete this row took over (a file created where one was just
    # removed): its journal row leaves in the transaction that first journals this one.
    claimed: str | None = None
    # The digest of its local file as written from its start (a new or truncated file), so
    # that its upload need not hash the file again; None, or broken, when it was not.
    hasher: StreamHasher | None = None

    def __post_init__(self) -> None:
        if self.kind is None:
            self.kind = kind_of(self.row)

    @property
    def is_dir(self) -> bool:
        """A directory whose marker is to be put (mkdir, or chmod/chown/touch of one)."""
        return self.kind is Kind.DIRECTORY

    @property
    def is_copy(self) -> bool:
        """A renamed clean file: its object is to be a copy of `row.source`."""
        return self.kind is Kind.COPY

    @property
    def queue_key(self) -> str:
        """Its name in the write-back queue: the zone key it writes."""
        return f"{self.row.path}/" if self.is_dir else self.row.path


class PendingRows(dict[str, DirtyFile]):
    """The dirty files by path, counting for every directory how many lie below it, so that
    "is anything pending below this directory" costs O(1), not a scan (`tar` asks it of each
    new name). Only item assignment, `del`, `pop` and `setdefault` change it."""

    def __init__(self) -> None:
        super().__init__()
        self._below: Counter[str] = Counter()
        self._copies: dict[str, set[str]] = {}  # source key -> paths of copy rows (a hint)

    def has_below(self, path: str) -> bool:
        """Whether a pending row lies strictly below the directory `path`."""
        return self._below[path] > 0

    def copies_reading(self, key: str) -> list[str]:
        """Paths of the pending copy rows that still read the object `key`. The index is
        checked against the rows, so a row that stopped being a copy (written to, uploaded)
        never holds anything back."""
        paths = self._copies.get(key)
        if not paths:
            return []
        for path in list(paths):
            df = super().get(path)
            if df is None or not df.is_copy or df.row.source != key:
                paths.discard(path)
        if not paths:
            del self._copies[key]
        return sorted(paths)

    def copies_from(self, key: str, *, ignore: str | None = None) -> bool:
        """Whether a pending copy row (other than the one at `ignore`) still reads the object
        `key`: nothing may write or delete that object before it is made."""
        return any(p != ignore for p in self.copies_reading(key))

    def copies_reading_under(self, prefix: str) -> list[str]:
        """Paths of the pending copy rows reading any object whose key starts with `prefix`."""
        return [p for key in [k for k in self._copies if k.startswith(prefix)]
                for p in self.copies_reading(key)]

    def _count(self, path: str, step: int) -> None:
        for parent in parents(path):
            self._below[parent] += step
            if self._below[parent] <= 0:
                del self._below[parent]

    def __setitem__(self, path: str, df: DirtyFile) -> None:
        if path not in self:
            self._count(path, 1)
        super().__setitem__(path, df)
        if df.is_copy:
            assert df.row.source is not None
            self._copies.setdefault(df.row.source, set()).add(path)

    def __delitem__(self, path: str) -> None:
        super().__delitem__(path)
        self._count(path, -1)

    def pop(self, path: str, *default: DirtyFile | None) -> DirtyFile | None:  # type: ignore[override]
        if path in self:
            self._count(path, -1)
        return super().pop(path, *default)

    def setdefault(self, path: str, df: DirtyFile) -> DirtyFile:  # type: ignore[override]
        if path not in self:
            self[path] = df
        return self[path]


def has_new_bytes(df: DirtyFile) -> bool:
    """Whether the file's local bytes differ from its object (a data upload is due)."""
    return df.kind in (Kind.BYTES, Kind.SYMLINK)


def moves_as_row(df: DirtyFile) -> bool:
    """Whether a rename moves this pending row to the new name (it is uploaded there), rather
    than copying an object: new bytes, a directory marker still to be put, or a copy still
    to be made."""
    return df.kind in (Kind.BYTES, Kind.SYMLINK, Kind.DIRECTORY, Kind.COPY)


def may_exist(df: DirtyFile | None, etag: str | None) -> tuple[bool, str | None]:
    """Whether the store may hold an object under the name of `df` (a pending row, or None
    for a clean path whose object has `etag`), and its ETag when known."""
    if df is None:
        return True, etag
    if df.absent and df.claimed is None and df.row.base_etag is None:
        return False, None
    return True, df.row.base_etag


def streamed(df: DirtyFile) -> bool:
    """Whether `df` is a large file written from its start to its end in one pass."""
    h = df.hasher
    return (h is not None and not h.broken and h.end == df.row.size
            and df.row.size > STREAMED_OVER)
