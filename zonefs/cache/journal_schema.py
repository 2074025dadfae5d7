"""What the journal stores: its tables (`SCHEMA`, created by `Journal` when missing; the
docstring of `journal` says what each holds and when its rows are written) and the rows read
from them. This module is the on-disk format of the journal: a change here is a change of
format, which an existing journal must be migrated to when `Journal` opens it.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from zonefs.common.keys import PosixMeta

SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    path       TEXT PRIMARY KEY,
    data       TEXT,              -- local data file relative to the cache dir; NULL: metadata only
    size       INTEGER NOT NULL,
    mode       INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    base_etag  TEXT,              -- ETag of the remote object this edit started from; NULL: new
    generation INTEGER NOT NULL,
    source     TEXT,              -- zone key to copy the object from (a renamed clean file)
    inline     BLOB,              -- a small file's bytes at its last close (see journal.py)
    inline_boot TEXT,             -- the boot id of the machine when `inline` was written
    ctime_ns   INTEGER,           -- NULL (a row from before ctime was kept): mtime_ns
    atime_ns   INTEGER,           -- NULL: mtime_ns
    rdev       INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS attempts (
    path   TEXT NOT NULL,        -- a dirty file's path
    sha256 TEXT NOT NULL,        -- the bytes an upload of it was started with
    PRIMARY KEY (path, sha256)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS deletes (
    key  TEXT PRIMARY KEY,       -- zone key: 'a/b' for a file, 'a/b/' for a directory marker
    etag TEXT                    -- ETag when the delete was asked for; NULL: not known to exist
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS objects (
    key      TEXT PRIMARY KEY,
    etag     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT,
    sha1     TEXT,
    ctime_ns INTEGER,            -- NULL (a row from before ctime was kept): mtime_ns
    atime_ns INTEGER,            -- NULL: mtime_ns
    rdev     INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS objects_sha1 ON objects (sha1);
CREATE TABLE IF NOT EXISTS renames (
    batch INTEGER PRIMARY KEY,
    old   TEXT NOT NULL,
    new   TEXT NOT NULL,
    state INTEGER NOT NULL   -- RENAME_LISTING or RENAME_PLANNED
);
CREATE TABLE IF NOT EXISTS moves (
    id      INTEGER PRIMARY KEY,
    batch   INTEGER NOT NULL,
    kind    TEXT NOT NULL,       -- one of MOVE_KINDS
    src     TEXT NOT NULL,
    dst     TEXT,
    etag    TEXT,                -- ETag of the source object when the rename was planned
    headers TEXT,                -- JSON metadata to set on the copy or marker; NULL: the source's
    copied  INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX IF NOT EXISTS moves_batch ON moves (batch, id);
CREATE TABLE IF NOT EXISTS multipart (
    key       TEXT NOT NULL,     -- zone key
    upload_id TEXT NOT NULL,
    PRIMARY KEY (key, upload_id)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS multipart_intents (
    id      INTEGER PRIMARY KEY,
    key     TEXT NOT NULL,     -- zone key
    time_ns INTEGER NOT NULL   -- local wall-clock time (ns since the epoch) before the create
);
CREATE TABLE IF NOT EXISTS seen (
    sha256 TEXT NOT NULL,
    etag   TEXT NOT NULL,
    PRIMARY KEY (sha256, etag)
) WITHOUT ROWID;
"""


@dataclass(slots=True)
class DirtyRow:
    """A path with local changes. `data` None means only its metadata changed; with `source`
    set, the object is to be a server-side copy of the object `source` (a renamed clean file,
    whose old name's delete waits for the copy)."""

    path: str
    data: str | None
    size: int
    meta: PosixMeta
    base_etag: str | None
    generation: int
    source: str | None = None


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """Remembered facts about the remote object `key` at `etag`."""

    key: str
    etag: str
    size: int
    meta: PosixMeta
    sha256: str | None = None
    sha1: str | None = None


#: The states of a rename: still listing what to move (nothing changed yet; a crash forgets
#: it), or planned (durable: a crash leaves it to resume).
RENAME_LISTING, RENAME_PLANNED = 0, 1

#: What a planned move does:
#: - `copy`: server-side copy of the object `src` to `dst` (with `headers` if set), then delete
#:   `src`;
#: - `delete`: delete the object `src` only (new local bytes go up under the new name);
#: - `dirty`: move the pending row `src` to `dst` (replacing one there), as a new file;
#: - `drop`: forget the pending row `src`: its change travels in a copy's headers, or it was
#:   replaced by the rename (`dst` NULL);
#: - `marker`: put the directory marker `dst` (metadata `headers`): the source directory
#:   existed only as a prefix.
MOVE_COPY, MOVE_DELETE, MOVE_DIRTY, MOVE_DROP, MOVE_MARKER = (
    "copy", "delete", "dirty", "drop", "marker")
MOVE_KINDS = (MOVE_COPY, MOVE_DELETE, MOVE_DIRTY, MOVE_DROP, MOVE_MARKER)


@dataclass(frozen=True, slots=True)
class Move:
    """One step of a rename (see MOVE_KINDS). `id` is 0 until the move is in the journal."""

    kind: str
    src: str
    dst: str | None = None
    etag: str | None = None
    headers: Mapping[str, str] | None = None
    copied: bool = False
    id: int = 0


@dataclass(frozen=True, slots=True)
class MultipartIntent:
    """A multipart upload of `key` that was about to be created at local time `time_ns` (ns
    since the epoch), and whose upload id the journal may never have heard."""

    id: int
    key: str
    time_ns: int


@dataclass(frozen=True, slots=True)
class RenameRow:
    """A rename in progress: its batch id, its names and its state (RENAME_*)."""

    batch: int
    old: str
    new: str
    state: int
