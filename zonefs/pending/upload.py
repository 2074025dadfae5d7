"""One upload: a pending row's change sent to the store, and what came of it.

`Uploader.send` takes a snapshot of a pending row (`UploadJob`) and returns an outcome:
`Landed` (the object it made), `KeptAsConflict` (another writer replaced the object since the
edit began: the local bytes went to a conflict copy beside it) or `NOTHING` (nothing to send).
It changes no pending state: the ledger settles the outcome. It owns only what it sends: the
SHA-256 of the last uploads tried per path (so an object holding one is known as this mount's
own, not another writer's), the Kachery mirror copies in flight, and its counters.

Invariants:
- A new-bytes upload is written over the version the edit started from (`base_etag`) only:
  conditional where the store enforces it (If-Match / If-None-Match: *), else compared
  first. A file deleted in the bucket meanwhile is written anew; `ANY_OBJECT` replaces
  whatever is there.
- The attempt (its SHA-256) is journaled before the bytes are sent: an upload cancelled too
  late lands without telling us, and is then recognised as ours.
- A conflict copy is stored before the outcome is returned: the ledger drops the row only
  after, so a crash in between makes another conflict copy, never none.
"""

from __future__ import annotations

import collections
import functools
import logging
import os
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING

import trio

from zonefs.cache.blobs import Digest, hash_file
from zonefs.cache.journal_schema import ObjectRow
from zonefs.common import keys
from zonefs.common.errors import NotFound, PreconditionFailed
from zonefs.common.keys import SHA1_KEY, SHA256_KEY, PosixMeta
from zonefs.pending.outcome import NOTHING, KeptAsConflict, Landed
from zonefs.pending.rows import ANY_OBJECT, Kind

if TYPE_CHECKING:
    import threading
    from collections.abc import Callable

    from zonefs.cache.blobs import BlobStore
    from zonefs.cache.journal import Journal
    from zonefs.cache.streamhash import StreamHasher
    from zonefs.pending.outcome import Outcome
    from zonefs.pending.rows import DirtyFile
    from zonefs.remote.base import ObjectInfo, Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class UploadJob:
    """What one upload sends: a pending row as it was when the upload began."""

    path: str
    kind: Kind
    data: str | None  # the local bytes' absolute path (new bytes, symlink)
    source: str | None  # the key a copy reads
    meta: PosixMeta
    base_etag: str | None
    generation: int
    hasher: StreamHasher | None = None  # the digest of `data` as it was written, if taken

    @classmethod
    def of(cls, df: DirtyFile, abspath: Callable[[str], str]) -> UploadJob:
        row = df.row
        return cls(row.path, df.kind, abspath(row.data) if row.data is not None else None,
                   row.source, row.meta, row.base_etag, row.generation, df.hasher)


def digest_of(src: str, hasher: StreamHasher | None) -> Digest:
    """The digest of the file `src`: the one taken as it was written when that covers the
    whole file, else hashed now (blocking: run it in a thread)."""
    if hasher is not None:
        digest = hasher.result(os.stat(src).st_size)
        if digest is not None:
            return digest
    return hash_file(src)


class _Conflict(Exception):
    """The object changed in the bucket since the local edit began."""


