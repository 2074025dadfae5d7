"""Content identity of files: SHA-256 and SHA-1, Kachery URIs, the `user.zonefs.*` extended
attributes and what `zonefs info` and `zonefs cat sha1://…` ask a mount.

A clean file's hashes come from what the journal remembers of its object (the
`zonefs-sha256`/`zonefs-sha1` headers zonefs uploads, or the hash of bytes downloaded before);
when nothing is remembered the object is downloaded into the blob cache and hashed, once. A
file with local changes is hashed from its local bytes, once per change.
"""

from __future__ import annotations

import stat as st
from typing import TYPE_CHECKING, Any
from urllib.parse import quote

import trio
from cachetools import TTLCache

from zonefs.cache.blobs import Digest, hash_file
from zonefs.cache.dircache import Entry
from zonefs.common.errors import NotFound, NotSupported
from zonefs.common.keys import split
from zonefs.pending.rows import has_new_bytes

if TYPE_CHECKING:
    from zonefs.cache.blobs import BlobStore
    from zonefs.cache.dircache import DirCache
    from zonefs.cache.journal import Journal
    from zonefs.core.files import Files
    from zonefs.core.objects import RemoteObjects
    from zonefs.core.view import View
    from zonefs.pending.ledger import Ledger
    from zonefs.remote.base import Remote

XATTR_PREFIX = "user.zonefs."
XATTR_NAMES = ("sha256", "sha1", "etag", "version_id", "state", "uri")


def kachery_uri(sha1: str, label: str) -> str:
    """
    >>> kachery_uri("ab" * 20, "my file.txt")
    'sha1://abababababababababababababababababababab?label=my%20file.txt'
    """
    return f"sha1://{sha1}?label={quote(label, safe='')}"


class ContentIds:
    """Hashes and identity of the files of one mount."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore, cache: DirCache,
                 objects: RemoteObjects, ledger: Ledger, view: View, files: Files, *,
                 ttl: float) -> None:
        self.remote, self.journal, self.blobs, self.cache = remote, journal, blobs, cache
        self.objects, self.ledger, self.view, self.files = objects, ledger, view, files
        self._dirty_digests: dict[str, tuple[int, Digest]] = {}  # path -> (generation, digest)
        # (path, ETag) -> version id from a HEAD, kept as long as other remote facts are.
        self._versions: TTLCache[tuple[str, str | None], str | None] = TTLCache(10_000, ttl)

    async def info(self, path: str) -> dict[str, Any]:
        """What `zonefs info` prints for a regular file (kachery-cloud-load-info's fields)."""
        s = await self.view.stat(path)
        if not st.S_ISREG(s.meta.mode):
            raise NotSupported(f"{path or '/'} is not a regular file")
        key = path
        df = self.ledger.row(path)
        if df is not None and df.row.data is not None and has_new_bytes(df):
            digest = await self._local_digest(path, df.row.data, df.row.generation)
            sha256, sha1, etag, version = digest.sha256, digest.sha1, None, None
        elif df is not None and df.is_copy and df.row.source is not None:
            # Renamed, its copy not made yet: the bytes are the old name's object's.
            source = df.row.source
            etag = self.files.source_etag(source)
            sha256, sha1 = await self._remote_hashes(source, etag)
            etag, version = None, None
        else:
            sha256, sha1 = await self._remote_hashes(path, s.etag)
            etag, version = s.etag, await self._version(path, s.etag)
        return {
            "size": s.size,
            "sha1": sha1,
            "sha256": sha256,
            "uri": kachery_uri(sha1, split(path)[1]),
            "bucketUri": self.remote.object_uri(key),
            "objectKey": self.remote.object_key(key),
            "versionId": version,
            "etag": etag,
            "state": s.state,
            "cached": self.blobs.has(sha256),
        }

    async def xattr(self, path: str, name: str) -> bytes:
        """The value of `user.zonefs.<name>`; NotFound when the file has no such attribute."""
        if name not in XATTR_NAMES:
            raise NotFound(name)
        info = await self.info(path)
        value = info["versionId" if name == "version_id" else name]
        if value is None:
            raise NotFound(name)  # e.g. no version id on an unversioned store
        return str(value).encode()

    async def find_sha1(self, sha1: str) -> str | None:
        """A path in this mount whose current bytes have this SHA-1, if the mount knows one."""
        for key in self.journal.keys_with_sha1(sha1):
            try:
                s = await self.view.stat(key)
            except NotFound:
                continue
            memo = self.journal.get_object(key, s.etag)
            if memo is not None and memo.sha1 == sha1 and self.ledger.row(key) is None:
                return key
        return None

    async def _local_digest(self, path: str, data: str, generation: int) -> Digest:
        known = self._dirty_digests.get(path)
        if known is not None and known[0] == generation:
            return known[1]
        digest = await trio.to_thread.run_sync(hash_file, self.blobs.abspath(data))
        self._dirty_digests[path] = (generation, digest)
        return digest

    async def _remote_hashes(self, path: str, etag: str | None) -> tuple[str, str]:
        memo = self.journal.get_object(path, etag)
        if memo is not None and memo.sha256 and memo.sha1:
            return memo.sha256, memo.sha1
        # Nothing remembered (an object written by another tool): hash its bytes, once.
        _, digest = await self.objects.download_whole(path, etag)
        return digest.sha256, digest.sha1

    async def _version(self, path: str, etag: str | None) -> str | None:
        entry = self.cache.entry(path)
        if isinstance(entry, Entry) and entry.version_id and entry.etag == etag:
            return entry.version_id
        # `getfattr -d` asks for every attribute in turn: one HEAD answers them all.
        if (path, etag) in self._versions:
            return self._versions[(path, etag)]
        info = await self.remote.head(path)
        version = info.version_id if info.etag == etag else None
        self._versions[(path, etag)] = version
        return version
