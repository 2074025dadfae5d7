"""The content-addressed blob store under the cache dir.

Layout (all 0700 directories, 0600 files):
- `blobs/ab/<sha256>`: immutable bytes named by their SHA-256. Every file, version and copy with
  the same bytes shares one blob.
- `staging/<n>`: mutable local data of files being written (dirty data). Never evicted.
- `tmp/<n>`: downloads in progress; removed at start-up.

Invariants:
- A blob enters `blobs/` under a hash only after its bytes were hashed locally (`ingest` takes
  the digest its caller computed with `hash_file` on exactly that file).
- A blob is served only through `open_verified`, which never returns a descriptor on bytes
  that were altered on disk (changed in place, truncated or replaced) since they were hashed:
  - a blob ingested by this process has its stamp (size, mtime_ns, ctime_ns, inode) recorded at
    ingest; an open whose `fstat` matches the stamp is served without hashing (warm reads stay
    as cheap as an `open`);
  - a blob found by the start-up scan has the stamp the last clean shutdown saved (`close`),
    which must still match; a blob without one (after a crash) is hashed in a worker thread
    at its first open in this process, and gets its stamp if it matches;
  - a stamp that no longer matches (anything touched the file) means hashing it again.
  A blob that fails is dropped (`forget`) with a warning naming it and the key being opened, and
  `open_verified` returns None so that the caller downloads the object again. ctime is part of
  the stamp because no user can set it back: resetting mtime after an edit is still caught.
  Verification happens at open: bytes altered under a descriptor already open are not caught.
- `ingest` of bytes whose blob exists but is unverified, stale or doomed replaces the file with
  the freshly hashed one, so a download made to repair a blob is never thrown away.
- Eviction is LRU over blobs that are not pinned (open by a handle); staging files are never
  counted or evicted. The store may exceed its capacity while everything is pinned.

Methods that touch the disk in bulk (`hash_file`, `hash_fd`, `ingest_copy`) are blocking: call
them in a worker thread. `open_verified` is async and hashes in a worker thread itself. The rest
are cheap metadata operations.
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import json
import logging
import os
import shutil
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

import trio

from zonefs.cache.staging import StagingPool, new_private_file

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Digest:
    sha256: str
    sha1: str
    size: int


def hash_file(path: str) -> Digest:
    """SHA-256 and SHA-1 of a file's bytes (blocking)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        return hash_fd(fd)
    finally:
        os.close(fd)


def hash_fd(fd: int) -> Digest:
    """SHA-256 and SHA-1 of the bytes of the open file `fd` (blocking; the offset is unused)."""
    h256, h1, size = hashlib.sha256(), hashlib.sha1(), 0
    while chunk := os.pread(fd, _CHUNK, size):
        h256.update(chunk)
        h1.update(chunk)
        size += len(chunk)
    return Digest(h256.hexdigest(), h1.hexdigest(), size)


#: What `fstat` says of a blob file; any change to its bytes changes it (see the docstring).
Stamp = tuple[int, int, int, int, int]


def _stamp(s: os.stat_result) -> Stamp:
    return (s.st_size, s.st_mtime_ns, s.st_ctime_ns, s.st_ino, s.st_dev)


def _is_sha256(name: str) -> bool:
    return len(name) == 64 and all(c in "0123456789abcdef" for c in name)


