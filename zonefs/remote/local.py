"""`LocalRemote`: the embedded local zone `file:///DIR`, a versioned object store on local disk.

It behaves like an S3 bucket with versioning Enabled, behind the same `Remote` interface, so
anyone can try zonefs (and the demo runs) without a cloud account.

Layout:
- `DIR/zone.sqlite` (WAL, synchronous=FULL): one row per version in `versions`, with `seq`
  giving the order of writes, `is_latest` marking each key's current version, delete markers as
  rows without a body.
- `DIR/data/ab/<blob>`: the bodies, named by a random 32-hex blob name (`ab` = its first two
  characters). Blobs are immutable; copies share their source's blob.

Invariants:
- Crash safety: a body is written to `DIR/data/tmp/`, fsync'ed and renamed into place before
  the transaction that adds its row commits, so a committed row always has its body. A crash
  in between leaves at most an unreferenced blob (harmless) or a temp file (removed at open).
- Exactly one row per key has `is_latest = 1`; it is switched in the same transaction that
  inserts the new version.
- Version ids are unique and sort in write order (nanosecond time, forced monotonic, plus
  random bits); callers still treat them as opaque strings.
- Like S3, a key is at most `MAX_KEY_BYTES` bytes (UTF-8): a write of a longer one is refused
  (`Refused`, KeyTooLongError) before anything is stored, so that a zone holds only keys it
  could hand to any S3 store.
- Files are created 0600 and directories 0700. The SQLite connection is shared by the worker
  threads and guarded by one lock.

This module owns the zone's files and its writes; `local_versions` holds the table's schema and
the batched walks listings page through.
"""

from __future__ import annotations

import contextlib
import errno
import functools
import hashlib
import json
import os
import secrets
import sqlite3
import threading
import time
import urllib.parse
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

from zonefs.common.errors import (
    BucketMissing,
    ChecksumMismatch,
    NoSpace,
    NotFound,
    PreconditionFailed,
    Refused,
    RemoteError,
)
from zonefs.remote.base import (
    VERSIONING_ENABLED,
    VERSIONING_SUSPENDED,
    ListPage,
    ObjectInfo,
    Remote,
    VersionInfo,
    VersionPage,
    report_progress,
)
from zonefs.remote.local_versions import (
    COLUMNS,
    FORMAT,
    MIGRATE_1_TO_2,
    SCHEMA,
    live_rows,
    version_rows,
)

if TYPE_CHECKING:
    from zonefs.common.config import ZoneConfig
    from zonefs.remote.base import MultipartLog

_CHUNK = 1 << 20
_DEFAULT_TYPE = "binary/octet-stream"  # what S3 reports for objects stored without a type
_BATCH = 1000
_STALE_TEMP_AGE = 24 * 3600.0  # seconds; a temp body older than this belongs to a dead writer
#: S3's limit on the length of a key, in bytes of UTF-8.
MAX_KEY_BYTES = 1024

_F = TypeVar("_F", bound=Callable[..., Any])


def _guarded(fn: _F) -> _F:
    """The local zone's error table: file and database errors leave as zonefs errors."""

    @functools.wraps(fn)
    def wrapper(self: LocalRemote, *args: Any, **kwargs: Any) -> Any:
        try:
            return fn(self, *args, **kwargs)
        except OSError as exc:
            cls = NoSpace if exc.errno == errno.ENOSPC else RemoteError
            raise cls(f"{self.description}: {exc.strerror or exc}") from exc
        except sqlite3.Error as exc:
            raise RemoteError(f"{self.description}: zone database error: {exc}") from exc

    return cast(_F, wrapper)


