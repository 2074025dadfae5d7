"""The journal: a SQLite database (WAL) under the cache dir holding every local state that must
survive a crash.

Tables:
- `dirty`: one row per path whose local state is not yet in the bucket: a file or symlink with
  new or changed bytes, a metadata-only change of a file, or a directory whose marker is to be
  put (`mkdir`, `chmod` of a directory: a row with a directory mode and no data). A row is
  committed *before* the path is handed to the write-back queue, and deleted only in the same
  transaction that records the uploaded object.
  A small file's row also holds its bytes as they were at its last close (`inline`, with the
  boot id of that moment), committed with the row: one fsync makes both the row and the bytes
  durable, and the data file is not fsync'ed. After a reboot (another boot id) the data file,
  which was never fsync'ed, is written again from them (`inline_bytes`); within one boot (the
  process was killed) the data file in the page cache is the truth, as for any other row. A
  row's `inline` is replaced only by a new close or a truncation by name, and kept by every
  other write of the row (`KEEP`).
- `attempts`: the SHA-256 of the bytes each upload of a dirty file was started with, so that
  an upload that lands after it was cancelled, or after the process died, is told from another
  writer's object (it carries the same `zonefs-sha256`). Forgotten with the upload's end, and
  at start for paths that are no longer dirty.
- `deletes`: zone keys to DELETE (`unlink`, `rmdir`, the old name of a renamed pending file),
  with the ETag the object had when the delete was asked for (NULL: not known to exist). A row
  is committed before the call returns; it leaves the journal once the store confirmed the
  delete, or in the same transaction as a row that writes the key again (a file created where
  one was just removed).
- `objects`: what zonefs remembers about remote objects, by key and ETag: POSIX metadata from
  their headers (so a listing need not HEAD them again, across remounts too) and the SHA-256 of
  the bytes when known (the key → blob index of the blob cache). A hash there may be a claim:
  it comes from the object's `zonefs-sha256` header before any byte was read.
- `seen`: pairs (sha256, ETag) of bytes hashed *here* for an object with that ETag (downloaded,
  uploaded, or server-side copied from such). Only such a pair lets a header's claim serve a
  cached blob: an object whose header names a blob but whose ETag was never seen with those
  bytes is downloaded and checked instead (zonefs' own uploads of the same bytes get the same
  ETag, so copies written by zonefs elsewhere still dedup).
- `renames` and `moves`: renames in progress, so that one cut short by a crash is finished at
  the next mount. A rename is planned in full (every object to copy or delete, every pending
  row to move) and the plan made durable (`seal_rename`) before its first change to the bucket
  or to `dirty`; each step then records its progress (`copied`) or removes its row. A resume
  repeats only steps whose progress was not yet on disk, and every step is idempotent (a copy
  whose source is gone but whose destination exists is done). A rename not yet sealed changed
  nothing and is simply forgotten.
- `multipart_intents` and `multipart`: multipart uploads (and multipart copies) on their way.
  An intent (zone key, local wall-clock time) is fsync'ed *before* CreateMultipartUpload is
  sent; once the store answers, the upload id is written to `multipart`, fsync'ed before the
  first part is sent, and the intent is dropped in the same transaction (it stays when the
  answer came after a retry, or when the create failed without a clear refusal: an earlier
  attempt may have created an upload whose answer was lost). A `multipart` row is dropped
  once the upload is completed or aborted. So at any instant, every upload zonefs created and
  did not finish is named either by its id or by an intent for its key, made before the store
  initiated it; rows left by a process that died are what the next mount aborts (the file's
  dirty row is still there, so it is uploaded again whole). Journals written before
  `multipart_intents` existed gain the table when opened (`CREATE TABLE IF NOT EXISTS`);
  their `multipart` rows are kept as they are.

All calls are synchronous and short; callers on the trio thread rely on that: code between two
awaits sees the journal atomically. Every write commits before returning. Writes that
acknowledge user data (`put_dirty`, `move_dirty`, `drop_dirty`, `move_pending`, `put_delete`)
or order a rename's steps
(`seal_rename`, `apply_pending_moves`), and the records of multipart uploads about to be created
or sent (`add_multipart_intent`, `add_multipart`) are fsync'ed (WAL with
`synchronous=FULL`); writes of what can be recomputed (remembered objects, the end of an upload,
whose loss only repeats it) skip the fsync and become durable with the next fsync'ed commit.

The tables' definitions and the rows read from them are in `journal_schema`; this module is
the only code that reads or writes them.
"""

