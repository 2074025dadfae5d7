"""The virtual `.zonefs/` tree: every version of every file, and the zone as it was at a time.

Paths, relative to the mount root:

- `.zonefs/versions/DIR/`: the tree as the bucket's history knows it, deleted files and
  directories included; every file appears as a directory of its versions.
- `.zonefs/versions/FILE/`: every version of FILE, newest first, named `<UTC time>_<versionId>`
  (a delete marker: `<UTC time>_<versionId>.deleted`, empty), each with its size and its
  LastModified as mtime. `cat` and `cp` read any of them.
- `.zonefs/at/TIME/PATH`: PATH as it was at TIME (`2026-11-20T12:00:00Z`, `2026-11-20`,
  `-2h`, …); `-o at=TIME` mounts the whole zone that way.

Everything here is read-only and never stored in the bucket. It is built from
ListObjectVersions; on a store without a versioning API, from the plain listing, so that each
file shows its one current version. `History` also serves `zonefs versions`, `restore` and
`undelete`.

Invariants:
- A version is read by its version id (the current one by its ETag), so the bytes behind an
  entry never change; they go through the blob cache, shared with every path and version that
  has the same content.
- Listings are paged and cached one directory at a time for the metadata TTL; nothing holds a
  whole bucket's history.
- Every change this mount makes in the store shows here at once: the mount's listing cache
  (`dircache.DirCache`), where uploads, deletes, renames, restores and undeletes land, passes
  each on to `forget`, which drops what is cached of that path, its directory and its
  ancestors. A history listing that was in flight while such a change came is returned but
  not cached (it may predate the change).
- Only keys whose every segment is a valid file name appear, as in the tree itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import stat as st
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

from cachetools import TTLCache

from zonefs.common import keys
from zonefs.common.config import format_utc, parse_time
from zonefs.common.errors import (
    AccessDenied,
    ConfigError,
    InvalidArgument,
    NotADirectory,
    NotFound,
    NotSupported,
    RemoteError,
    ZonefsError,
)
from zonefs.common.keys import RESERVED, SHA256_KEY, PosixMeta
from zonefs.core.values import Handle, Stat
from zonefs.remote.base import ObjectInfo, Remote, VersionInfo, VersionPage

if TYPE_CHECKING:
    from zonefs.core.objects import RemoteObjects
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)

VERSIONS, AT = "versions", "at"
DELETED_SUFFIX = ".deleted"


def version_name(v: VersionInfo) -> str:
    """The entry name of a version: its UTC time to the millisecond, then its id.

    >>> version_name(VersionInfo("k", 3, "e", 1795176000.25, "v1"))
    '2026-11-20T12:00:00.250Z_v1'
    >>> version_name(VersionInfo("k", 0, "", 0.0, "a/b", is_delete_marker=True))
    '1970-01-01T00:00:00.000Z_a%2Fb.deleted'
    """
    vid = (v.version_id or "null").replace("%", "%25").replace("/", "%2F")
    return f"{format_utc(v.mtime)}_{vid}" + (DELETED_SUFFIX if v.is_delete_marker else "")


def version_at(versions: list[VersionInfo], when: float) -> VersionInfo | None:
    """The version (or delete marker) that was current at `when`; `versions` newest first."""
    for v in versions:
        if v.mtime <= when:
            return v
    return None


@dataclass(slots=True)
class DirHistory:
    """One directory of the history: sub-directories, and each file's versions newest first."""

    subdirs: set[str] = field(default_factory=set)
    files: dict[str, list[VersionInfo]] = field(default_factory=dict)


# Nodes of the virtual tree, as a path resolves.
@dataclass(frozen=True, slots=True)
class _Dir:
    """A directory: `.zonefs` itself, `versions`, `at`, or a directory of a history view."""

    path: str = ""  # the zone path it shows ('' for the top of a view)
    when: float | None = None  # the time of an `at` view
    versions: tuple[VersionInfo, ...] = ()  # a key that is also a directory: its versions


@dataclass(frozen=True, slots=True)
class _Versions:
    """`.zonefs/versions/FILE`: the directory of one key's versions."""

    key: str
    versions: tuple[VersionInfo, ...]


@dataclass(frozen=True, slots=True)
class _File:
    """A readable version: an entry of `_Versions`, or a file of an `at` view."""

    version: VersionInfo


_Node = _Dir | _Versions | _File


