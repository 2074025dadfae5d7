"""The journal: a SQLite database (WAL) under the cache dir holding every local state that must
survive a crash.

Tables:
- `dirty`: one row per file whose local state is not yet in the bucket (new or changed bytes,
  or metadata-only changes). A row is committed *before* the path is handed to the write-back
  queue, and deleted only in the same transaction that records the uploaded object.
- `objects`: what zonefs remembers about remote objects, by key and ETag: POSIX metadata from
  their headers (so a listing need not HEAD them again, across remounts too) and the SHA-256 of
  the bytes when known (the key → blob index of the blob cache). A hash there may be a claim:
  it comes from the object's `zonefs-sha256` header before any byte was read.
- `seen`: pairs (sha256, ETag) of bytes hashed *here* for an object with that ETag (downloaded,
  uploaded, or server-side copied from such). Only such a pair lets a header's claim serve a
  cached blob: an object whose header names a blob but whose ETag was never seen with those
  bytes is downloaded and checked instead (zonefs' own uploads of the same bytes get the same
  ETag, so copies written by zonefs elsewhere still dedup).

All calls are synchronous and short; callers on the trio thread rely on that: code between two
awaits sees the journal atomically. Every write commits before returning. Writes that
acknowledge user data (`put_dirty`, `move_dirty`, `drop_dirty`) are fsync'ed (WAL with
`synchronous=FULL`); writes of what can be recomputed (remembered objects, the end of an upload,
whose loss only repeats it) skip the fsync and become durable with the next fsync'ed commit.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterator
from dataclasses import dataclass

from .keys import PosixMeta

_SCHEMA = """
CREATE TABLE IF NOT EXISTS dirty (
    path       TEXT PRIMARY KEY,
    data       TEXT,              -- local data file relative to the cache dir; NULL: metadata only
    size       INTEGER NOT NULL,
    mode       INTEGER NOT NULL,
    uid        INTEGER NOT NULL,
    gid        INTEGER NOT NULL,
    mtime_ns   INTEGER NOT NULL,
    base_etag  TEXT,              -- ETag of the remote object this edit started from; NULL: new
    generation INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS objects (
    key      TEXT PRIMARY KEY,
    etag     TEXT NOT NULL,
    size     INTEGER NOT NULL,
    mode     INTEGER NOT NULL,
    uid      INTEGER NOT NULL,
    gid      INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    sha256   TEXT,
    sha1     TEXT
);
CREATE INDEX IF NOT EXISTS objects_sha1 ON objects (sha1);
CREATE TABLE IF NOT EXISTS seen (
    sha256 TEXT NOT NULL,
    etag   TEXT NOT NULL,
    PRIMARY KEY (sha256, etag)
) WITHOUT ROWID;
"""


@dataclass(slots=True)
class DirtyRow:
    """A file with local changes. `data` None means only its metadata changed."""

    path: str
    data: str | None
    size: int
    meta: PosixMeta
    base_etag: str | None
    generation: int


@dataclass(frozen=True, slots=True)
class ObjectRow:
    """Remembered facts about the remote object `key` at `etag`."""

    key: str
    etag: str
    size: int
    meta: PosixMeta
    sha256: str | None = None
    sha1: str | None = None


class Journal:
    """Synchronous access to the journal database at `path` (created 0600)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(_SCHEMA)
        self._durable = False
        self._set_durable(True)

    def _set_durable(self, durable: bool) -> None:
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable

    def close(self) -> None:
        self._db.close()

    # -- dirty files ---------------------------------------------------------------------------

    def put_dirty(self, row: DirtyRow) -> None:
        self._set_durable(True)
        m = row.meta
        self._db.execute(
            "INSERT OR REPLACE INTO dirty VALUES (?,?,?,?,?,?,?,?,?)",
            (row.path, row.data, row.size, m.mode, m.uid, m.gid, m.mtime_ns, row.base_etag,
             row.generation),
        )

    def drop_dirty(self, path: str) -> None:
        self._set_durable(True)
        self._db.execute("DELETE FROM dirty WHERE path = ?", (path,))

    def move_dirty(self, old: str, new: str) -> None:
        """Rename a row; a row already at `new` is replaced."""
        if old == new:
            return
        self._set_durable(True)
        with self._tx():
            self._db.execute("DELETE FROM dirty WHERE path = ?", (new,))
            self._db.execute("UPDATE dirty SET path = ? WHERE path = ?", (new, old))

    def dirty_rows(self) -> Iterator[DirtyRow]:
        for path, data, size, mode, uid, gid, mtime_ns, base, gen in self._db.execute(
            "SELECT * FROM dirty ORDER BY path"
        ):
            yield DirtyRow(path, data, size, PosixMeta(mode, uid, gid, mtime_ns), base, gen)

    def finish_upload(self, path: str, obj: ObjectRow) -> None:
        """The upload of `path` landed as `obj`: forget the dirty row, remember the object.

        Durable, because the caller moves the row's data file away right after.
        """
        self._set_durable(True)
        with self._tx():
            self._db.execute("DELETE FROM dirty WHERE path = ?", (path,))
            self._put_object(obj)

    # -- remembered objects --------------------------------------------------------------------

    def put_object(self, obj: ObjectRow) -> None:
        self._set_durable(False)
        self._put_object(obj)

    def _put_object(self, obj: ObjectRow) -> None:
        m = obj.meta
        self._db.execute(
            "INSERT OR REPLACE INTO objects VALUES (?,?,?,?,?,?,?,?,?)",
            (obj.key, obj.etag, obj.size, m.mode, m.uid, m.gid, m.mtime_ns, obj.sha256, obj.sha1),
        )

    def get_object(self, key: str, etag: str | None = None) -> ObjectRow | None:
        """The remembered object at `key`, only if its ETag is `etag` (when given)."""
        row = self._db.execute("SELECT * FROM objects WHERE key = ?", (key,)).fetchone()
        if row is None or (etag is not None and row[1] != etag):
            return None
        key, etag_, size, mode, uid, gid, mtime_ns, sha256, sha1 = row
        return ObjectRow(key, etag_, size, PosixMeta(mode, uid, gid, mtime_ns), sha256, sha1)

    def drop_object(self, key: str) -> None:
        self._set_durable(False)
        self._db.execute("DELETE FROM objects WHERE key = ?", (key,))

    def keys_with_sha1(self, sha1: str, limit: int = 10) -> list[str]:
        """Remembered keys whose bytes have this SHA-1 (the Kachery content ID)."""
        rows = self._db.execute("SELECT key FROM objects WHERE sha1 = ? LIMIT ?", (sha1, limit))
        return [key for (key,) in rows]

    def saw(self, sha256: str, etag: str) -> None:
        """Bytes hashing to `sha256` were hashed here for an object with ETag `etag`."""
        if etag:
            self._set_durable(False)
            self._db.execute("INSERT OR IGNORE INTO seen VALUES (?, ?)", (sha256, etag))

    def seen(self, sha256: str, etag: str) -> bool:
        row = self._db.execute("SELECT 1 FROM seen WHERE sha256 = ? AND etag = ?",
                               (sha256, etag)).fetchone()
        return row is not None

    def saw_copy(self, sha256: str | None, source_etag: str | None, copy_etag: str) -> None:
        """A server-side copy of an object with `source_etag` got `copy_etag`: the same bytes,
        so a verified pair carries over (a claim stays a claim)."""
        if sha256 and source_etag and self.seen(sha256, source_etag):
            self.saw(sha256, copy_etag)

    def blob_in_use(self, sha256: str) -> bool:
        row = self._db.execute("SELECT 1 FROM objects WHERE sha256 = ? LIMIT 1", (sha256,))
        return row.fetchone() is not None

    # -- helpers -------------------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, *_: object) -> None:
        self._db.execute("ROLLBACK" if exc_type else "COMMIT")