from __future__ import annotations

import json
import os
import sqlite3
from collections.abc import Callable, Iterable, Iterator

from cachetools import LRUCache

from zonefs.cache.journal_schema import (
    MOVE_COPY,
    MOVE_DELETE,
    MOVE_DIRTY,
    MOVE_DROP,
    MOVE_KINDS,
    MOVE_MARKER,
    RENAME_LISTING,
    RENAME_PLANNED,
    SCHEMA,
    DirtyRow,
    Move,
    MultipartIntent,
    ObjectRow,
    RenameRow,
)
from zonefs.common.errors import NoSpace
from zonefs.common.keys import PosixMeta

#: `put_dirty(inline=KEEP)`: the row keeps the bytes a close journaled with it, if any.
KEEP = b"\0keep"

#: The attribute columns of `dirty` and `objects`, in the order `_meta` takes them.
_META_COLUMNS = "mode, uid, gid, mtime_ns, ctime_ns, atime_ns, rdev"


def _meta(mode: int, uid: int, gid: int, mtime_ns: int, ctime_ns: int | None,
          atime_ns: int | None, rdev: int) -> PosixMeta:
    """A row's attributes; a row from before ctime and atime were kept has them NULL."""
    return PosixMeta(mode, uid, gid, mtime_ns, mtime_ns if ctime_ns is None else ctime_ns,
                     mtime_ns if atime_ns is None else atime_ns, rdev)


