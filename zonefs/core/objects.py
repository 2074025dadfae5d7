"""Remote objects as the mount reads them: headers remembered by ETag, bytes through the blob
cache.

`RemoteObjects` answers "what are this object's POSIX attributes" (from the journal's memory of
its ETag, else one request, one at a time per path) and opens read handles: small objects are
downloaded whole into a blob, large ones are read by ranges (`fetch.RangeFetcher`) pinned to the
version that was opened.

Invariants:
- A blob enters the cache under a hash only after the bytes were hashed locally; bytes that do
  not match their `zonefs-sha256` header are dropped with a warning, never served.
- A header's `zonefs-sha256` serves a cached blob only when those bytes were hashed here under
  the object's ETag (`Journal.seen`); otherwise the object is downloaded and checked.
- A cached blob is served only through `BlobStore.open_verified`: one altered on disk is
  dropped and the object is downloaded again, so a read never returns bytes other than the
  object's. The key → blob memory is keyed by ETag: a replaced object never uses the old blob.
- The kernel page cache is kept on open only while the object's ETag is the one opened before.
"""

from __future__ import annotations

import logging
import math
import os
import stat as st
from typing import TYPE_CHECKING

import trio

from zonefs.cache.blobs import BlobStore, Digest, hash_file
from zonefs.cache.dircache import DirCache, Entry
from zonefs.cache.journal import Journal, ObjectRow
from zonefs.common import keys
from zonefs.common.errors import NotFound, RemoteError
from zonefs.common.keys import SHA1_KEY, SHA256_KEY, PosixMeta
from zonefs.core.fetch import RangeFetcher, Spawn
from zonefs.core.values import Handle, Stat

if TYPE_CHECKING:
    from zonefs.common.config import MountOptions
    from zonefs.core.memory import MemoryBudget
    from zonefs.remote.base import ObjectInfo, Remote

log = logging.getLogger(__name__)

#: Objects up to this size are downloaded whole on first open; larger ones fill by ranges.
WHOLE_OBJECT_LIMIT = 8 << 20
#: Objects up to this size are fetched whole instead of HEAD'ed when their headers are needed.
SMALL_OBJECT = 64 << 10
#: Seconds a lookup waits for its key's answer in a batch of prefetched headers before it
#: sends its own request.
PREFETCH_PATIENCE = 0.25