class Uploader:
    """Sends one pending change and says what came of it; see the module docstring."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore,
                 capabilities: Capabilities, *, kachery_mirror: bool,
                 is_pending: Callable[[str], bool]) -> None:
        self.remote, self.journal, self.blobs = remote, journal, blobs
        self._is_pending = is_pending  # whether a path has a pending row (conflict names)
        self.capabilities = capabilities
        self.kachery_mirror = kachery_mirror
        self.uploaded_bytes = 0
        self.conflicts = 0  # conflict copies made
        self._mirroring: set[str] = set()  # mirror keys being copied right now
        # SHA-256 of the last uploads started per path (see `_own_landed_upload`).
        self._attempted: dict[str, collections.deque[str]] = {
            path: collections.deque(shas, maxlen=8) for path, shas in journal.attempts().items()}

    def hash_headers(self, key: str, etag: str | None) -> dict[str, str]:
        """The content-ID headers of `key` at `etag`, when known, to keep them on a copy."""
        memo = self.journal.get_object(key, etag)
        out = {}
        if memo is not None and memo.sha256:
            out[SHA256_KEY] = memo.sha256
        if memo is not None and memo.sha1:
            out[SHA1_KEY] = memo.sha1
        return out

    async def send(self, job: UploadJob, cancel: threading.Event) -> Outcome:
        """Send the change `job` describes; see the module docstring."""
        if job.kind is Kind.DIRECTORY:
            info = await self.remote.put_bytes(keys.dir_key(job.path), b"",
                                               keys.encode_meta(job.meta), keys.DIR_CONTENT_TYPE)
            return Landed(info, None)
        if job.kind is Kind.UNCHANGED:
            return NOTHING
        if job.kind is Kind.COPY:
            # A renamed clean file: a server-side copy from its old name, with its attributes
            # and content IDs (the old name's delete waits for this).
            assert job.source is not None
            memo = self.journal.get_object(job.source)
            md = keys.encode_meta(job.meta, **self.hash_headers(
                job.source, memo.etag if memo else None))
            return Landed(await self.remote.copy(job.source, job.path, md), None)
        if job.kind is Kind.METADATA:
            md = keys.encode_meta(job.meta, **self.hash_headers(job.path, job.base_etag))
            return Landed(await self.remote.copy(job.path, job.path, md), None)
        return await self._send_bytes(job, cancel)

    async def _send_bytes(self, job: UploadJob, cancel: threading.Event) -> Outcome:
        assert job.data is not None
        path, src = job.path, job.data
        digest = await trio.to_thread.run_sync(digest_of, src, job.hasher)
        md = keys.encode_meta(job.meta, **{SHA256_KEY: digest.sha256, SHA1_KEY: digest.sha1})
        # Where the probe saw the store verify checksums, it checks the bytes it receives
        # against the hash taken here (single-part PUTs; zone-buckets.md §6.3).
        checksum = digest.sha256 if self.capabilities.checksums else None
        # Before sending: an upload cancelled too late lands without telling us.
        self._attempted.setdefault(path, collections.deque(maxlen=8)).append(digest.sha256)
        self.journal.add_attempt(path, digest.sha256)
        try:
            info = await self._upload_if_unchanged(path, job.base_etag, src, md, cancel,
                                                   checksum)
        except _Conflict:
            ours = await self._own_landed_upload(path)
            if ours is None:
                return await self._keep_conflict(job, md, digest, cancel)
            # The object is an upload of ours that landed although it was cancelled (a
            # rewrite, a rename): no other writer, so replace it.
            info = await self._upload_if_unchanged(path, ours, src, md, cancel, checksum)
        self.uploaded_bytes += digest.size
        if self.kachery_mirror and job.kind is not Kind.SYMLINK:
            await self._mirror(path, digest, job.meta)
        return Landed(info, digest)

    # -- concurrent writers ----------------------------------------------------------------------

    async def _upload_if_unchanged(
        self, path: str, base: str | None, src: str, md: dict[str, str],
        cancel: threading.Event, checksum: str | None,
    ) -> ObjectInfo:
        """Upload `src` as `path` only over the version the local edit started from (`base`,
        None for a new file); raise _Conflict when another writer replaced it meanwhile.

        With conditional writes the store decides (If-Match / If-None-Match: *), atomically.
        Without them (the probe found them ignored, unimplemented, or refusing every If-Match),
        the current ETag is compared first and the PUT follows: a writer landing in between
        is not detected. A file deleted in the bucket meanwhile is written again. `base`
        ANY_OBJECT replaces whatever is there."""
        # The file's SHA-256, hashed already: the remote need not hash it again to sign it.
        upload = functools.partial(self.remote.upload, payload_sha256=md.get(SHA256_KEY))
        if base == ANY_OBJECT:
            return await upload(path, src, md, None, cancel, checksum_sha256=checksum)
        if self.capabilities.conditional_writes == "enforced":
            try:
                return await upload(path, src, md, None, cancel, checksum_sha256=checksum,
                                    if_match=base, if_none_match=base is None)
            except PreconditionFailed:
                if await self.current_etag(path) is not None:
                    raise _Conflict from None
                # Nothing is there: the store lost the condition for a reason of its own
                # (SeaweedFS answers 412 to If-Match on a key deleted meanwhile, and to
                # If-None-Match where a directory of that name was emptied). Written anew.
            except NotFound:  # If-Match on a key someone deleted: write it anew
                pass
            try:
                return await upload(path, src, md, None, cancel,
                                    checksum_sha256=checksum, if_none_match=True)
            except PreconditionFailed:
                if await self.current_etag(path) is not None:
                    raise _Conflict from None
            # Still nothing there: as on a store without conditions, a writer landing
            # between the look and the PUT is not detected.
            return await upload(path, src, md, None, cancel, checksum_sha256=checksum)
        current = await self.current_etag(path)
        if current is not None and current != base:
            raise _Conflict
        return await upload(path, src, md, None, cancel, checksum_sha256=checksum)

    async def current_etag(self, path: str) -> str | None:
        """The ETag of the object at `path` now, None when there is none."""
        try:
            return (await self.remote.head(path)).etag
        except NotFound:
            return None

    async def _own_landed_upload(self, path: str) -> str | None:
        """The ETag of the object at `path` when its bytes are ones this mount sent there
        (an upload cancelled too late to stop it lands anyway), else None."""
        try:
            info = await self.remote.head(path)
        except NotFound:
            return None
        sha256 = (info.metadata or {}).get(SHA256_KEY)
        return info.etag if sha256 and sha256 in self._attempted.get(path, ()) else None

    async def _keep_conflict(self, job: UploadJob, md: dict[str, str], digest: Digest,
                             cancel: threading.Event) -> KeptAsConflict:
        """Another writer replaced `job.path` since the local edit began: the local bytes go
        to `<path>.conflict-<UTC time>` beside it, remembered as an object of this zone."""
        assert job.data is not None
        name = self._conflict_name(job.path)
        info = await self.remote.upload(name, job.data, md, None, cancel, if_none_match=(
            self.capabilities.conditional_writes == "enforced"))
        self.uploaded_bytes += digest.size
        log.warning("conflict: %r was changed in the bucket by another writer after this "
                    "edit began; the local bytes are kept as %r", job.path, name)
        self.conflicts += 1
        self.journal.put_object(ObjectRow(name, info.etag, digest.size, job.meta,
                                          digest.sha256, digest.sha1))
        self.journal.saw(digest.sha256, info.etag)
        return KeptAsConflict(name, info, digest)

    def _conflict_name(self, path: str) -> str:
        """`<path>.conflict-<UTC time>`, the name cut short to fit NAME_MAX if need be."""
        head, base = keys.split(path)
        suffix = time.strftime(".conflict-%Y%m%dT%H%M%SZ", time.gmtime())
        room = keys.NAME_MAX - len(suffix) - 4  # and "-NNN" for a second one this second
        base = base.encode()[:room].decode(errors="ignore")
        name, n = keys.join(head, base + suffix), 2
        while self._is_pending(name):
            name, n = keys.join(head, f"{base}{suffix}-{n}"), n + 1
        return name

    async def _mirror(self, path: str, digest: Digest, meta: PosixMeta) -> None:
        """Copy the new object to the Kachery zone layout, where Kachery clients fetch a
        file by its SHA-1 (once per content: the copy is remembered)."""
        s = digest.sha1
        key = f"sha1/{s[0:2]}/{s[2:4]}/{s[4:6]}/{s}"
        known = self.journal.get_object(key)
        if (known is not None and known.sha1 == s) or key in self._mirroring:
            return  # done before, or by a concurrent upload of the same bytes
        self._mirroring.add(key)
        try:
            info = await self.remote.copy(path, key)  # headers too: it is the same file
            self.journal.saw(digest.sha256, info.etag)
            self.journal.put_object(ObjectRow(key, info.etag, digest.size, meta, digest.sha256,
                                              s))
        finally:
            self._mirroring.discard(key)