class LocalRemote(Remote):
    """A versioned object store in a local directory."""

    def __init__(self, zone: ZoneConfig, *, max_requests: int = 16, create: bool = False,
                 io_timeout: float | None = None,
                 multipart_log: MultipartLog | None = None) -> None:
        super().__init__(max_requests=max_requests, io_timeout=io_timeout,
                         multipart_log=multipart_log)
        self.zone = zone
        self.root = zone.local_dir
        self.description = zone.label
        self._db_path = os.path.join(self.root, "zone.sqlite")
        self._data = os.path.join(self.root, "data")
        self._tmp = os.path.join(self._data, "tmp")
        self._lock = threading.Lock()
        self._last_ns = 0
        if create and not os.path.isfile(self._db_path):
            # A new zone goes only where nothing else is: a missing or empty directory.
            if os.path.isdir(self.root) and os.listdir(self.root):
                raise self._missing(": the directory is not empty and holds no zone")
            self._create()
        elif not os.path.isfile(self._db_path):
            raise self._missing()
        try:
            self._db = sqlite3.connect(
                f"file:{urllib.parse.quote(self._db_path)}?mode=rw", uri=True,
                check_same_thread=False,
                isolation_level=None,  # explicit BEGIN IMMEDIATE … COMMIT below
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            if create:
                self._db.executescript(SCHEMA)
                self._db.execute(
                    "INSERT OR IGNORE INTO meta(name, value) VALUES('format', ?)", (FORMAT,)
                )
            row = self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            if row is not None and row[0] == "1":
                self._db.executescript(MIGRATE_1_TO_2)
                row = ("2",)
        except sqlite3.DatabaseError as exc:
            raise self._missing(f" ({exc})") from exc
        if row is None or not os.path.isdir(self._data):
            self._db.close()
            raise self._missing()
        if row[0] != FORMAT:
            self._db.close()
            raise self._missing(f" (format {row[0]} is newer than this zonefs understands)")
        self._remove_stale_temps()

    def _remove_stale_temps(self) -> None:
        """Remove bodies of writes that never committed. Only old ones: another process may
        have this zone open and be writing right now."""
        os.makedirs(self._tmp, mode=0o700, exist_ok=True)
        cutoff = time.time() - _STALE_TEMP_AGE
        for entry in os.scandir(self._tmp):
            try:
                if entry.stat().st_mtime < cutoff:
                    os.unlink(entry.path)
            except FileNotFoundError:
                pass

    def _create(self) -> None:
        try:
            os.makedirs(os.path.dirname(self.root), exist_ok=True)  # the user's: default mode
            for path in (self.root, self._data, self._tmp):
                os.makedirs(path, mode=0o700, exist_ok=True)  # mode applies to the leaf only
            if not os.path.exists(self._db_path):
                # Created 0600 here: SQLite gives its -wal and -shm files the same mode.
                os.close(os.open(self._db_path, os.O_CREAT | os.O_WRONLY, 0o600))
        except OSError as exc:
            raise RemoteError(f"cannot create a zone at {self.root}: {exc.strerror}") from exc

    def _missing(self, detail: str = "") -> BucketMissing:
        return BucketMissing(f"no zone at {self.root}{detail}")

    def close(self) -> None:
        with self._lock:
            self._db.close()

    def object_uri(self, key: str) -> str:
        return f"file://{self.root}/{key}"

    # -- storage helpers ----------------------------------------------------------------------

    def _blob_path(self, blob: str) -> str:
        return os.path.join(self._data, blob[:2], blob)

    def _new_version_id(self) -> str:
        """Unique, and increasing in write order (called under the lock)."""
        self._last_ns = max(time.time_ns(), self._last_ns + 1)
        return f"{self._last_ns:016x}{secrets.token_hex(4)}"

    def _store_body(self, chunks: Iterator[bytes]) -> tuple[str, int, str]:
        """Write a body durably under a new blob name; returns (blob, size, md5 hex)."""
        blob = secrets.token_hex(16)
        tmp = os.path.join(self._tmp, blob)
        md5, size = hashlib.md5(usedforsecurity=False), 0
        fd = os.open(tmp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        try:
            with os.fdopen(fd, "wb") as f:
                for chunk in chunks:
                    f.write(chunk)
                    md5.update(chunk)
                    size += len(chunk)
                f.flush()
                os.fsync(f.fileno())
            final_dir = os.path.dirname(self._blob_path(blob))
            os.makedirs(final_dir, mode=0o700, exist_ok=True)
            os.rename(tmp, self._blob_path(blob))
            dir_fd = os.open(final_dir, os.O_RDONLY)
            try:
                os.fsync(dir_fd)  # the rename must be durable before the row commits
            finally:
                os.close(dir_fd)
        except BaseException:
            if os.path.exists(tmp):
                os.unlink(tmp)
            raise
        return blob, size, md5.hexdigest()

    def _add_version(
        self, key: str, *, size: int, etag: str, metadata: Mapping[str, str] | None,
        content_type: str | None, blob: str | None, if_match: str | None = None,
        if_none_match: bool = False,
    ) -> ObjectInfo:
        """Make a new current version of `key` (a delete marker when `blob` is None).

        In a suspended zone the new version is the "null" version, replacing an earlier null
        version of the key and keeping every other one, as S3 does. The conditions are
        checked in the write's transaction, so two conditional writers cannot both win.
        """
        self._check_key(key)
        meta = None if blob is None else {k.lower(): v for k, v in (metadata or {}).items()}
        ctype = None if blob is None else (content_type or _DEFAULT_TYPE)
        dropped: list[str] = []
        with self._lock:
            self._ensure_present()
            suspended = self._versioning_locked() == VERSIONING_SUSPENDED
            vid = "null" if suspended else self._new_version_id()
            mtime = time.time()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                if if_match or if_none_match:
                    # Inside the write transaction: atomic even against another process.
                    self._check_conditions_locked(key, if_match, if_none_match)
                if suspended:
                    dropped = self._remove_version_locked(key, "null", relink=False)
                self._db.execute(
                    "UPDATE versions SET is_latest = 0 WHERE key = ? AND is_latest = 1", (key,)
                )
                self._db.execute(
                    "INSERT INTO versions(key, version_id, is_latest, is_delete_marker, size,"
                    " etag, mtime, metadata, content_type, blob)"
                    " VALUES (?, ?, 1, ?, ?, ?, ?, ?, ?, ?)",
                    (key, vid, int(blob is None), size, etag, mtime,
                     None if meta is None else json.dumps(meta, sort_keys=True), ctype, blob),
                )
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._unlink_blobs(dropped)
        return ObjectInfo(key, size, etag, mtime, vid, meta, ctype)

    def _check_key(self, key: str) -> None:
        """Refuse a key S3 would refuse for its length, with S3's answer."""
        size = len(key.encode("utf-8", "surrogateescape"))
        if size > MAX_KEY_BYTES:
            message = f"Your key is too long ({size} bytes; at most {MAX_KEY_BYTES})"
            raise Refused(f"{self.object_uri(key)}: KeyTooLongError {message}",
                          code="KeyTooLongError", store_message=message)

    def _check_conditions_locked(self, key: str, if_match: str | None,
                                 if_none_match: bool) -> None:
        """S3's rules: a current delete marker counts as no object; If-Match on no object is
        NotFound (404), a different ETag PreconditionFailed (412)."""
        row = self._db.execute(
            "SELECT etag FROM versions WHERE key = ? AND is_latest = 1 AND is_delete_marker = 0",
            (key,),
        ).fetchone()
        if if_none_match and row is not None:
            raise PreconditionFailed(f"{self.object_uri(key)} already exists")
        if if_match:
            if row is None:
                raise NotFound(f"{self.object_uri(key)}: no such object")
            if row[0] != if_match.strip('"'):
                raise PreconditionFailed(f"{self.object_uri(key)} changed on the store")

    def _commit_body(
        self, key: str, chunks: Iterator[bytes], metadata: Mapping[str, str],
        content_type: str | None, cancel: threading.Event | None, *, if_match: str | None,
        if_none_match: bool, checksum_sha256: str | None,
    ) -> ObjectInfo:
        """Store a body and make it the current version of `key`, or leave nothing: a
        cancel, a lost condition or a checksum that does not match removes the blob."""
        sha256 = hashlib.sha256()

        def hashed() -> Iterator[bytes]:
            for chunk in chunks:
                if checksum_sha256:
                    sha256.update(chunk)
                yield chunk

        self._ensure_present()
        self._check_key(key)
        blob, size, etag = self._store_body(hashed())
        try:
            if cancel is not None and cancel.is_set():
                raise RemoteError(f"upload of {self.object_uri(key)} cancelled")
            if checksum_sha256 and sha256.hexdigest() != checksum_sha256.lower():
                raise ChecksumMismatch(f"{self.object_uri(key)}: the bytes do not have the "
                                       "SHA-256 sent with them (BadDigest)")
            return self._add_version(key, size=size, etag=etag, metadata=metadata,
                                     content_type=content_type, blob=blob, if_match=if_match,
                                     if_none_match=if_none_match)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._blob_path(blob))
            raise

    def _versioning_locked(self) -> str:
        row = self._db.execute("SELECT value FROM meta WHERE name = 'versioning'").fetchone()
        return row[0] if row else VERSIONING_ENABLED

    def set_versioning(self, state: str) -> None:
        """Enable or suspend versioning (PutBucketVersioning); a zone starts enabled."""
        if state not in (VERSIONING_ENABLED, VERSIONING_SUSPENDED):
            raise ValueError(f"versioning can be {VERSIONING_ENABLED} or "
                             f"{VERSIONING_SUSPENDED}, not {state!r}")
        with self._lock:
            self._db.execute("INSERT OR REPLACE INTO meta(name, value) VALUES('versioning', ?)",
                             (state,))

    def _remove_version_locked(self, key: str, version_id: str, *, relink: bool) -> list[str]:
        """Delete one version row inside the caller's transaction; returns the blobs no row
        uses any more (to unlink after the commit). With `relink`, the newest remaining
        version becomes current when the removed one was."""
        row = self._db.execute(
            "SELECT seq, is_latest, blob FROM versions WHERE key = ? AND version_id = ?",
            (key, version_id),
        ).fetchone()
        if row is None:
            return []
        seq, was_latest, blob = row
        self._db.execute("DELETE FROM versions WHERE seq = ?", (seq,))
        if relink and was_latest:
            self._db.execute(
                "UPDATE versions SET is_latest = 1 WHERE seq ="
                " (SELECT MAX(seq) FROM versions WHERE key = ?)", (key,)
            )
        if blob is None:
            return []
        used = self._db.execute("SELECT 1 FROM versions WHERE blob = ? LIMIT 1",
                                (blob,)).fetchone()
        return [] if used else [blob]

    def _unlink_blobs(self, blobs: list[str]) -> None:
        for blob in blobs:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self._blob_path(blob))

    def _ensure_present(self) -> None:
        if not os.path.isdir(self._data):
            raise self._missing()

    def _row(self, key: str, version_id: str | None) -> tuple[Any, ...]:
        with self._lock:
            if version_id:
                row = self._db.execute(
                    f"SELECT {COLUMNS} FROM versions WHERE key = ? AND version_id = ?",
                    (key, version_id),
                ).fetchone()
            else:
                row = self._db.execute(
                    f"SELECT {COLUMNS} FROM versions WHERE key = ? AND is_latest = 1", (key,)
                ).fetchone()
        if row is None or row[-1]:  # missing, or a delete marker
            raise NotFound(f"{self.object_uri(key)}: no such object")
        return row

    @staticmethod
    def _to_info(row: tuple[Any, ...], with_metadata: bool = True) -> ObjectInfo:
        key, vid, size, etag, mtime, meta, ctype, _blob, _marker = row
        metadata = (json.loads(meta) if meta else {}) if with_metadata else None
        return ObjectInfo(key, size, etag, mtime, vid, metadata,
                          ctype if with_metadata else None)

    def _open_body(self, key: str, row: tuple[Any, ...], if_match: str | None) -> Any:
        if if_match and row[3] != if_match.strip('"'):
            raise PreconditionFailed(f"{self.object_uri(key)} changed on the store")
        try:
            return open(self._blob_path(row[7]), "rb")
        except FileNotFoundError:
            raise RemoteError(f"{self.object_uri(key)}: the body of version {row[1]} is missing "
                              f"from {self._data}") from None

    # -- Remote -------------------------------------------------------------------------------

    @_guarded
    def _check(self) -> None:
        with self._lock:
            self._ensure_present()
            try:
                self._db.execute("SELECT value FROM meta WHERE name = 'format'").fetchone()
            except sqlite3.Error as exc:
                raise self._missing(f" ({exc})") from exc
        if not os.path.isfile(self._db_path):
            raise self._missing()

    @_guarded
    def _head(self, key: str, version_id: str | None = None) -> ObjectInfo:
        return self._to_info(self._row(key, version_id))

    @_guarded
    def _list(
        self, prefix: str, delimiter: str | None, token: str | None, max_keys: int
    ) -> ListPage:
        page = ListPage()
        if max_keys <= 0:
            return page
        last = ""
        for entry in live_rows(self._db, self._lock, prefix, delimiter, token, batch=_BATCH):
            if len(page.objects) + len(page.prefixes) == max_keys:
                # One more entry exists: the page is truncated, and resumes after `last`.
                return ListPage(page.objects, page.prefixes, next_token=last)
            if isinstance(entry, str):
                page.prefixes.append(entry)
                last = entry
            else:
                page.objects.append(self._to_info(entry, with_metadata=False))
                last = entry[0]
        return page

    @_guarded
    def _get_range(
        self, key: str, start: int, length: int, version_id: str | None = None,
        if_match: str | None = None,
    ) -> bytes:
        row = self._row(key, version_id)
        if length <= 0 or start >= row[2]:
            if if_match and row[3] != if_match.strip('"'):
                raise PreconditionFailed(f"{self.object_uri(key)} changed on the store")
            return b""
        with self._open_body(key, row, if_match) as f:
            f.seek(start)
            return f.read(length)

    @_guarded
    def _download(
        self, key: str, dest: str, version_id: str | None = None, if_match: str | None = None
    ) -> ObjectInfo:
        row = self._row(key, version_id)
        with self._open_body(key, row, if_match) as src, open(dest, "wb") as out:
            while chunk := src.read(_CHUNK):
                report_progress()  # a long copy is not a stalled one (Remote.io_timeout)
                out.write(chunk)
        return self._to_info(row)

    @_guarded
    def _upload(
        self,
        key: str,
        src: str,
        metadata: Mapping[str, str],
        content_type: str | None,
        cancel: threading.Event | None = None,
        *,
        if_match: str | None = None,
        if_none_match: bool = False,
        checksum_sha256: str | None = None,
        payload_sha256: str | None = None,  # nothing is signed here: not needed
    ) -> ObjectInfo:
        def chunks() -> Iterator[bytes]:
            with open(src, "rb") as f:
                while True:
                    if cancel is not None and cancel.is_set():
                        raise RemoteError(f"upload of {self.object_uri(key)} cancelled")
                    chunk = f.read(_CHUNK)
                    if not chunk:
                        return
                    yield chunk

        return self._commit_body(key, chunks(), metadata, content_type, cancel,
                                 if_match=if_match, if_none_match=if_none_match,
                                 checksum_sha256=checksum_sha256)

    @_guarded
    def _put_bytes(
        self, key: str, data: bytes, metadata: Mapping[str, str], content_type: str | None,
        *, if_match: str | None = None, if_none_match: bool = False,
        checksum_sha256: str | None = None,
    ) -> ObjectInfo:
        return self._commit_body(key, iter([data]), metadata, content_type, None,
                                 if_match=if_match, if_none_match=if_none_match,
                                 checksum_sha256=checksum_sha256)

    @_guarded
    def _head_checksum(self, key: str) -> str | None:
        # The zone keeps no checksum column: the SHA-256 is computed from the stored body,
        # which is what a store that verified the bytes would report.
        row = self._row(key, None)
        sha256 = hashlib.sha256()
        with self._open_body(key, row, None) as f:
            while chunk := f.read(_CHUNK):
                sha256.update(chunk)
        return sha256.hexdigest()

    @_guarded
    def _copy(
        self,
        src_key: str,
        dst_key: str,
        metadata: Mapping[str, str] | None = None,
        content_type: str | None = None,
        src_version_id: str | None = None,
    ) -> ObjectInfo:
        row = self._row(src_key, src_version_id)
        src = self._to_info(row)
        # Blobs are immutable and never removed while a version uses them, so the copy shares it.
        return self._add_version(
            dst_key, size=src.size, etag=src.etag,
            metadata=src.metadata if metadata is None else metadata,
            content_type=content_type or src.content_type, blob=row[7],
        )

    @_guarded
    def _delete(self, key: str) -> None:
        # Like S3 with versioning on: always a new delete marker, even for a missing key (in a
        # suspended zone the marker replaces the null version).
        self._add_version(key, size=0, etag="", metadata=None, content_type=None, blob=None)

    @_guarded
    def _bucket_versioning(self) -> str:
        with self._lock:
            self._ensure_present()
            return self._versioning_locked()

    @_guarded
    def _delete_version(self, key: str, version_id: str) -> None:
        with self._lock:
            self._ensure_present()
            self._db.execute("BEGIN IMMEDIATE")
            try:
                dropped = self._remove_version_locked(key, version_id, relink=True)
                self._db.execute("COMMIT")
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
        self._unlink_blobs(dropped)

    @_guarded
    def _list_versions(
        self, prefix: str, delimiter: str | None, marker: tuple[str, str] | None,
        max_keys: int,
    ) -> VersionPage:
        page = VersionPage()
        last: tuple[str, str] | None = None
        for entry in version_rows(self._db, self._lock, prefix, delimiter, marker,
                                  batch=_BATCH):
            if len(page.versions) + len(page.prefixes) == max_keys:
                return VersionPage(page.versions, page.prefixes, next_marker=last)
            if isinstance(entry, str):
                page.prefixes.append(entry)
                last = (entry, "")
            else:
                version = self._to_version(entry)
                page.versions.append(version)
                last = (version.key, version.version_id or "null")
        return page

    @classmethod
    def _to_version(cls, row: tuple[Any, ...]) -> VersionInfo:
        """A version from a row of `version_rows` (`COLUMNS`, is_latest, seq)."""
        info = cls._to_info(row[:9])
        return VersionInfo(
            info.key, info.size, info.etag, info.mtime, info.version_id,
            None if row[8] else info.metadata, info.content_type,
            is_latest=bool(row[9]), is_delete_marker=bool(row[8]),
        )