def boot_id() -> str:
    """This boot of the machine (Linux's random boot id; "" where there is none): a data
    file written but not fsync'ed is whole as long as this did not change."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            return f.read().strip()
    except OSError:
        return ""


BOOT_ID = boot_id()

#: The rows and constants of the tables, used by the callers of the journal with it.
__all__ = [
    "MOVE_COPY", "MOVE_DELETE", "MOVE_DIRTY", "MOVE_DROP", "MOVE_KINDS", "MOVE_MARKER",
    "RENAME_LISTING", "RENAME_PLANNED", "DirtyRow", "Journal", "Move", "MultipartIntent",
    "ObjectRow", "RenameRow",
]


#: Remembered objects `get_object` keeps in memory (a few hundred bytes each).
OBJECTS_CACHED = 20_000
#: `remember_object` rows held back before they are written in one transaction.
OBJECTS_BATCH = 256


class Journal:
    """Synchronous access to the journal database at `path` (created 0600)."""

    def __init__(self, path: str) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        os.close(fd)
        self._db = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.executescript(SCHEMA)
        columns = {row[1] for row in self._db.execute("PRAGMA table_info(dirty)")}
        if "source" not in columns:  # a journal from before renames by pending copies
            self._db.execute("ALTER TABLE dirty ADD COLUMN source TEXT")
        if "inline" not in columns:  # a journal from before small files' bytes were kept
            self._db.execute("ALTER TABLE dirty ADD COLUMN inline BLOB")
            self._db.execute("ALTER TABLE dirty ADD COLUMN inline_boot TEXT")
        # A journal from before ctime, atime and rdev: each column checked on its own, so that
        # a crash between two ALTERs (each commits alone) is finished at the next open.
        for table in ("dirty", "objects"):
            have = {row[1] for row in self._db.execute(f"PRAGMA table_info({table})")}
            for column, kind in (("ctime_ns", "INTEGER"), ("atime_ns", "INTEGER"),
                                 ("rdev", "INTEGER NOT NULL DEFAULT 0")):
                if column not in have:
                    self._db.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
        self._wal = path + "-wal"
        self._durable = False
        self._lazy = False  # a commit since the last `sync` was not fsync'ed
        self._after_sync: list[Callable[[], None]] = []
        # What `get_object` found by key (None: no row), so that `ls -l` and `find`, which
        # ask several times per file, query SQLite once: each query lets go of the GIL, and
        # the loop's thread then waits for it behind the request threads. Every write of the
        # objects table goes through the methods below, which keep this in step.
        self._objects: LRUCache[str, ObjectRow | None] = LRUCache(maxsize=OBJECTS_CACHED)
        # `remember_object` rows not written yet (see there); every other write of the same key
        # takes them over.
        self._unwritten: dict[str, ObjectRow] = {}
        self._set_durable(True)

    def _set_durable(self, durable: bool) -> None:
        if durable != self._durable:
            self._db.execute(f"PRAGMA synchronous={'FULL' if durable else 'NORMAL'}")
            self._durable = durable
        if not durable:
            self._lazy = True

    @property
    def unsynced(self) -> bool:
        """Whether a commit since the last `sync` was not fsync'ed (a power loss could undo
        it; a crash of the process cannot: it is in the WAL file)."""
        return self._lazy

    def sync(self) -> None:
        """Make every commit so far durable: fsync the WAL file, where SQLite's WAL mode has
        written them (what a `synchronous=FULL` commit does), after writing the remembered
        objects held back. Cheap when nothing is lazy."""
        self._write_remembered()
        if self._lazy:
            self._lazy = False
            try:
                fd = os.open(self._wal, os.O_RDONLY)
            except FileNotFoundError:
                pass  # checkpointed and removed: the database file holds (and synced) it all
            else:
                try:
                    os.fsync(fd)
                finally:
                    os.close(fd)
        callbacks, self._after_sync = self._after_sync, []
        for fn in callbacks:
            fn()

    def start_sync(self) -> list[Callable[[], None]]:
        """For a `fsync_wal` about to run in a worker thread: every commit so far is counted
        as synced (a later lazy commit marks the journal unsynced again), and the callbacks
        waiting for it are handed over, to run once that fsync returned."""
        self._lazy = False
        callbacks, self._after_sync = self._after_sync, []
        return callbacks

    def fsync_wal(self) -> None:
        """Fsync the WAL file, where every commit so far was written (blocking, and the one
        call safe in a worker thread while the trio thread commits: it touches no state)."""
        try:
            fd = os.open(self._wal, os.O_RDONLY)
        except FileNotFoundError:
            return  # checkpointed and removed: the database file holds (and synced) it all
        try:
            os.fsync(fd)
        finally:
            os.close(fd)

    def after_sync(self, fn: Callable[[], None]) -> None:
        """Call `fn` once every commit so far is durable (at the next `sync`): what must not
        happen before a lazy commit can no longer be undone."""
        self._after_sync.append(fn)

    def close(self) -> None:
        self.sync()
        self._db.close()

    # -- dirty files ---------------------------------------------------------------------------

    def put_dirty(self, row: DirtyRow, *, replaces_delete: str | None = None,
                  durable: bool = True, inline: bytes | None = KEEP) -> None:
        """Write a dirty row (fsync'ed unless `durable` is False: an attribute change of a row
        whose bytes are journaled, made durable by the next `sync`). `replaces_delete`: a
        pending delete of that key is forgotten in the same transaction (the row writes the
        key again). `inline`: the file's bytes as of now, kept with the row (None: none; KEEP:
        what the row held)."""
        self._set_durable(durable)
        with self._tx():
            self._put_dirty(row, inline)
            if replaces_delete is not None:
                self._db.execute("DELETE FROM deletes WHERE key = ?", (replaces_delete,))

    def _put_dirty(self, row: DirtyRow, inline: bytes | None = KEEP) -> None:
        m = row.meta
        values = (row.path, row.data, row.size, m.mode, m.uid, m.gid, m.mtime_ns, m.ctime_ns,
                  m.atime_ns, m.rdev, row.base_etag, row.generation, row.source)
        columns = ("INSERT OR REPLACE INTO dirty (path, data, size, mode, uid, gid, mtime_ns, "
                   "ctime_ns, atime_ns, rdev, base_etag, generation, source, inline, "
                   "inline_boot) ")
        if inline is KEEP:
            # Read before the row is replaced: what the last close journaled stays.
            self._db.execute(
                columns + "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,"
                "(SELECT inline FROM dirty WHERE path = ?), "
                "(SELECT inline_boot FROM dirty WHERE path = ?))",
                (*values, row.path, row.path))
        else:
            self._db.execute(columns + "VALUES (?,?,?,?,?,?,?,?,?,?,?,?,?,?,?)",
                             (*values, inline, None if inline is None else BOOT_ID))

    def inline_bytes(self, path: str) -> bytes | None:
        """The bytes journaled with the row of `path` at its last close, when they were
        journaled in an earlier boot of the machine (its data file was not fsync'ed since:
        they are the truth); None otherwise."""
        row = self._db.execute("SELECT inline, inline_boot FROM dirty WHERE path = ?",
                               (path,)).fetchone()
        if row is None or row[0] is None or row[1] == BOOT_ID:
            return None
        return bytes(row[0])

    def move_by_copy(self, row: DirtyRow, old: str, *, delete_etag: str | None,
                     replaces_delete: str | None) -> None:
        """A clean file's rename, in one fsync'ed transaction: the copy row `row` (replacing a
        row at its path), the delete of the old name `old` (whose etag is `delete_etag`), the
        old name's own pending row dropped, a pending delete of `replaces_delete` forgotten."""
        self._set_durable(True)
        with self._tx():
            self._db.execute("DELETE FROM dirty WHERE path = ?", (old,))
            self._put_dirty(row, None)
            self._db.execute("INSERT OR REPLACE INTO deletes VALUES (?, ?)", (old, delete_etag))
            if replaces_delete is not None:
                self._db.execute("DELETE FROM deletes WHERE key = ?", (replaces_delete,))

    def drop_dirty(self, path: str) -> None:
        self._set_durable(True)
        self._db.execute("DELETE FROM dirty WHERE path = ?", (path,))

    def move_pending(self, old: str, new: str, *, base_etag: str | None,
                     delete: tuple[str, str | None] | None,
                     replaces_delete: str | None) -> None:
        """A pending file's rename, in one fsync'ed transaction: the row `old` becomes `new`
        (replacing a row there) with `base_etag`; `delete` (key, ETag) is added to the pending
        deletes (the object under the old name); a pending delete of `replaces_delete` is
        forgotten (the moved row writes that key)."""
        self._set_durable(True)
        with self._tx():
            if old != new:
                self._db.execute("DELETE FROM dirty WHERE path = ?", (new,))
            self._db.execute("UPDATE dirty SET path = ?, base_etag = ? WHERE path = ?",
                             (new, base_etag, old))
            if delete is not None:
                self._db.execute("INSERT OR REPLACE INTO deletes VALUES (?, ?)", delete)
            if replaces_delete is not None:
                self._db.execute("DELETE FROM deletes WHERE key = ?", (replaces_delete,))

    # -- pending deletes -----------------------------------------------------------------------

    def put_delete(self, key: str, etag: str | None, *, drop_dirty: str | None = None) -> None:
        """Ask for `key` to be deleted (fsync'ed); `drop_dirty`: the dirty row of that path
        goes in the same transaction (the file removed had local changes)."""
        self._set_durable(True)
        with self._tx():
            if drop_dirty is not None:
                self._db.execute("DELETE FROM dirty WHERE path = ?", (drop_dirty,))
            self._db.execute("INSERT OR REPLACE INTO deletes VALUES (?, ?)", (key, etag))

    def drop_delete(self, key: str) -> None:
        """The delete of `key` is in the store, or a write replaced it. Not fsync'ed: a lost
        forget repeats a delete that is done (the key is checked first when its ETag is not
        known; otherwise a versioned bucket gets one more delete marker)."""
        self._set_durable(False)
        with self._tx():
            self._db.execute("DELETE FROM deletes WHERE key = ?", (key,))
            self._db.execute("DELETE FROM objects WHERE key = ?", (key,))
        self._unwritten.pop(key, None)
        self._objects[key] = None

    def deletes(self) -> list[tuple[str, str | None]]:
        """(key, ETag) of every pending delete."""
        return [(k, e) for k, e in self._db.execute("SELECT key, etag FROM deletes ORDER BY key")]

    def move_dirty(self, old: str, new: str) -> None:
        """Rename a row; a row already at `new` is replaced."""
        if old == new:
            return
        self._set_durable(True)
        with self._tx():
            self._db.execute("DELETE FROM dirty WHERE path = ?", (new,))
            self._db.execute("UPDATE dirty SET path = ? WHERE path = ?", (new, old))

    def dirty_rows(self) -> Iterator[DirtyRow]:
        for path, data, size, base, gen, source, *meta in self._db.execute(
            "SELECT path, data, size, base_etag, generation, source, " + _META_COLUMNS +
            " FROM dirty ORDER BY path"
        ):
            yield DirtyRow(path, data, size, _meta(*meta), base, gen, source)

    def finish_upload(self, path: str, obj: ObjectRow) -> None:
        """The upload of `path` landed as `obj`: forget the dirty row and its upload attempts,
        remember the object.

        Not fsync'ed (one per upload, on the loop's thread, was the cost of every upload): the
        caller keeps the row's data file until `sync` (`after_sync`), so a power loss that
        undoes this commit leaves the row with its bytes, uploaded once more.
        """
        self._set_durable(False)
        with self._tx():
            self._db.execute("DELETE FROM dirty WHERE path = ?", (path,))
            self._db.execute("DELETE FROM attempts WHERE path = ?", (path,))
            self._put_object(obj)

    def add_attempt(self, path: str, sha256: str) -> None:
        """An upload of `path` with these bytes is about to be sent. Not fsync'ed: it only
        spares a conflict copy of this mount's own late upload, and a crash of the process
        keeps it."""
        self._set_durable(False)
        self._db.execute("INSERT OR IGNORE INTO attempts VALUES (?, ?)", (path, sha256))

    def attempts(self) -> dict[str, list[str]]:
        """Upload attempts by path, after dropping those of paths no longer dirty."""
        self._set_durable(False)
        self._db.execute("DELETE FROM attempts WHERE path NOT IN (SELECT path FROM dirty)")
        out: dict[str, list[str]] = {}
        for path, sha256 in self._db.execute("SELECT path, sha256 FROM attempts"):
            out.setdefault(path, []).append(sha256)
        return out

    # -- remembered objects --------------------------------------------------------------------

    def put_object(self, obj: ObjectRow) -> None:
        self._set_durable(False)
        self._put_object(obj)

    def remember_object(self, obj: ObjectRow) -> None:
        """`put_object` for what a HEAD said, held back and written with others in one
        transaction (at OBJECTS_BATCH rows, `sync` or `close`): a cold `ls -l` remembers every
        file's headers, and one commit each cost the loop's thread more than the rest of the
        lookup. A crash of the process loses the rows held back: they are asked again."""
        self._objects[obj.key] = obj
        self._unwritten[obj.key] = obj
        if len(self._unwritten) >= OBJECTS_BATCH:
            self._write_remembered()

    def _write_remembered(self) -> None:
        if not self._unwritten:
            return
        rows, self._unwritten = list(self._unwritten.values()), {}
        self._set_durable(False)
        with self._tx():
            for obj in rows:
                self._put_object(obj)
        for obj in rows:
            self._objects[obj.key] = obj

    def _put_object(self, obj: ObjectRow) -> None:
        m = obj.meta
        self._unwritten.pop(obj.key, None)
        self._objects.pop(obj.key, None)
        self._db.execute(
            "INSERT OR REPLACE INTO objects (key, etag, size, mode, uid, gid, mtime_ns, ctime_ns, "
            "atime_ns, rdev, sha256, sha1) VALUES (?,?,?,?,?,?,?,?,?,?,?,?)",
            (obj.key, obj.etag, obj.size, m.mode, m.uid, m.gid, m.mtime_ns, m.ctime_ns,
             m.atime_ns, m.rdev, obj.sha256, obj.sha1),
        )
        if not self._db.in_transaction:  # committed (a transaction around it may roll back)
            self._objects[obj.key] = obj

    def get_object(self, key: str, etag: str | None = None) -> ObjectRow | None:
        """The remembered object at `key`, only if its ETag is `etag` (when given)."""
        try:
            found = self._objects[key]
        except KeyError:
            row = self._db.execute(
                "SELECT key, etag, size, sha256, sha1, " + _META_COLUMNS +
                " FROM objects WHERE key = ?", (key,)).fetchone()
            if row is None:
                found = None
            else:
                key_, etag_, size, sha256, sha1, *meta = row
                found = ObjectRow(key_, etag_, size, _meta(*meta), sha256, sha1)
            if not self._db.in_transaction:  # an open one may still roll back
                self._objects[key] = found
        if found is None or (etag is not None and found.etag != etag):
            return None
        return found

    def drop_object(self, key: str) -> None:
        self._set_durable(False)
        self._db.execute("DELETE FROM objects WHERE key = ?", (key,))
        self._unwritten.pop(key, None)
        self._objects[key] = None

    def keys_with_sha1(self, sha1: str, limit: int = 10) -> list[str]:
        """Remembered keys whose bytes have this SHA-1 (the Kachery content ID)."""
        self._write_remembered()
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
        self._write_remembered()
        row = self._db.execute("SELECT 1 FROM objects WHERE sha256 = ? LIMIT 1", (sha256,))
        return row.fetchone() is not None

    # -- renames in progress -------------------------------------------------------------------

    def begin_rename(self, old: str, new: str) -> int:
        """Start planning a rename; returns its batch id. Not durable: until `seal_rename` a
        crash forgets it, and nothing was changed."""
        self._set_durable(False)
        cur = self._db.execute("INSERT INTO renames (old, new, state) VALUES (?, ?, ?)",
                               (old, new, RENAME_LISTING))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def plan_moves(self, batch: int, moves: Iterable[Move]) -> None:
        """Add steps to a rename being planned, in the order they are to run (one transaction;
        durable with `seal_rename`)."""
        self._set_durable(False)
        with self._tx():
            self._db.executemany(
                "INSERT INTO moves (batch, kind, src, dst, etag, headers) VALUES (?,?,?,?,?,?)",
                ((batch, m.kind, m.src, m.dst, m.etag,
                  None if m.headers is None else json.dumps(dict(m.headers), sort_keys=True))
                 for m in moves))

    def seal_rename(self, batch: int) -> None:
        """The plan is complete: make it durable (fsync'ed) before the first step runs."""
        self._set_durable(True)
        self._db.execute("UPDATE renames SET state = ? WHERE batch = ?", (RENAME_PLANNED, batch))

    def end_rename(self, batch: int) -> None:
        """Forget a rename (finished, or cut short before its plan was sealed)."""
        self._set_durable(False)
        with self._tx():
            self._db.execute("DELETE FROM moves WHERE batch = ?", (batch,))
            self._db.execute("DELETE FROM renames WHERE batch = ?", (batch,))

    def renames(self) -> list[RenameRow]:
        """Renames in progress, oldest first (at mount: those a crash cut short)."""
        rows = self._db.execute("SELECT batch, old, new, state FROM renames ORDER BY batch")
        return [RenameRow(*row) for row in rows]

    def moves(self, batch: int, kinds: Iterable[str], *, after: int = 0, limit: int = 500,
              copied: bool | None = None) -> list[Move]:
        """Up to `limit` steps of `kinds` with ids above `after`, in plan order (paged: a
        directory of many keys is never all in memory). `copied` filters on the mark."""
        kinds = tuple(kinds)
        sql = (f"SELECT id, kind, src, dst, etag, headers, copied FROM moves WHERE batch = ?"
               f" AND id > ? AND kind IN ({','.join('?' * len(kinds))})")
        args: list[object] = [batch, after, *kinds]
        if copied is not None:
            sql += " AND copied = ?"
            args.append(int(copied))
        sql += " ORDER BY id LIMIT ?"
        args.append(limit)
        return [Move(kind, src, dst, etag, None if headers is None else json.loads(headers),
                     bool(copied_), id_)
                for id_, kind, src, dst, etag, headers, copied_ in self._db.execute(sql, args)]

    def count_moves(self, batch: int) -> int:
        row = self._db.execute("SELECT count(*) FROM moves WHERE batch = ?", (batch,)).fetchone()
        return int(row[0])

    def mark_copied(self, move_id: int) -> None:
        """The copy of a move landed. Not fsync'ed: a lost mark repeats the copy, or finds
        the source deleted and the destination there, which counts as done."""
        self._set_durable(False)
        self._db.execute("UPDATE moves SET copied = 1 WHERE id = ?", (move_id,))

    def done_move(self, move_id: int) -> None:
        """A step finished (its effect is in the bucket): forget it. Not fsync'ed: a lost
        forget repeats an idempotent step."""
        self._set_durable(False)
        self._db.execute("DELETE FROM moves WHERE id = ?", (move_id,))

    def apply_pending_moves(self, moves: Iterable[Move]) -> None:
        """Run `dirty` and `drop` steps on the `dirty` table and forget them, in one fsync'ed
        transaction. A `dirty` step whose source row is gone does nothing (never deletes the
        row already at `dst`). A moved row starts over as a new file (no base ETag): its bytes
        go up under a name that held no version of them."""
        self._set_durable(True)
        with self._tx():
            for m in moves:
                if m.kind == MOVE_DIRTY:
                    assert m.dst is not None
                    if self._db.execute("SELECT 1 FROM dirty WHERE path = ?",
                                        (m.src,)).fetchone() is not None:
                        self._db.execute("DELETE FROM dirty WHERE path = ?", (m.dst,))
                        self._db.execute(
                            "UPDATE dirty SET path = ?, base_etag = NULL WHERE path = ?",
                            (m.dst, m.src))
                elif m.kind == MOVE_DROP:
                    self._db.execute("DELETE FROM dirty WHERE path = ?", (m.src,))
                else:
                    raise ValueError(f"not a pending-row step: {m.kind}")
                self._db.execute("DELETE FROM moves WHERE id = ?", (m.id,))

    # -- multipart uploads in progress --------------------------------------------------------

    def add_multipart_intent(self, key: str, time_ns: int) -> int:
        """A multipart upload of `key` is about to be created, at local time `time_ns`: durable
        (fsync'ed) before CreateMultipartUpload is sent, so that an upload whose id never
        reaches the journal (a crash before it is written) is still looked for at the next
        mount. Returns the intent's id."""
        self._set_durable(True)
        cur = self._db.execute("INSERT INTO multipart_intents (key, time_ns) VALUES (?, ?)",
                               (key, time_ns))
        assert cur.lastrowid is not None
        return cur.lastrowid

    def add_multipart(self, key: str, upload_id: str, *, replaces: int | None = None) -> None:
        """A multipart upload of `key` was created: durable (fsync'ed) before its first part
        is sent, so that no crash can leave its parts in the bucket unrecorded. `replaces`:
        the intent this upload settles, dropped in the same transaction."""
        self._set_durable(True)
        with self._tx():
            self._db.execute("INSERT OR IGNORE INTO multipart VALUES (?, ?)", (key, upload_id))
            if replaces is not None:
                self._db.execute("DELETE FROM multipart_intents WHERE id = ?", (replaces,))

    def drop_multipart_intents(self, ids: Iterable[int]) -> None:
        """These intents are settled (the store refused the create, or the uploads they may
        have created were looked for and aborted). Not fsync'ed: a lost drop only repeats
        that search at the next mount."""
        self._set_durable(False)
        with self._tx():
            self._db.executemany("DELETE FROM multipart_intents WHERE id = ?",
                                 ((i,) for i in ids))

    def multipart_intents(self) -> list[MultipartIntent]:
        """Every intent not yet settled, by key, oldest first."""
        return [MultipartIntent(*row) for row in self._db.execute(
            "SELECT id, key, time_ns FROM multipart_intents ORDER BY key, id")]

    def drop_multipart(self, key: str, upload_id: str) -> None:
        """The upload was completed or aborted. Not fsync'ed: a lost drop only repeats the
        abort of an upload that is gone, which the store answers as done."""
        self._set_durable(False)
        self._db.execute("DELETE FROM multipart WHERE key = ? AND upload_id = ?",
                         (key, upload_id))

    def multipart_uploads(self) -> list[tuple[str, str]]:
        """(key, upload id) of every recorded upload not known to be finished."""
        return [(k, u) for k, u in self._db.execute(
            "SELECT key, upload_id FROM multipart ORDER BY key, upload_id")]

    # -- helpers -------------------------------------------------------------------------------

    def _tx(self) -> _Transaction:
        return _Transaction(self._db)


class _Transaction:
    """BEGIN IMMEDIATE … COMMIT, rolled back on an error. A cache disk too full for the
    journal to grow fails it with NoSpace (ENOSPC to the caller), nothing committed."""

    def __init__(self, db: sqlite3.Connection) -> None:
        self._db = db

    def __enter__(self) -> None:
        self._db.execute("BEGIN IMMEDIATE")

    def __exit__(self, exc_type: object, exc: BaseException | None, _tb: object) -> None:
        if exc_type is None:
            try:
                self._db.execute("COMMIT")
                return
            except sqlite3.OperationalError as err:
                exc = err
        if self._db.in_transaction:  # a failed COMMIT may have rolled back already
            self._db.execute("ROLLBACK")
        if (isinstance(exc, sqlite3.OperationalError)
                and getattr(exc, "sqlite_errorcode", None) == sqlite3.SQLITE_FULL):
            raise NoSpace("the cache disk is full: the journal cannot grow") from exc
        if exc_type is None and exc is not None:
            raise exc