class History:
    """The `.zonefs/` tree and the history commands, over one zone's `Remote`."""

    def __init__(self, remote: Remote, objects: RemoteObjects, *, uid: int, gid: int,
                 ttl: float, capabilities: Capabilities,
                 now: Callable[[], float] = time.time) -> None:
        self.remote, self.objects = remote, objects
        self.uid, self.gid = uid, gid
        self._capabilities = capabilities
        self._now = now
        self._mount_ns = time.time_ns()
        ttl = max(ttl, 1.0)
        self._dirs: TTLCache[str, DirHistory] = TTLCache(64, ttl)
        self._names: TTLCache[str, tuple[bool, tuple[VersionInfo, ...]]] = TTLCache(4096, ttl)
        self._live: TTLCache[tuple[str, float], bool] = TTLCache(4096, ttl)
        self._changes = 0  # how many times `forget` ran: a listing it overlapped is not cached

    # -- what the store holds -------------------------------------------------------------

    @property
    def _versioned_api(self) -> bool:
        return self._capabilities.versioning != "unsupported"

    async def _pages(self, prefix: str, delimiter: str | None) -> AsyncIterator[VersionPage]:
        """Version pages under `prefix`; on a store without versions, its plain listing with
        each object as its one current ("null") version."""
        if self._versioned_api:
            async for page in self.remote.iter_versions(prefix, delimiter):
                yield page
            return
        token: str | None = None
        while True:
            listed = await self.remote.list(prefix, delimiter, token)
            yield VersionPage([_current(o) for o in listed.objects], listed.prefixes)
            token = listed.next_token
            if not token:
                return

    async def dir_history(self, path: str) -> DirHistory:
        """Everything the history holds directly in directory `path` (cached for the TTL)."""
        cached = self._dirs.get(path)
        if cached is not None:
            return cached
        prefix = keys.dir_key(path)
        hist, changes = DirHistory(), self._changes
        async for page in self._pages(prefix, "/"):
            for v in page.versions:
                name = v.key[len(prefix):]
                if name and self._shown(path, name):
                    hist.files.setdefault(name, []).append(v)
            for pre in page.prefixes:
                name = pre[len(prefix):-1]
                if self._shown(path, name):
                    hist.subdirs.add(name)
        if changes == self._changes:
            self._dirs[path] = hist
        return hist

    @staticmethod
    def _shown(parent: str, name: str) -> bool:
        return keys.is_valid_name(name) and not (parent == "" and name == RESERVED)

    async def _name(self, path: str) -> tuple[bool, tuple[VersionInfo, ...]]:
        """Whether `path` is a directory in the history, and the versions of the key `path`.

        Answered from the parent's cached history when there is one, else by one listing
        with the name as prefix (the key and the prefix `path/` come back together)."""
        parent, name = keys.split(path)
        hist = self._dirs.get(parent)
        if hist is not None:
            return name in hist.subdirs, tuple(hist.files.get(name, ()))
        cached = self._names.get(path)
        if cached is not None:
            return cached
        is_dir, found, changes = False, [], self._changes
        async for page in self._pages(path, "/"):
            found += [v for v in page.versions if v.key == path]
            is_dir = is_dir or f"{path}/" in page.prefixes
            last = max([v.key for v in page.versions] + page.prefixes, default="")
            if last > f"{path}/":
                break  # keys sort after the name and its prefix: nothing more of either
        answer = (is_dir, tuple(found))
        if changes == self._changes:
            self._names[path] = answer
        return answer

    async def key_versions(self, path: str) -> list[VersionInfo]:
        """Every version and delete marker of the file at `path`, newest first."""
        return list((await self._name(path))[1])

    async def _live_at(self, path: str, when: float) -> bool:
        """Whether any key under directory `path` (its marker included) existed at `when`."""
        cached = self._live.get((path, when))
        if cached is not None:
            return cached
        live, key, decided, changes = False, None, False, self._changes
        async for page in self._pages(keys.dir_key(path), None):
            for v in page.versions:
                if v.key != key:
                    key, decided = v.key, False
                if decided or v.mtime > when:
                    continue
                decided = True  # the newest entry at `when` decides for this key
                if not v.is_delete_marker:
                    live = True
                    break
            if live:
                break
        if changes == self._changes:
            self._live[(path, when)] = live
        return live

    # -- the virtual tree -------------------------------------------------------------------

    def _dir_stat(self, mtime: float | None = None) -> Stat:
        mtime_ns = self._mount_ns if mtime is None else int(mtime * 1e9)
        return Stat(PosixMeta.at(st.S_IFDIR | 0o555, self.uid, self.gid, mtime_ns), 0)

    def _file_stat(self, v: VersionInfo) -> Stat:
        size = 0 if v.is_delete_marker else v.size
        return Stat(PosixMeta.at(st.S_IFREG | 0o444, self.uid, self.gid, int(v.mtime * 1e9)),
                    size, v.etag or None)

    def _stat(self, node: _Node) -> Stat:
        if isinstance(node, _File):
            return self._file_stat(node.version)
        if isinstance(node, _Versions):
            return self._dir_stat(node.versions[0].mtime if node.versions else None)
        return self._dir_stat()

    async def _resolve(self, path: str) -> _Node:
        """The node at `path` (which is `.zonefs` or below it)."""
        parts = path.split("/")[1:]
        if not parts:
            return _Dir()
        top, rest = parts[0], parts[1:]
        if top == VERSIONS:
            node: _Node = _Dir()
            for name in rest:
                node = await self._versions_child(node, name)
            return node
        if top == AT:
            if not rest:
                return _Dir()
            try:
                when = parse_time(rest[0], self._now())
            except ConfigError:
                raise NotFound(path) from None
            node = _Dir(when=when)
            for name in rest[1:]:
                node = await self._at_child(node, name)
            return node
        raise NotFound(path)

    async def _versions_child(self, node: _Node, name: str) -> _Node:
        if isinstance(node, _File):
            raise NotADirectory(name)
        own = node.versions
        for v in own:
            if version_name(v) == name:
                return _File(v)
        if isinstance(node, _Versions):
            raise NotFound(name)
        path = keys.join(node.path, name)
        is_dir, versions = await self._name(path)
        if is_dir:
            return _Dir(path, versions=versions)
        if versions:
            return _Versions(path, versions)
        raise NotFound(path)

    async def _at_child(self, node: _Node, name: str) -> _Node:
        if not isinstance(node, _Dir) or node.when is None:
            raise NotADirectory(name)
        path = keys.join(node.path, name)
        is_dir, versions = await self._name(path)
        if is_dir and await self._live_at(path, node.when):
            return _Dir(path, when=node.when)
        current = version_at(list(versions), node.when)
        if current is not None and not current.is_delete_marker:
            return _File(current)
        raise NotFound(path)

    async def stat(self, path: str) -> Stat:
        return self._stat(await self._resolve(path))

    async def listdir(self, path: str) -> list[tuple[str, Stat]]:
        node = await self._resolve(path)
        if isinstance(node, _File):
            raise NotADirectory(path)
        if isinstance(node, _Versions):
            return [(version_name(v), self._file_stat(v)) for v in node.versions]
        if path == RESERVED:
            return [(VERSIONS, self._dir_stat()), (AT, self._dir_stat())]
        if path == f"{RESERVED}/{AT}":
            return []  # a time is named, not listed
        if node.when is not None:
            return await self.listdir_at(node.path, node.when)
        hist = await self.dir_history(node.path)
        out = [(version_name(v), self._file_stat(v)) for v in node.versions]
        for name in sorted(hist.subdirs | hist.files.keys()):
            versions = hist.files.get(name)
            if name in hist.subdirs or not versions:
                out.append((name, self._dir_stat()))
            else:
                out.append((name, self._dir_stat(versions[0].mtime)))
        return out

    async def listdir_at(self, path: str, when: float) -> list[tuple[str, Stat]]:
        """Directory `path` as it was at `when`."""
        hist = await self.dir_history(path)
        out = []
        for name in sorted(hist.subdirs | hist.files.keys()):
            child = keys.join(path, name)
            if name in hist.subdirs and await self._live_at(child, when):
                out.append((name, self._dir_stat()))
                continue
            current = version_at(hist.files.get(name, []), when)
            if current is not None and not current.is_delete_marker:
                out.append((name, self._file_stat(current)))
        return out

    async def stat_at(self, path: str, when: float) -> Stat:
        """`path` as it was at `when` (the top of the zone for '')."""
        node: _Node = _Dir(when=when)
        for name in filter(None, path.split("/")):
            node = await self._at_child(node, name)
        return self._stat(node)

    async def open(self, path: str) -> Handle:
        node = await self._resolve(path)
        return await self._open_node(path, node)

    async def open_at(self, path: str, when: float) -> Handle:
        node: _Node = _Dir(when=when)
        for name in filter(None, path.split("/")):
            node = await self._at_child(node, name)
        return await self._open_node(path, node)

    async def _open_node(self, path: str, node: _Node) -> Handle:
        if not isinstance(node, _File):
            raise InvalidArgument(f"{path} is a directory")
        v = node.version
        if v.is_delete_marker:
            return Handle(path, False, fd=os.open(os.devnull, os.O_RDONLY), keep_cache=True)
        # The current version by ETag: a store without versioning (or one that answers
        # `?versionId=null` badly) still serves it; older ones by their id.
        version_id = None if v.is_latest else v.version_id
        return await self.objects.open_version(path, v.key, version_id, v.etag, v.size)

    def forget(self, path: str, tree: bool = False) -> None:
        """`path` changed in the store (with `tree`, anything below it too; '' and `tree`:
        anything at all): drop what the history caches about it, and the listings of its
        directory and their ancestors (a directory may have appeared in each)."""
        self._changes += 1
        self._live.clear()
        if tree:
            for cache in (self._names, self._dirs):
                for p in [p for p in cache if keys.is_within(p, path)]:
                    cache.pop(p, None)
        self._names.pop(path, None)
        while path:
            path = keys.split(path)[0]
            self._dirs.pop(path, None)
            self._names.pop(path, None)

    # -- history commands -----------------------------------------------------------------

    async def describe(self, path: str, *, hash_limit: int = 50) -> list[dict[str, object]]:
        """Every version of the file at `path`, newest first, as `zonefs versions` shows it.

        sha256 comes from the journal's memory of the version's ETag, else from the
        version's headers: one HEAD each, for the newest `hash_limit` versions only."""
        self.forget(path)
        versions = await self.key_versions(path)
        if not versions:
            raise NotFound(f"{path}: no version of it in the bucket")
        out: list[dict[str, object]] = []
        for n, v in enumerate(versions):
            sha256 = None
            if not v.is_delete_marker:
                memo = self.objects.journal.get_object(path, v.etag)
                sha256 = memo.sha256 if memo else None
                if sha256 is None and n < hash_limit:
                    with contextlib.suppress(NotFound, RemoteError):
                        info = await self.remote.head(path, None if v.is_latest
                                                      else v.version_id)
                        sha256 = (info.metadata or {}).get(SHA256_KEY)
            out.append({"time": v.mtime, "version_id": v.version_id, "size": v.size,
                        "etag": v.etag, "sha256": sha256, "deleted": v.is_delete_marker,
                        "current": v.is_latest, "name": version_name(v)})
        return out

    def _require_versions(self, what: str) -> None:
        state = self._capabilities.versioning
        if not self._capabilities.keeps_versions:
            why = ("the store has no versioning" if state == "unsupported"
                   else "versioning is not enabled on the bucket")
            raise NotSupported(f"cannot {what}: {why}, so no older version is kept")

    async def restore(self, path: str, *, version_id: str | None = None,
                      when: float | None = None) -> tuple[VersionInfo, ObjectInfo]:
        """Make an older version the current content of `path` by a server-side copy: a new
        version; nothing is overwritten. Returns the version restored and the new object."""
        self._require_versions("restore")
        versions = await self.key_versions(path)
        if not versions:
            raise NotFound(f"{path}: no version of it in the bucket")
        if version_id is not None:
            chosen = next((v for v in versions if v.version_id == version_id), None)
            if chosen is None:
                raise NotFound(f"{path}: no version {version_id!r}")
        else:
            assert when is not None
            chosen = version_at(versions, when)
            if chosen is None:
                raise NotFound(f"{path}: did not exist yet at that time")
        if chosen.is_delete_marker:
            raise InvalidArgument(f"{path}: that version is a delete marker (the file was "
                                  "deleted then); pick another version")
        info = await self.remote.copy_version(path, chosen.version_id or "null", path)
        self.forget(path)
        if info.version_id is None:
            # Some stores (Ceph RGW) answer the copy without its version id: ask for it.
            try:
                latest = next((v for v in await self.key_versions(path) if v.is_latest), None)
            except ZonefsError as exc:
                log.debug("%s: the restored version's id is unknown: %s", path, exc)
                latest = None
            if latest is not None and not latest.is_delete_marker and latest.etag == info.etag:
                info = replace(info, version_id=latest.version_id)
        return chosen, info

    async def undelete(self, path: str) -> str:
        """Bring a deleted file back: remove its delete markers, or, where the store refuses
        that, copy its last version. Returns how it was done, for the user."""
        self._require_versions("undelete")
        versions = await self.key_versions(path)
        if not versions:
            raise NotFound(f"{path}: no version of it in the bucket")
        if not versions[0].is_delete_marker:
            raise InvalidArgument(f"{path} is not deleted")
        last = next((v for v in versions if not v.is_delete_marker), None)
        if last is None:
            raise NotFound(f"{path}: only delete markers, no content to bring back")
        markers = versions[:versions.index(last)]  # newest first, down to the last content
        try:
            for marker in markers:
                await self.remote.delete_version(path, marker.version_id or "null")
            how = f"removed {len(markers)} delete marker(s)"
        except (RemoteError, AccessDenied) as exc:
            if getattr(exc, "transient", False):
                raise
            log.info("%s: removing the delete marker failed (%s); copying the last version",
                     path, exc)
            await self.remote.copy_version(path, last.version_id or "null", path)
            how = f"copied version {last.version_id} (the store refused to remove the marker)"
        self.forget(path)
        return how


def _current(o: ObjectInfo) -> VersionInfo:
    return VersionInfo(o.key, o.size, o.etag, o.mtime, "null", is_latest=True)
