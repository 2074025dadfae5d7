"""The version table of the embedded local zone (`DIR/zone.sqlite`, see `local`): its schema,
the migration of an older format, and the ordered walks over it that listings page through.

The walks hold the zone's lock only while they read one batch of rows (at most `batch`), so
memory stays bounded however many keys the zone holds, and a writer never waits for a whole
listing. They yield rows (`COLUMNS`) and common prefixes; `LocalRemote` turns the rows into
`ObjectInfo` and `VersionInfo`.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator
from typing import Any

#: The format of `zone.sqlite` this code reads and writes (in the `meta` table).
FORMAT = "2"

_VERSIONS_TABLE = """
CREATE TABLE IF NOT EXISTS versions (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    key TEXT NOT NULL,
    version_id TEXT NOT NULL,
    is_latest INTEGER NOT NULL,
    is_delete_marker INTEGER NOT NULL,
    size INTEGER NOT NULL,
    etag TEXT NOT NULL,
    mtime REAL NOT NULL,
    metadata TEXT,
    content_type TEXT,
    blob TEXT
);
"""
_INDEXES = """
CREATE UNIQUE INDEX IF NOT EXISTS versions_id ON versions(key, version_id);
CREATE UNIQUE INDEX IF NOT EXISTS versions_latest ON versions(key) WHERE is_latest = 1;
CREATE INDEX IF NOT EXISTS versions_key ON versions(key, seq DESC);
CREATE INDEX IF NOT EXISTS versions_blob ON versions(blob);
"""
SCHEMA = (
    "CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);"
    + _VERSIONS_TABLE + _INDEXES
)
# Format 1 made version ids unique across keys, which leaves no room for S3's "null" version
# (one per key, in a suspended zone); format 2 makes them unique per key.
MIGRATE_1_TO_2 = (
    "BEGIN IMMEDIATE; ALTER TABLE versions RENAME TO versions_v1;" + _VERSIONS_TABLE
    + "INSERT INTO versions SELECT * FROM versions_v1; DROP TABLE versions_v1;" + _INDEXES
    + "UPDATE meta SET value = '2' WHERE name = 'format'; COMMIT;"
)
COLUMNS = "key, version_id, size, etag, mtime, metadata, content_type, blob, is_delete_marker"


def after_prefix(common: str) -> str:
    """The smallest string above every key that starts with `common` (code-point order, which
    SQLite's binary collation of UTF-8 follows)."""
    return common[:-1] + chr(ord(common[-1]) + 1)


def live_rows(
    db: sqlite3.Connection, lock: threading.Lock, prefix: str, delimiter: str | None,
    token: str | None, *, batch: int,
) -> Iterator[tuple[Any, ...] | str]:
    """Live keys under `prefix` in key order, rolled up into common prefixes, after `token`.

    Memory stays bounded: rows come in batches by key range, and a common prefix is
    skipped over with one new range query instead of scanning the keys under it.
    """
    low, after = prefix, token or ""
    if token and delimiter and delimiter in token[len(prefix):]:
        after = ""
        low = max(low, after_prefix(token))  # the token was a common prefix: skip it
    while True:
        with lock:
            rows = db.execute(
                f"SELECT {COLUMNS} FROM versions WHERE is_latest = 1"
                " AND is_delete_marker = 0 AND key >= ? AND key > ? ORDER BY key LIMIT ?",
                (low, after, batch),
            ).fetchall()
        if not rows:
            return
        for row in rows:
            key = row[0]
            if not key.startswith(prefix):
                return
            rest = key[len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                common = prefix + rest[: cut + len(delimiter or "")]
                yield common
                low, after = after_prefix(common), ""
                break
            yield row
            after = key
        else:
            if len(rows) < batch:
                return


def version_rows(
    db: sqlite3.Connection, lock: threading.Lock, prefix: str, delimiter: str | None,
    marker: tuple[str, str] | None, *, batch: int,
) -> Iterator[tuple[Any, ...] | str]:
    """Versions of keys under `prefix` by key, newest first, rolled up into common
    prefixes, after `marker`; read in batches, so memory stays bounded."""
    key, seq = prefix, None  # resume point: rows after (key, seq) in (key, seq DESC) order
    if marker is not None:
        mkey, mvid = marker
        rest = mkey[len(prefix):]
        if not mvid and delimiter and rest.endswith(delimiter) and delimiter in rest:
            key = after_prefix(mkey)  # the marker was a common prefix: skip it
        elif mvid:
            with lock:
                row = db.execute(
                    "SELECT seq FROM versions WHERE key = ? AND version_id = ?", (mkey, mvid)
                ).fetchone()
            key, seq = mkey, (row[0] if row else None)
            if seq is None:
                key = mkey + "\0"  # the marker's version is gone: go on after its key
        else:
            key = mkey + "\0"
    while True:
        with lock:
            if seq is None:
                rows = db.execute(
                    f"SELECT {COLUMNS}, is_latest, seq FROM versions WHERE key >= ?"
                    " ORDER BY key, seq DESC LIMIT ?", (key, batch),
                ).fetchall()
            else:
                rows = db.execute(
                    f"SELECT {COLUMNS}, is_latest, seq FROM versions"
                    " WHERE (key = ? AND seq < ?) OR key > ? ORDER BY key, seq DESC LIMIT ?",
                    (key, seq, key, batch),
                ).fetchall()
        if not rows:
            return
        for row in rows:
            if not row[0].startswith(prefix):
                return
            rest = row[0][len(prefix):]
            cut = rest.find(delimiter) if delimiter else -1
            if cut >= 0:
                common = prefix + rest[: cut + len(delimiter or "")]
                yield common
                key, seq = after_prefix(common), None
                break
            yield row
            key, seq = row[0], row[10]
        else:
            if len(rows) < batch:
                return