class RemoteObjects:
    """Headers and bytes of remote objects, remembered in the journal and the blob cache."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore, cache: DirCache,
                 opts: MountOptions, *, spawn: Spawn,
                 dir_markers_dropped: bool = False, budget: MemoryBudget | None = None) -> None:
        self.remote, self.journal, self.blobs, self.cache, self.opts = (
            remote, journal, blobs, cache, opts)
        self._spawn = spawn
        self._meta_waits: dict[str, trio.Event] = {}
        self._prefetching: set[trio.Event] = set()  # the waits of `prefetch_headers`
        self._fetchers: dict[tuple[str, str], RangeFetcher] = {}
        self._opened_etag: dict[str, str] = {}
        # The store probe found that the store keeps no metadata on directory markers.
        self.dir_markers_dropped = dir_markers_dropped
        # What ranged reads may hold in memory at once (`-o max_memory`); None: no cap.
        self.budget = budget

    def forget_opened(self, path: str) -> None:
        """`path` changed locally: the kernel's cached pages of it are stale."""
        self._opened_etag.pop(path, None)

    def remember_headers(self, key: str, info: ObjectInfo) -> Entry:
        is_dir = key.endswith("/")
        meta = keys.decode_meta(
            info.metadata, is_dir=is_dir, default_mode=self.opts.dir_mode if is_dir
            else self.opts.file_mode, default_uid=self.opts.uid, default_gid=self.opts.gid,
            fallback_mtime=info.mtime,
        )
        if not is_dir:
            md = info.metadata or {}
            known = self.journal.get_object(key, info.etag)
            self.journal.remember_object(ObjectRow(
                key, info.etag, info.size, meta,
                md.get(SHA256_KEY) or (known.sha256 if known else None),
                md.get(SHA1_KEY) or (known.sha1 if known else None),
            ))
        return Entry(is_dir, info.size, info.etag, info.mtime, meta, info.version_id)

    def remembered_meta(self, path: str, entry: Entry) -> bool:
        """Fill `entry.meta` from what the journal remembers, without a request; whether it
        could."""
        if entry.meta is not None:
            return True
        if not entry.is_dir and entry.etag:
            memo = self.journal.get_object(path, entry.etag)
            if memo is not None:
                entry.meta = memo.meta
                return True
        if entry.is_dir and self.dir_markers_dropped:
            # The store keeps no metadata on `dir/` markers (SeaweedFS): what this machine
            # set last is the best answer there is; a HEAD would only give defaults.
            memo = self.journal.get_object(keys.dir_key(path))
            if memo is not None:
                entry.meta, entry.marker = memo.meta, True
                return True
        return False

    def remember_dir_meta(self, path: str, meta: PosixMeta) -> None:
        """Where the store keeps no headers on markers: the attributes this machine gave the
        directory `path` (what `remembered_meta` answers for it from now on)."""
        key = keys.dir_key(path)
        memo = self.journal.get_object(key)
        self.journal.put_object(ObjectRow(key, memo.etag if memo is not None else "", 0, meta))

    async def ensure_meta(self, path: str, entry: Entry, *, whole: bool = True) -> None:
        """Fill `entry.meta` from memory, the journal or a request (one at a time per path):
        a small object is fetched whole when `whole` (a stat is often followed by a read),
        else only its headers (many at once, for a listing's entries)."""
        if self.remembered_meta(path, entry):
            return
        waiting = self._meta_waits.get(path)
        if waiting is not None:
            # A batch of prefetched headers may reach this key late (a stat out of the
            # listing's order, a slow store): past PREFETCH_PATIENCE, ask for it alone.
            patience = PREFETCH_PATIENCE if waiting in self._prefetching else math.inf
            with trio.move_on_after(patience):
                await waiting.wait()
            if entry.meta is not None:
                return
        event = self._meta_waits[path] = trio.Event()
        try:
            key = keys.dir_key(path) if entry.is_dir else path
            try:
                info = None
                if whole and not entry.is_dir and entry.size <= SMALL_OBJECT:
                    # As cheap as a HEAD, and a later read needs no request at all.
                    try:
                        info, _ = await self.download_whole(key, None)
                    except RemoteError as exc:  # bad bytes: read the headers alone
                        if exc.transient:
                            raise  # the store is failing: a HEAD now would wait once more
                        info = None
                if info is None:
                    info = await self.remote.head(key)
            except NotFound:
                info = None
            if info is None:
                entry.meta = self.default_meta(entry)
                entry.marker = False if entry.is_dir else None
            else:
                self._fill(entry, key, info)
        finally:
            del self._meta_waits[path]
            event.set()

    async def prefetch_headers(self, todo: list[tuple[str, Entry]], *, workers: int) -> None:
        """Fill the headers of many entries at once (a listing's, for `ls -l`): one batch of
        HEADs (`Remote.head_many`) for those neither known nor already being asked for. A
        reader that needs one of them meanwhile waits for its answer instead of asking again;
        an entry whose HEAD failed is left for its reader to ask."""
        wanted: dict[str, tuple[str, Entry, trio.Event]] = {}
        for path, entry in todo:
            if path in self._meta_waits or self.remembered_meta(path, entry):
                continue
            event = self._meta_waits[path] = trio.Event()
            self._prefetching.add(event)
            wanted[keys.dir_key(path) if entry.is_dir else path] = (path, entry, event)

        def answered(key: str, answer: ObjectInfo | Exception) -> None:
            path, entry, event = wanted.pop(key)
            if isinstance(answer, NotFound):
                entry.meta = self.default_meta(entry)
                entry.marker = False if entry.is_dir else None
            elif isinstance(answer, Exception):
                log.debug("headers of %r not prefetched: %s", path, answer)
            else:
                self._fill(entry, key, answer)
            self._done_waiting(path, event)

        try:
            await self.remote.head_many(list(wanted), answered, workers=workers)
        finally:
            for path, _, event in wanted.values():
                self._done_waiting(path, event)

    def _done_waiting(self, path: str, event: trio.Event) -> None:
        if self._meta_waits.get(path) is event:
            del self._meta_waits[path]
        self._prefetching.discard(event)
        event.set()

    def _fill(self, entry: Entry, key: str, info: ObjectInfo) -> None:
        """`entry` takes the headers a request for `key` answered."""
        fresh = self.remember_headers(key, info)
        entry.meta = fresh.meta
        if entry.is_dir:
            entry.marker = True
        else:
            entry.size, entry.etag, entry.version_id = info.size, info.etag, info.version_id

    def default_meta(self, entry: Entry) -> PosixMeta:
        mode = (st.S_IFDIR | self.opts.dir_mode) if entry.is_dir else (
            st.S_IFREG | self.opts.file_mode)
        return PosixMeta.at(mode, self.opts.uid, self.opts.gid, int(entry.mtime * 1e9))


    async def open(self, path: str, s: Stat) -> Handle:
        """A read handle on the object at `path` as it is now (close-to-open)."""
        etag = s.etag or ""
        handle = Handle(path, False, etag=etag)
        handle.keep_cache = self._opened_etag.get(path) == etag
        self._opened_etag[path] = etag
        if await self._open_cached(handle, path, etag):
            return handle
        self.blobs.count_miss()
        if s.size <= WHOLE_OBJECT_LIMIT:
            return await self._download_and_open(handle, path, etag)
        fetcher = self._fetchers.get((path, etag))
        if fetcher is None or fetcher.closed:
            entry = self.cache.entry(path)
            version = entry.version_id if isinstance(entry, Entry) else None
            size = s.size
            if version is None:
                # Ranges of a known version keep reading it after another writer replaces the
                # object; one HEAD per open of a large file is worth it. It also revalidates.
                info = await self.remote.head(path)
                version, size = info.version_id, info.size
                if info.etag != etag:
                    etag = handle.etag = self._opened_etag[path] = info.etag
                    handle.keep_cache = False
                    self.cache.invalidate(path)
            fetcher = self._new_fetcher(path, etag, version, size)
        fetcher.users += 1
        handle.fetcher = fetcher
        return handle

    def _new_fetcher(self, key: str, etag: str, version_id: str | None,
                     size: int) -> RangeFetcher:
        """A ranged reader of `key` at `etag`, shared by every open of the same bytes."""
        fetcher = RangeFetcher(
            self.remote, self.blobs, self._spawn, key=key, etag=etag, version_id=version_id,
            size=size,
            on_complete=lambda digest, p, k=key, e=etag: self._remember_blob(k, e, digest, p),
            budget=self.budget,
        )
        self._fetchers[(key, etag)] = fetcher
        return fetcher

    async def _open_cached(self, handle: Handle, key: str, etag: str) -> bool:
        """Attach the cached blob of `key` at `etag` to `handle`, if there is a good one."""
        memo = self.journal.get_object(key, etag)
        if memo is None or not memo.sha256 or not self.blobs.has(memo.sha256):
            return False
        if not self.journal.seen(memo.sha256, etag):
            # The hash is the header's claim, and these bytes were never hashed here under
            # this ETag: a lying header must not serve another object's blob. Download it.
            return False
        fd = await self.blobs.open_verified(memo.sha256, key=key)
        if fd is not None and os.fstat(fd).st_size != memo.size:
            # The hash is a header's claim that the object's own size contradicts: the
            # download checks the bytes against it and fails the read (EIO) if they differ.
            log.warning("%r: its zonefs-sha256 header names a blob of another size", key)
            os.close(fd)
            fd = None
        if fd is None:
            return False  # altered on disk and dropped, or a wrong claim: read it like any miss
        self.blobs.count_hit(memo.size)
        self._attach_blob(handle, memo.sha256, fd)
        return True

    async def open_version(
        self, path: str, key: str, version_id: str | None, etag: str, size: int
    ) -> Handle:
        """A read handle at `path` on one version of `key`: `version_id`, or with None the
        current version, which must still be the one with `etag`. A version never changes,
        so the kernel may keep its pages, and its blob is shared with every other path and
        version of the same bytes."""
        handle = Handle(path, False, etag=etag, keep_cache=True)
        if await self._open_cached(handle, key, etag):
            return handle
        self.blobs.count_miss()
        if size <= WHOLE_OBJECT_LIMIT:
            _, digest = await self.download_whole(key, etag, version_id)
            fd = await self.blobs.open_verified(digest.sha256, key=key)
            if fd is None:
                raise RemoteError(f"{key}: the downloaded blob vanished from the cache")
            return self._attach_blob(handle, digest.sha256, fd)
        fetcher = self._fetchers.get((key, etag))
        if fetcher is None or fetcher.closed:  # one of the same bytes may be in flight
            fetcher = self._new_fetcher(key, etag, version_id, size)
        fetcher.users += 1
        handle.fetcher = fetcher
        return handle

    async def _download_and_open(self, handle: Handle, path: str, etag: str) -> Handle:
        """Download the object whole into a blob and open it for `handle`."""
        # Whatever is current now: open() is where close-to-open revalidates.
        info, digest = await self.download_whole(path, None)
        if info.etag != etag:
            handle.etag, handle.keep_cache = info.etag, False
            self._opened_etag[path] = info.etag
            self.cache.invalidate(path)
        # Just ingested by this process: no hashing, unless it was dropped meanwhile.
        fd = await self.blobs.open_verified(digest.sha256, key=path)
        if fd is None:
            raise RemoteError(f"{path}: the downloaded blob vanished from the cache")
        return self._attach_blob(handle, digest.sha256, fd)

    async def download_whole(
        self, key: str, etag: str | None, version_id: str | None = None
    ) -> tuple[ObjectInfo, Digest]:
        """GET the whole object (or one version of it) into the blob cache; remember its
        headers and hash."""
        tmp = self.blobs.new_tmp()
        try:
            info = await self.remote.download(key, tmp, version_id, etag)
            if info.size <= SMALL_OBJECT:
                digest = hash_file(tmp)  # microseconds: cheaper than a thread hop
            else:
                digest = await trio.to_thread.run_sync(hash_file, tmp)
        except BaseException:
            os.unlink(tmp)
            raise
        if self.journal.get_object(key, info.etag) is None:
            self.remember_headers(key, info)  # remembers the headers the GET returned
        self._remember_blob(key, info.etag, digest, tmp)
        return info, digest

    def _remember_blob(self, key: str, etag: str, digest: Digest, path: str) -> None:
        """Bytes of `key` at `etag` were downloaded to `path` and hashed: make them a blob."""
        memo = self.journal.get_object(key, etag)
        asserted = memo.sha256 if memo else None
        if asserted and asserted != digest.sha256:
            log.warning("content of %r does not match its zonefs-sha256 header; not cached", key)
            os.unlink(path)
            raise RemoteError(f"{key}: downloaded bytes do not match their checksum")
        self.blobs.ingest(path, digest)
        self.journal.saw(digest.sha256, etag)
        if memo is not None:
            self.journal.put_object(ObjectRow(key, etag, digest.size, memo.meta, digest.sha256,
                                              digest.sha1))

    def _attach_blob(self, handle: Handle, sha256: str, fd: int) -> Handle:
        handle.fd = fd
        handle.pinned = sha256
        self.blobs.pin(sha256)
        return handle

    def release(self, handle: Handle) -> None:
        """Close what a read handle holds: its descriptor, its blob pin, its fetcher."""
        if handle.fd >= 0:
            os.close(handle.fd)
        if handle.pinned:
            self.blobs.unpin(handle.pinned)
        fetcher = handle.fetcher
        if fetcher is not None:
            fetcher.users -= 1
            if fetcher.users <= 0:
                fetcher.close()
                self._fetchers.pop((fetcher.key, fetcher.etag), None)
