"""The content-addressed blob store under the cache dir.

Layout (all 0700 directories, 0600 files):
- `blobs/ab/<sha256>`: immutable bytes named by their SHA-256. Every file, version and copy with
  the same bytes shares one blob.
- `staging/<n>`: mutable local data of files being written (dirty data). Never evicted.
- `tmp/<n>`: downloads in progress; removed at start-up.

Invariants:
- A blob enters `blobs/` under a hash only after its bytes were hashed locally (`ingest` takes
  the digest its caller computed with `hash_file` on exactly that file).
- Eviction is LRU over blobs that are not pinned (open by a handle); staging files are never
  counted or evicted. The store may exceed its capacity while everything is pinned.

Methods that touch the disk in bulk (`hash_file`, `ingest_copy`) are blocking: call them in a
worker thread. The rest are cheap metadata operations.
"""

from __future__ import annotations

import hashlib
import itertools
import logging
import os
import shutil
from collections import OrderedDict, defaultdict
from dataclasses import dataclass

log = logging.getLogger(__name__)

_CHUNK = 1 << 20


@dataclass(frozen=True, slots=True)
class Digest:
    sha256: str
    sha1: str
    size: int


def hash_file(path: str) -> Digest:
    """SHA-256 and SHA-1 of a file's bytes (blocking)."""
    h256, h1, size = hashlib.sha256(), hashlib.sha1(), 0
    with open(path, "rb") as f:
        while chunk := f.read(_CHUNK):
            h256.update(chunk)
            h1.update(chunk)
            size += len(chunk)
    return Digest(h256.hexdigest(), h1.hexdigest(), size)


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
        self._pins: defaultdict[str, int] = defaultdict(int)
        self._lru: OrderedDict[str, int] = OrderedDict()  # sha256 -> size, oldest first
        self._used = 0  # sum of self._lru's sizes
        self._doomed: set[str] = set()  # pinned blobs to drop once unpinned
        self.hits = 0
        self.misses = 0
        self._scan()

    def _scan(self) -> None:
        found = []
        top = os.path.join(self.root, "blobs")
        for shard in os.scandir(top):
            if shard.is_dir():
                for entry in os.scandir(shard.path):
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

    def _fresh(self, sub: str) -> str:
        while True:
            path = os.path.join(self.root, sub, f"{os.getpid()}-{next(self._counter)}")
            try:
                os.close(os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
                return path
            except FileExistsError:
                continue

    def new_staging(self) -> str:
        """A new empty file for dirty data."""
        return self._fresh("staging")

    def new_tmp(self) -> str:
        """A new empty file for a download in progress."""
        return self._fresh("tmp")

    # -- blobs ---------------------------------------------------------------------------------

    def has(self, sha256: str | None) -> bool:
        return sha256 is not None and sha256 in self._lru

    def ingest(self, path: str, digest: Digest) -> str:
        """Move the file `path`, whose bytes hash to `digest`, into the store; return its path."""
        dest = self.blob_path(digest.sha256)
        if digest.sha256 in self._lru:
            os.unlink(path)
        else:
            os.makedirs(os.path.dirname(dest), mode=0o700, exist_ok=True)
            os.chmod(path, 0o600)
            os.replace(path, dest)
            self._lru[digest.sha256] = digest.size
            self._used += digest.size
        self.touch(digest.sha256)
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
        if sha256 in self._lru:
            self._used -= self._lru.pop(sha256)
            with _quiet():
                os.unlink(self.blob_path(sha256))

    @property
    def used(self) -> int:
        return self._used

    def evict(self, keep: str | None = None) -> None:
        """Remove least recently used unpinned blobs (and not `keep`) until the store fits."""
        if self._used <= self.capacity:
            return
        for sha256 in list(self._lru):
            if self._used <= self.capacity:
                break
            if sha256 in self._pins or sha256 == keep:
                continue
            self._used -= self._lru.pop(sha256)
            with _quiet():
                os.unlink(self.blob_path(sha256))
            log.debug("evicted blob %s", sha256)

    def stats(self) -> dict[str, int]:
        return {"blobs": len(self._lru), "cached_bytes": self.used, "hits": self.hits,
                "misses": self.misses}


class _quiet:
    """Ignore a missing file: eviction races with nothing, but a crash may have removed it."""

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: object, *_: object) -> bool:
        return exc_type is FileNotFoundError