class BlobStore:
    """Blobs, staging files and temporary downloads under `root`, bounded by `capacity` bytes."""

    def __init__(self, root: str, *, capacity: int) -> None:
        self.root = root
        self.capacity = capacity
        for sub in ("blobs", "staging", "tmp"):
            os.makedirs(os.path.join(root, sub), mode=0o700, exist_ok=True)
        shutil.rmtree(os.path.join(root, "tmp"), ignore_errors=True)
        os.makedirs(os.path.join(root, "tmp"), mode=0o700, exist_ok=True)
        self._counter = itertools.count()
        self._staging = StagingPool(os.path.join(root, "staging"))
        self._pins: defaultdict[str, int] = defaultdict(int)
        self._lru: OrderedDict[str, int] = OrderedDict()  # sha256 -> size, oldest first
        self._used = 0  # sum of self._lru's sizes
        self._doomed: set[str] = set()  # pinned blobs to drop once unpinned
        # sha256 -> stamp at the last ingest or successful hash; absent: unverified (scanned).
        self._stamps: dict[str, Stamp] = {}
        self._verifying: dict[str, trio.Event] = {}  # one hash at a time per blob
        self.hits = 0
        self.misses = 0
        self.saved_bytes = 0  # bytes of opens served from the cache instead of downloaded
        # Dirty data waiting for upload shares the capacity: clean blobs make room for it.
        self.reserved = 0
        self.verified = 0  # blobs hashed at open (unverified or stale stamp) that were right
        self.corrupt = 0  # blobs dropped because their bytes no longer match their name
        self._scan()
        self._load_stamps()

    def reserve(self, nbytes: int) -> None:
        """Dirty data waiting for upload now takes `nbytes` of the capacity (set by the
        pending ledger): eviction keeps clean blobs within what is left."""
        self.reserved = nbytes

    def count_hit(self, saved: int) -> None:
        """An open was served from a blob instead of a download of `saved` bytes."""
        self.hits += 1
        self.saved_bytes += saved

    def count_miss(self) -> None:
        """An open had to download (its bytes were not cached)."""
        self.misses += 1

    # -- stamps kept across mounts ------------------------------------------------------------

    @property
    def _stamps_path(self) -> str:
        return os.path.join(self.root, "blob-stamps.json")

    def _load_stamps(self) -> None:
        """Take over the stamps the last clean shutdown saved, then delete the file.

        A file touched since then has another ctime, so its stamp no longer matches and it is
        hashed again; after a crash there is no file and every blob is hashed at first open.
        """
        try:
            with open(self._stamps_path, encoding="utf-8") as f:
                saved = json.load(f)
            os.unlink(self._stamps_path)
        except (OSError, ValueError):
            return
        for sha256, stamp in saved.items() if isinstance(saved, dict) else ():
            if sha256 in self._lru and isinstance(stamp, list) and len(stamp) == 5:
                self._stamps[sha256] = tuple(stamp)  # type: ignore[assignment]

    def close(self) -> None:
        """Save the stamps of verified blobs, so that the next mount need not hash them, and
        remove the staging files made ahead that no create took."""
        self._staging.close()
        keep = {sha: list(stamp) for sha, stamp in self._stamps.items()
                if sha in self._lru and sha not in self._doomed}
        tmp = self.new_tmp()
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(keep, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, self._stamps_path)

    def _scan(self) -> None:
        found = []
        top = os.path.join(self.root, "blobs")
        for shard in os.scandir(top):
            if shard.is_dir():
                for entry in os.scandir(shard.path):
                    # Not ours (a stray file): never served, never counted, left alone.
                    if not _is_sha256(entry.name) or entry.name[:2] != shard.name:
                        continue
                    st = entry.stat()
                    found.append((st.st_atime, entry.name, st.st_size))
        for _, name, size in sorted(found):
            self._lru[name] = size
            self._used += size

    # -- names ---------------------------------------------------------------------------------

    def blob_path(self, sha256: str) -> str:
        return os.path.join(self.root, "blobs", sha256[:2], sha256)

    def relpath(self, path: str) -> str:
        return os.path.relpath(path, self.root)

    def abspath(self, rel: str) -> str:
        return os.path.join(self.root, rel)

    def _fresh(self, sub: str, flags: int = os.O_WRONLY) -> tuple[str, int]:
        return new_private_file(os.path.join(self.root, sub), f"{os.getpid()}-", self._counter,
                                flags)

    def new_staging(self) -> str:
        """A new empty file for dirty data."""
        path, fd = self._staging.take()
        os.close(fd)
        return path

    def open_new_staging(self) -> tuple[str, int]:
        """A new empty file for dirty data, and a descriptor open on it for reading and
        writing (one open instead of two: `tar` and `cp` create thousands), made ahead of
        time by the staging pool."""
        return self._staging.take()

    @property
    def staging_pool(self) -> StagingPool:
        """The staging files made ahead of creates (queries only: tests, invariants)."""
        return self._staging

    def new_tmp(self) -> str:
        """A new empty file for a download in progress."""
        path, fd = self._fresh("tmp")
        os.close(fd)
        return path

    # -- blobs ---------------------------------------------------------------------------------

    def drop_source(self, path: str, sha256: str) -> None:
        """Remove the staging file `ingest(keep_source=True)` left. Dropping a link changes
        the inode's ctime, so the blob's stamp is taken again, if it is still that inode
        with the same size and mtime (nothing else touched it)."""
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        stamp = self._stamps.get(sha256)
        if stamp is None:
            return
        try:
            now = _stamp(os.stat(self.blob_path(sha256)))
        except FileNotFoundError:
            return
        if (now[0], now[1], now[3], now[4]) == (stamp[0], stamp[1], stamp[3], stamp[4]):
            self._stamps[sha256] = now

    def has(self, sha256: str | None) -> bool:
        """Whether a blob is listed (it may still fail verification at `open_verified`)."""
        return sha256 is not None and sha256 in self._lru and sha256 not in self._doomed

    def is_verified(self, sha256: str) -> bool:
        """Whether the blob was hashed or ingested by this process (its stamp is known)."""
        return sha256 in self._stamps and sha256 not in self._doomed

    def _stamp_matches(self, sha256: str) -> bool:
        stamp = self._stamps.get(sha256)
        if stamp is None or sha256 in self._doomed:
            return False
        try:
            return _stamp(os.stat(self.blob_path(sha256))) == stamp
        except FileNotFoundError:
            return False

    def ingest(self, path: str, digest: Digest, *, keep_source: bool = False) -> str:
        """Move the file `path`, whose bytes hash to `digest`, into the store; return its path.

        When the blob is already there and known good, `path` is deleted; an existing blob not
        known good (unverified, touched since, or doomed) is replaced by `path`, hashed just now.
        With `keep_source`, `path` stays where it is (the blob is a hard link to it) until
        `drop_source`; it must not be written meanwhile.
        """
        sha = digest.sha256
        dest = self.blob_path(sha)
        if sha in self._lru and self._stamp_matches(sha):
            if not keep_source:
                os.unlink(path)
        else:
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            os.chmod(path, 0o600)
            if keep_source:
                link = f"{dest}.{os.getpid()}-{next(self._counter)}"
                os.link(path, link)
                os.replace(link, dest)
            else:
                os.replace(path, dest)  # readers of a replaced blob keep their descriptor
            self._used += digest.size - self._lru.get(sha, 0)
            self._lru[sha] = digest.size
            self._doomed.discard(sha)
            self._stamps[sha] = _stamp(os.stat(dest))
        self.touch(sha)
        self.evict(keep=digest.sha256)  # the caller is about to open it
        return dest

    def ingest_copy(self, path: str, digest: Digest) -> str:
        """Copy the file `path` into the store (blocking; its bytes must hash to `digest`)."""
        if digest.sha256 in self._lru:
            self.touch(digest.sha256)
            return self.blob_path(digest.sha256)
        tmp = self.new_tmp()
        shutil.copyfile(path, tmp)
        return self.ingest(tmp, digest)

    async def open_verified(self, sha256: str, *, key: str = "") -> int | None:
        """A read-only descriptor on the blob `sha256`, or None when there is no good blob.

        Hashes the blob (in a worker thread) unless its stamp shows it unchanged since it was
        last hashed or ingested by this process; a blob that fails is dropped with a warning
        naming `key`, the object being opened. The caller pins the blob and closes the fd.
        """
        while True:
            while (busy := self._verifying.get(sha256)) is not None:
                await busy.wait()  # someone else hashes it: use their verdict
            if not self.has(sha256):
                return None
            try:
                fd = os.open(self.blob_path(sha256), os.O_RDONLY)
            except FileNotFoundError:
                self._reject(sha256, key, "is missing")
                return None
            try:
                failure = await self._check(sha256, fd)
            except BaseException:
                os.close(fd)
                raise
            if failure is None:
                return fd
            os.close(fd)
            if self._stamp_matches(sha256):
                continue  # an ingest replaced it with good bytes while it was hashed
            if failure:
                self._reject(sha256, key, failure)
            return None

    async def _check(self, sha256: str, fd: int) -> str | None:
        """None when `fd` holds the blob's bytes; else why not ("" when it merely vanished)."""
        before = _stamp(os.fstat(fd))
        recorded = self._stamps.get(sha256)
        if before == recorded:
            return None
        if recorded is not None and before[0] != recorded[0]:
            return f"changed size ({recorded[0]} -> {before[0]} bytes)"
        event = self._verifying[sha256] = trio.Event()
        try:
            digest = await trio.to_thread.run_sync(hash_fd, fd)
            after = _stamp(os.fstat(fd))
        finally:
            del self._verifying[sha256]
            event.set()
        if after != before:
            return "changed while it was verified"
        if digest.sha256 != sha256:
            return "does not match its name"
        if not self.has(sha256):
            return ""  # evicted meanwhile: nothing wrong with the bytes, but no pin possible
        with contextlib.suppress(FileNotFoundError):
            if _stamp(os.stat(self.blob_path(sha256))) == after:
                # Still the file hashed (an ingest meanwhile would have stamped its own).
                self._stamps[sha256] = after
        self.verified += 1
        return None

    def _reject(self, sha256: str, key: str, reason: str) -> None:
        log.warning("cached blob %s %s%s; dropped, the object will be downloaded again",
                    sha256, reason, f" (opening {key!r})" if key else "")
        self.corrupt += 1
        self.forget(sha256)

    def touch(self, sha256: str) -> None:
        if sha256 in self._lru:
            self._lru.move_to_end(sha256)

    def pin(self, sha256: str) -> None:
        self._pins[sha256] += 1
        self.touch(sha256)

    def unpin(self, sha256: str) -> None:
        self._pins[sha256] -= 1
        if self._pins[sha256] <= 0:
            del self._pins[sha256]
            if sha256 in self._doomed:
                self._doomed.discard(sha256)
                self.forget(sha256)
            else:
                self.evict()

    def forget(self, sha256: str) -> None:
        """Drop a blob found to be wrong (unless pinned, when it is dropped at unpin time)."""
        if sha256 in self._pins:
            self._doomed.add(sha256)
            return
        self._stamps.pop(sha256, None)
        if sha256 in self._lru:
            self._used -= self._lru.pop(sha256)
            with _quiet():
                os.unlink(self.blob_path(sha256))

    @property
    def used(self) -> int:
        return self._used

    def evict(self, keep: str | None = None) -> None:
        """Remove least recently used unpinned blobs (and not `keep`) until the store, with the
        bytes reserved for dirty data, fits its capacity."""
        limit = self.capacity - self.reserved
        if self._used <= limit:
            return
        for sha256 in list(self._lru):
            if self._used <= limit:
                break
            if sha256 in self._pins or sha256 == keep:
                continue
            self._used -= self._lru.pop(sha256)
            self._stamps.pop(sha256, None)
            with _quiet():
                os.unlink(self.blob_path(sha256))
            log.debug("evicted blob %s", sha256)

    def stats(self) -> dict[str, int]:
        return {"blobs": len(self._lru), "cached_bytes": self.used, "hits": self.hits,
                "misses": self.misses, "saved_bytes": self.saved_bytes,
                "verified": self.verified, "corrupt": self.corrupt}


class _quiet:
    """Ignore a missing file: eviction races with nothing, but a crash may have removed it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, *_: object) -> bool:
        return exc_type is FileNotFoundError
