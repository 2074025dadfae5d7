"""The filesystem core: every POSIX semantic, by path, with no knowledge of FUSE or inodes.

`Vfs` answers stat, listing, create/open/read/write, truncate, rename, unlink, mkdir, rmdir,
symlink and sync for paths relative to the mount root ('' is the root). It combines the remote
listing (cached in `DirCache`) with the local changes not yet in the bucket: the journal's
dirty rows (files, symlinks and directories, mirrored in `self.dirty`) and pending deletes
(`self.pending.deletes`). Two components do the work it delegates: `objects.RemoteObjects`
(headers and bytes of remote objects through the blob cache) and `uploads.PendingFiles`
(pending changes, their journal rows and their uploads).

Invariants:
- A dirty row is written to the journal before its path is handed to the write-back queue, and
  leaves the journal only in the transaction that records the uploaded object.
- Files, directories and symlinks not yet uploaded appear in listings and stats whatever the
  remote listing says; keys whose delete is pending are hidden.
- While a file has writers, no upload of it is in flight: opening for write cancels one, and
  the upload is scheduled again when the last writer closes (or by fsync).
- An upload marks a file clean only if nothing changed it while the upload ran (generation).
- mkdir, rmdir, unlink and symlink, and the rename of a file with pending bytes, are journaled
  (fsync'ed) before they return and reach the bucket through the write-back queue, so they
  work while the store is unreachable. Other renames copy objects in the store before they
  return; they are journaled first, and one a crash cut short is finished by `recover`, which
  runs before the mount answers and before pending changes are queued again.
- A file unlinked or renamed over while open lives on in its handles only: reads, writes,
  `stat_open` and `setattr_open` work on its local file, and nothing of it reaches the journal
  or the bucket once its name is gone.
"""

from __future__ import annotations

import errno
import logging
import os
import stat as st
import time
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import trio

from . import keys
from .blobs import BlobStore
from .config import MountOptions
from .dircache import UNKNOWN, DirCache, Entry
from .errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    RemoteError,
)
from .fetch import Spawn
from .handles import ANY_OBJECT, DirtyFile, Handle, Stat
from .journal import DirtyRow, Journal, ObjectRow
from .keys import RESERVED, PosixMeta
from .objects import RemoteObjects
from .remote.base import ObjectInfo, Remote
from .remote.probe import Capabilities
from .renames import Renamer
from .uploads import PendingFiles
from .versions import History

log = logging.getLogger(__name__)

#: Header fetches started ahead of a listing's reader, at most this many at once.
PREFETCH_TASKS = 64
#: Odd keys remembered for `zonefs status` (each is still logged once, up to this many).
MAX_REPORTED = 1000
RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _write_synced(dest: str, data: bytes) -> None:
    """Write `data` to the file `dest` and fsync it (blocking: run it in a thread)."""
    with open(dest, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


def _copy_fd_to(fd: int, dest: str) -> None:
    """Copy the whole file open at `fd` to the path `dest` (blocking: run it in a thread)."""
    with open(dest, "wb") as out:
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)


class Vfs:
    """Path-based filesystem over one zone. See the module docstring for the invariants."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        blobs: BlobStore,
        opts: MountOptions,
        *,
        spawn: Spawn,
    ) -> None:
        self.remote, self.journal, self.blobs, self.opts = remote, journal, blobs, opts
        self._spawn = spawn
        self.cache = DirCache(opts.metadata_ttl)
        self.objects = RemoteObjects(remote, journal, blobs, self.cache, opts, spawn=spawn)
        self.pending = PendingFiles(remote, journal, blobs, self.cache, self.objects, opts)
        self.dirty = self.pending.dirty  # the same dict, for reading
        self.writeback = self.pending.writeback
        self.deletes = self.pending.deletes  # the same object, for reading
        self.renamer = Renamer(remote, journal, self.pending, put_marker=self._put_marker)
        # Keys the mount cannot show as they are (reported once each; `zonefs status` lists them).
        self._reported: dict[str, str] = {}
        self.mount_time_ns = time.time_ns()
        # What the store can do: set by the daemon from the probe before the mount answers.
        self._capabilities = Capabilities()
        self.history = History(remote, self.objects, uid=opts.uid, gid=opts.gid,
                               ttl=opts.metadata_ttl, capabilities=lambda: self.capabilities)

    @property
    def capabilities(self) -> Capabilities:
        return self._capabilities

    @capabilities.setter
    def capabilities(self, caps: Capabilities) -> None:
        """The store probe's answers, handed to the components that act on them."""
        self._capabilities = caps
        self.pending.capabilities = caps
        self.objects.dir_markers_dropped = caps.dir_markers == "dropped"

    @property
    def uploaded_bytes(self) -> int:
        return self.pending.uploaded_bytes

    async def recover(self) -> int:
        """Finish what a crash cut short, before the mount answers and before `requeue_dirty`:
        multipart uploads left unfinished are aborted, those whose id was never recorded too
        (their files are still dirty and go up again whole), and renames in progress are
        finished (their pending rows move first). Returns how many renames were resumed."""
        if self.opts.read_only:
            left = len(self.journal.renames())
            if left:
                log.warning("%d rename(s) cut short by a crash wait for a writable mount", left)
            uploads = len(self.journal.multipart_uploads())
            unrecorded = len({i.key for i in self.journal.multipart_intents()})
            if uploads or unrecorded:
                log.warning("%d unfinished multipart upload(s) left by a crash, and those of %d "
                            "key(s) whose upload id was never recorded, are aborted by the next "
                            "writable mount", uploads, unrecorded)
            return 0
        await self.pending.abort_leftover_uploads()
        return await self.renamer.resume()

    async def keep_journal_synced(self) -> None:
        """Fsync lazy journal commits now and then (run by the daemon)."""
        await self.pending.keep_journal_synced()

    def requeue_dirty(self) -> int:
        """Hand every journaled change to the write-back queue (at mount)."""
        return self.pending.requeue()

    # -- attributes -------------------------------------------------------------------------------

    def _root_meta(self) -> PosixMeta:
        return PosixMeta(st.S_IFDIR | self.opts.dir_mode, self.opts.uid, self.opts.gid,
                         self.mount_time_ns)

    def _check_writable(self, path: str) -> None:
        if self.opts.read_only:
            raise ReadOnly(path)
        if keys.is_within(path, RESERVED):
            raise ReadOnly(f"{RESERVED} is read-only")

    async def stat(self, path: str) -> Stat:
        if path and keys.is_within(path, RESERVED):
            return await self.history.stat(path)
        if self.opts.at is not None:
            return await self.history.stat_at(path, self.opts.at)
        if path == "":
            return Stat(self._root_meta(), 0)
        df = self.dirty.get(path)
        if df is not None:
            return Stat(df.row.meta, df.row.size, df.row.base_etag, self._state(df))
        entry = await self._entry(path)
        if entry.meta is None:
            await self.objects.ensure_meta(path, entry)
        # Awaited: the file may have been written meanwhile, or an upload of it landed.
        df = self.dirty.get(path)
        if df is not None:
            return Stat(df.row.meta, df.row.size, df.row.base_etag, self._state(df))
        entry = self._freshest(path, entry)
        assert entry.meta is not None
        return Stat(entry.meta, 0 if entry.is_dir else entry.size, entry.etag)

    def _state(self, df: DirtyFile) -> str:
        return "uploading" if df.queue_key in self.writeback.in_flight_paths() else "dirty"

    async def _entry(self, path: str) -> Entry:
        """The remote entry at `path` (cached), or NotFound."""
        entry = self.cache.entry(path)
        if entry is UNKNOWN:
            entry = await self._fetch_entry(path)
        if entry is not None:
            assert isinstance(entry, Entry)
            entry = self._visible(path, entry)
        if entry is None:
            if self._has_dirty_below(path):
                return Entry(is_dir=True, mtime=self.mount_time_ns / 1e9)
            raise NotFound(path)
        return entry

    async def _fetch_entry(self, path: str) -> Entry | None:
        """Ask the store what `path` is; while it cannot be reached, what was last known."""
        since = self.cache.begin_fetch()
        try:
            try:
                found = await self._lookup_remote(path)
            except RemoteError as exc:
                stale = self.cache.last_entry(path) if exc.transient else UNKNOWN
                if stale is UNKNOWN:
                    raise
                # The store is unreachable: answer from what was last known (the entry, or
                # its directory's last listing), so that known names still resolve and files
                # can still be created (their uploads wait, and are conditional).
                log.debug("store unreachable; %r answered from what was last known", path)
                return stale  # type: ignore[return-value]
            # An upload that landed meanwhile knows better than the lookup.
            return self.cache.put_fetched(path, found, since)
        finally:
            self.cache.end_fetch()

    def _visible(self, path: str, entry: Entry) -> Entry | None:
        """The remote entry at `path` as the mount shows it: None when its delete is pending
        (a file the directory shadowed may show instead)."""
        if not self.deletes.hides(path, entry.is_dir):
            return entry
        shadowed = entry.shadowed
        if shadowed is not None and not self.deletes.hides(path, False):
            return shadowed
        return None

    async def _lookup_remote(self, path: str) -> Entry | None:
        """One LIST tells whether `path` is a file, a directory or nothing.

        Listing with the name itself as prefix returns the object `path` and the common prefix
        `path/` together (siblings such as `path.txt` sort between them, hence the loop); a
        file's headers then come from the journal when its ETag is remembered, else a HEAD.
        """
        token: str | None = None
        found: ObjectInfo | None = None
        while True:
            page = await self.remote.list(path, "/", token, 100)
            for obj in page.objects:
                if obj.key == path:
                    found = obj
            if any(p == path + "/" for p in page.prefixes):
                return Entry(is_dir=True, mtime=self.mount_time_ns / 1e9,
                             shadowed=None if found is None else self._file_entry(found))
            last = max([o.key for o in page.objects] + page.prefixes, default="")
            token = page.next_token
            if not token or last > path + "/":
                break
        return None if found is None else self._file_entry(found)

    def _file_entry(self, obj: ObjectInfo) -> Entry:
        """The entry of a listed object, with its headers when the journal remembers them."""
        memo = self.journal.get_object(obj.key, obj.etag)
        return Entry(False, obj.size, obj.etag, obj.mtime, memo.meta if memo else None)

    # -- listing --------------------------------------------------------------------------------

    async def listdir(self, path: str) -> list[tuple[str, Stat]]:
        """Sorted (name, Stat) of a directory, pending local files included."""
        if path and keys.is_within(path, RESERVED):
            return await self.history.listdir(path)
        if self.opts.at is not None:
            return await self.history.listdir_at(path, self.opts.at)
        if (await self.stat(path)).is_dir is False:
            raise NotADirectory(path)
        names = dict(await self._remote_listing(path))
        if self.deletes:
            for name, entry in list(names.items()):
                shown = self._visible(keys.join(path, name), entry)
                if shown is None:
                    del names[name]  # a pending row below brings a directory back (next loop)
                else:
                    names[name] = shown
        for dpath, df in self.dirty.items():
            parent, name = keys.split(dpath)
            if parent == path:
                # Shown from its row below; this stands in if its upload lands meanwhile.
                names.setdefault(name, Entry(is_dir=df.is_dir))
            elif keys.is_within(dpath, path) and dpath != path:
                sub = dpath[len(path) + 1 if path else 0:].split("/", 1)[0]
                names.setdefault(sub, Entry(is_dir=True, mtime=self.mount_time_ns / 1e9))
        if path == "":
            names.pop(RESERVED, None)
        out = []
        for name in sorted(names):
            child = keys.join(path, name)
            df = self.dirty.get(child)
            if df is not None:
                out.append((name, Stat(df.row.meta, df.row.size, df.row.base_etag, "dirty")))
                continue
            entry = self._freshest(child, names[name])
            if entry.meta is None:
                # The kernel caches the file type an entry is listed with, and a symlink
                # object is told from a file only by its headers: wait for its (prefetched)
                # ones. An upload of it may land meanwhile: what it left is newer.
                await self.objects.ensure_meta(child, entry)
                df = self.dirty.get(child)
                if df is not None:
                    out.append((name, Stat(df.row.meta, df.row.size, df.row.base_etag,
                                           "dirty")))
                    continue
                entry = self._freshest(child, entry)
            assert entry.meta is not None
            out.append((name, Stat(entry.meta, 0 if entry.is_dir else entry.size, entry.etag)))
        return out

    def _freshest(self, path: str, entry: Entry) -> Entry:
        """`entry` (from a listing, or standing in for a pending row), or what the dircache
        learnt of the same name since, when that is of the same type and has its headers: an
        upload that left the dirty rows while a listing was being answered put its object
        there, and the kernel must not be told the older size (or a made-up type)."""
        known = self.cache.entry(path)
        if (isinstance(known, Entry) and known.is_dir == entry.is_dir
                and known.meta is not None and (not entry.is_dir or entry.meta is None)):
            return known
        return entry

    async def _remote_listing(self, path: str) -> dict[str, Entry]:
        cached = self.cache.listing(path)
        if cached is not None:
            return cached
        try:
            return await self._list_remote(path)
        except RemoteError as exc:
            stale = self.cache.last_listing(path) if exc.transient else None
            if stale is None:
                raise
            log.debug("store unreachable; listing of %r from its last listing", path)
            return stale

    async def _list_remote(self, path: str) -> dict[str, Entry]:
        since = self.cache.begin_fetch()
        try:
            names = await self._list_pages(path)
            # An upload that landed while the pages came knows better than they do.
            self.cache.put_listing(path, names, since)
        finally:
            self.cache.end_fetch()
        self._prefetch_meta(path, names)
        return names

    async def _list_pages(self, path: str) -> dict[str, Entry]:
        prefix = keys.dir_key(path)
        names: dict[str, Entry] = {}
        token: str | None = None
        while True:
            page = await self.remote.list(prefix, "/", token)
            for obj in page.objects:
                name = obj.key[len(prefix):]
                if name == "":
                    continue  # the directory's own marker
                if not self._showable(path, name):
                    continue
                names[name] = self._file_entry(obj)
            for pre in page.prefixes:
                name = pre[len(prefix):-1]
                if not self._showable(path, name):
                    continue
                shadowed = names.get(name)
                if shadowed is not None:
                    self._report(keys.join(path, name), "is both a file and a directory; "
                                 "showing the directory")
                names[name] = Entry(is_dir=True, mtime=self.mount_time_ns / 1e9,
                                    shadowed=shadowed)
            token = page.next_token
            if not token:
                return names

    def _showable(self, parent: str, name: str) -> bool:
        if parent == "" and name == RESERVED:
            self._report(RESERVED, "is reserved for zonefs and hidden")
            return False
        if not keys.is_valid_name(name):
            self._report(keys.join(parent, name), "is not a valid file name; hidden")
            return False
        return True

    def _report(self, path: str, what: str) -> None:
        if path in self._reported or len(self._reported) >= MAX_REPORTED:
            return
        self._reported[path] = what
        log.warning("key %r %s", path, what)

    def _prefetch_meta(self, path: str, names: dict[str, Entry]) -> None:
        """Read the headers of every entry not yet known, concurrently, in the background.

        `ls -l` asks for each entry's attributes right after the listing; fetching them all at
        once, bounded by the remote's request limit, beats one HEAD after another.
        """
        todo = [(keys.join(path, name), e) for name, e in names.items() if e.meta is None]
        if todo:
            self._spawn(lambda: self._prefetch_all(todo))

    async def _prefetch_all(self, todo: list[tuple[str, Entry]]) -> None:
        # One task per entry in flight at most PREFETCH_TASKS at a time, so that listing a
        # directory of 100,000 keys does not hold 100,000 waiting tasks.
        slots = trio.Semaphore(PREFETCH_TASKS)
        for path, entry in todo:
            await slots.acquire()
            self._spawn(lambda p=path, e=entry: self._quiet_meta(p, e, slots))

    async def _quiet_meta(self, path: str, entry: Entry, slots: trio.Semaphore) -> None:
        try:
            await self.objects.ensure_meta(path, entry)
        except Exception as exc:  # the reader that needs it will see the error itself
            log.debug("prefetch of %r failed: %s", path, exc)
        finally:
            slots.release()

    def _has_dirty_below(self, path: str) -> bool:
        return self.dirty.has_below(path)

    # -- namespace changes ------------------------------------------------------------------------

    async def _parent_dir(self, path: str) -> None:
        parent = keys.split(path)[0]
        if not (await self.stat(parent)).is_dir:
            raise NotADirectory(parent)

    async def _exists(self, path: str) -> Stat | None:
        try:
            return await self.stat(path)
        except NotFound:
            return None

    async def mkdir(self, path: str, mode: int, uid: int, gid: int) -> Stat:
        """A pending directory: its marker is put by the write-back queue."""
        self._check_writable(path)
        keys.check_name(keys.split(path)[1])
        await self._parent_dir(path)
        if await self._exists(path) is not None:
            raise Exists(path)
        meta = PosixMeta(st.S_IFDIR | (mode & 0o7777), uid, gid, time.time_ns())
        await self.pending.add_row(DirtyRow(path, None, 0, meta, None, 1))
        # A new directory is empty: lookups in it need not ask the bucket (and work while it
        # cannot be reached).
        self.cache.put_listing(path, {})
        return Stat(meta, 0, None, "dirty")

    async def _put_marker(self, path: str, meta: PosixMeta) -> None:
        """Put the marker of `path` now (a rename's step; mkdir goes through write-back)."""
        info = await self.remote.put_bytes(keys.dir_key(path), b"", keys.encode_meta(meta),
                                           keys.DIR_CONTENT_TYPE)
        self.cache.put_entry(path, Entry(True, 0, info.etag, time.time(), meta))
        # Remembered too: where the store drops a marker's metadata (the probe's
        # dir_markers=dropped), this machine still shows the attributes it set.
        self.journal.put_object(ObjectRow(keys.dir_key(path), info.etag, 0, meta))

    async def rmdir(self, path: str) -> None:
        """A pending delete of the directory's marker (once nothing below it is pending)."""
        self._check_writable(path)
        if path == "":
            raise NotPermitted("cannot remove the mount root")
        s = await self.stat(path)
        if not s.is_dir:
            raise NotADirectory(path)
        # Look at the store again (it may have new keys from other clients), but keep the
        # last listing to answer from while it cannot be reached.
        self.cache.expire_tree(path)
        if await self.listdir(path):
            raise NotEmpty(path)
        await self.pending.remove(path, s)

    async def symlink(self, path: str, target: str, uid: int, gid: int) -> Stat:
        """A pending symlink: a small object whose body is the target, put by write-back."""
        self._check_writable(path)
        keys.check_name(keys.split(path)[1])
        await self._parent_dir(path)
        if await self._exists(path) is not None:
            raise Exists(path)
        meta = PosixMeta(st.S_IFLNK | 0o777, uid, gid, time.time_ns())
        body = os.fsencode(target)
        staging = self.blobs.new_staging()
        await trio.to_thread.run_sync(_write_synced, staging, body)
        await self.pending.add_row(DirtyRow(path, self.blobs.relpath(staging), len(body), meta,
                                            None, 1))
        return Stat(meta, len(body), None, "dirty")

    async def readlink(self, path: str) -> str:
        s = await self.stat(path)
        if not st.S_ISLNK(s.meta.mode):
            raise InvalidArgument(f"{path} is not a symlink")
        df = self.dirty.get(path)
        if df is not None and df.row.data is not None:
            with open(self.blobs.abspath(df.row.data), "rb") as f:
                return os.fsdecode(f.read())
        return os.fsdecode(await self.remote.get_range(path, 0, max(s.size, 1)))

    async def unlink(self, path: str) -> None:
        """A pending delete of the object (none when the store cannot hold one); a pending
        upload of the file is cancelled."""
        self._check_writable(path)
        s = await self.stat(path)
        if s.is_dir:
            raise IsADirectory(path)
        await self.pending.remove(path, s)

    async def rename(self, old: str, new: str, flags: int = 0) -> None:
        self._check_writable(old)
        self._check_writable(new)
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        if flags & ~RENAME_NOREPLACE:
            raise InvalidArgument(f"rename flags {flags:#x}")
        if old == new:
            return
        if keys.is_within(new, old):
            raise InvalidArgument("cannot move a directory into itself")
        keys.check_name(keys.split(new)[1])
        src = await self.stat(old)
        await self._parent_dir(new)
        dst = await self._exists(new)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise Exists(new)
            if src.is_dir and not dst.is_dir:
                raise NotADirectory(new)
            if dst.is_dir and not src.is_dir:
                raise IsADirectory(new)
            if dst.is_dir:
                if await self.listdir(new):
                    raise NotEmpty(new)
                # A pending delete of its marker, which the move applies before it copies.
                await self.pending.remove(new, dst)
        if not src.is_dir and self.renamer.moves_locally(old):
            # Pending bytes go up under the new name: no request now, none of the caches'
            # remote facts change (the overlay of pending changes shows the move).
            if await self.renamer.move_pending_file(old, new, dst):
                return
            src = await self.stat(old)  # uploaded meanwhile: moved by a copy in the store
        try:
            if src.is_dir:
                await self.renamer.move_dir(old, new, src.meta)
            else:
                await self.renamer.move_file(old, new, src)
        finally:
            # Also after a rename that failed part-way: objects may be under both names.
            self.cache.invalidate_tree(old)
            self.cache.invalidate_tree(new)

    # -- attributes changes ---------------------------------------------------------------------

    async def setattr(
        self,
        path: str,
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        handle: Handle | None = None,
    ) -> Stat:
        self._check_writable(path)
        s = await self.stat(path)
        if size is not None and s.is_dir:
            raise IsADirectory(path)
        meta = PosixMeta(
            (s.meta.mode & ~0o7777) | (mode & 0o7777) if mode is not None else s.meta.mode,
            s.meta.uid if uid is None else uid,
            s.meta.gid if gid is None else gid,
            s.meta.mtime_ns if mtime_ns is None else mtime_ns,
        )
        if size is None and meta == s.meta:
            return s  # nothing changes: no new object version for `touch -a` or a same chmod
        if path == "":
            raise NotPermitted("the mount root's attributes come from the mount options")
        if size is not None:
            df = handle.dirty if handle is not None and handle.dirty else None
            if df is None:
                df = await self._make_dirty(path, truncate=size == 0)
            os.truncate(self.blobs.abspath(df.row.data or ""), size)
            df.row.size = size
            df.data_changed = True
            if mtime_ns is None:
                meta = PosixMeta(meta.mode, meta.uid, meta.gid, time.time_ns())
        else:
            df = self.dirty.get(path) or self._meta_dirty(path, s)
            df.meta_changed = True
        df.row.meta = meta
        df.row.generation += 1
        # Not fsync'ed at once: durable within JOURNAL_SYNC_INTERVAL (`tar` sets the times of
        # each file it has just closed: one fsync per file, not two).
        self.pending.persist(df, durable=False)
        if df.writers == 0:
            self.pending.schedule(df)
        return await self.stat(path)

    def _meta_dirty(self, path: str, s: Stat) -> DirtyFile:
        row = DirtyRow(path, None, s.size, s.meta, s.etag, 0)
        df = self.dirty[path] = DirtyFile(row)
        return df

    # -- files ------------------------------------------------------------------------------------

    async def _make_dirty(self, path: str, *, truncate: bool) -> DirtyFile:
        """Give `path` local mutable data (copied or downloaded unless truncating)."""
        await self.writeback.cancel(path)
        df = self.dirty.get(path)
        if df is not None and df.row.data is not None:
            if truncate:
                os.truncate(self.blobs.abspath(df.row.data), 0)
                df.row.size = 0
                df.row.generation += 1
                df.data_changed = True
            return df
        s = await self.stat(path)
        staging = self.blobs.new_staging()
        if not truncate and s.size:
            await self._copy_current(path, s, staging)
        row = DirtyRow(path, self.blobs.relpath(staging), 0 if truncate else s.size, s.meta,
                       s.etag, (df.row.generation + 1) if df else 1)
        if df is None:
            df = self.dirty[path] = DirtyFile(row, data_changed=truncate)
        else:
            df.row = row  # was a metadata-only change
            df.data_changed, df.meta_changed = truncate, True
        return df

    async def _copy_current(self, path: str, s: Stat, dest: str) -> None:
        memo = self.journal.get_object(path, s.etag)
        if memo is not None and memo.sha256:
            fd = await self.blobs.open_verified(memo.sha256, key=path)
            if fd is not None:
                try:
                    await trio.to_thread.run_sync(_copy_fd_to, fd, dest)
                finally:
                    os.close(fd)
                return
        await self.remote.download(path, dest, None, s.etag)

    async def create(self, path: str, mode: int, uid: int, gid: int) -> tuple[Handle, Stat]:
        self._check_writable(path)
        keys.check_name(keys.split(path)[1])
        await self._parent_dir(path)
        existing = await self._exists(path)
        if existing is not None and existing.is_dir:
            raise IsADirectory(path)
        await self.writeback.cancel(path)
        old = self.dirty.pop(path, None)
        if old is not None:
            self.pending.drop(path, old)
        # A file just removed here is still in the store until its delete runs: the new one
        # replaces that object instead (its upload expects it), and the delete is dropped.
        claimed, claimed_etag = await self.pending.claim(path)
        if existing is not None:
            base = existing.etag
        elif claimed:
            base = claimed_etag or ANY_OBJECT
        else:
            base = None
        if base is None and old is not None and self.pending.presence(old, None)[0]:
            base = ANY_OBJECT  # the file it replaces may have reached the store
        staging, fd = self.blobs.open_new_staging()
        meta = PosixMeta(st.S_IFREG | (mode & 0o7777), uid, gid, time.time_ns())
        row = DirtyRow(path, self.blobs.relpath(staging), 0, meta, base, 1)
        # Journaled at close (flush): nothing is acknowledged before that, unless it replaces
        # a pending file whose row must not outlive its bytes: then the empty file takes over.
        df = self.dirty[path] = DirtyFile(row, writers=1,
                                          absent=existing is None and not claimed,
                                          claimed=path if claimed else None)
        if old is not None and old.persisted:
            self.pending.persist(df)
        s = Stat(meta, 0, None, "dirty")
        return Handle(path, True, fd=fd, dirty=df, opened=s), s

    async def open(self, path: str, flags: int) -> Handle:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self._check_writable(path)
        s = await self.stat(path)
        if s.is_dir:
            raise IsADirectory(path)
        if st.S_ISLNK(s.meta.mode):
            raise NotSupported("symlinks are followed by the kernel")
        handle = await self._open_file(path, flags, s, writable)
        handle.opened = s  # describes the file once its name is gone (stat_open)
        return handle

    async def _open_file(self, path: str, flags: int, s: Stat, writable: bool) -> Handle:
        """A handle on the regular file `path`, whose stat is `s`."""
        if keys.is_within(path, RESERVED):
            return await self.history.open(path)
        if self.opts.at is not None:
            return await self.history.open_at(path, self.opts.at)
        if writable or flags & os.O_TRUNC:
            df = await self._make_dirty(path, truncate=bool(flags & os.O_TRUNC))
            df.writers += 1
            fd = os.open(self.blobs.abspath(df.row.data or ""), os.O_RDWR)
            return Handle(path, True, append=bool(flags & os.O_APPEND), fd=fd, dirty=df)
        df = self.dirty.get(path)
        if df is not None and df.row.data is not None:
            return Handle(path, False, fd=os.open(self.blobs.abspath(df.row.data), os.O_RDONLY))
        return await self.objects.open(path, s)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        if handle.fetcher is not None:
            return await handle.fetcher.read(offset, size)
        return os.pread(handle.fd, size, offset)

    async def write(self, handle: Handle, offset: int, data: bytes) -> int:
        df = handle.dirty
        if df is None or not handle.writable:
            raise InvalidArgument("file not open for writing")
        if handle.append:
            offset = df.row.size
        growth = max(0, offset + len(data) - df.row.size)
        if growth:
            await self.pending.wait_for_room(growth)
            if handle.append:
                offset = df.row.size  # another writer may have appended while we waited
        try:
            n = os.pwrite(handle.fd, data, offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpace("the cache disk is full") from exc
            raise
        handle.wrote = True
        df.data_changed = True
        row = df.row
        row.size = max(row.size, offset + n)
        row.meta = PosixMeta(row.meta.mode, row.meta.uid, row.meta.gid, time.time_ns())
        row.generation += 1
        return n

    async def flush(self, handle: Handle) -> None:
        """close(): make the handle's bytes safe in the journal (fsync'ed), not yet uploaded."""
        df = handle.dirty
        if df is None or not df.data_changed or not (handle.wrote or not df.persisted):
            return
        if handle.wrote:
            await trio.to_thread.run_sync(os.fsync, handle.fd)
        self.pending.persist(df)
        handle.wrote = False

    async def fsync(self, handle: Handle) -> None:
        """fsync(): return once the file is durable in the bucket."""
        await self.flush(handle)
        df = handle.dirty
        if df is not None and self.dirty.get(df.row.path) is not df:
            return  # unlinked or renamed over while open: none of it goes to the bucket
        path = df.row.path if df else handle.path
        if path in self.dirty:
            self.writeback.schedule(path, delay=0)
            await self.writeback.flush(path)

    async def release(self, handle: Handle) -> None:
        self.objects.release(handle)
        df = handle.dirty
        if df is None or not handle.writable:
            return
        df.writers -= 1
        path = df.row.path
        if df.writers > 0 or self.dirty.get(path) is not df:
            return
        if not df.data_changed:
            self.pending.revert_unchanged(path, df)
        elif df.uploaded_generation == df.row.generation and df.uploaded is not None:
            self.pending.finish_clean(path, df, *df.uploaded)
        else:
            self.writeback.schedule(path)

    # -- open files whose name is gone ----------------------------------------------------

    def stat_open(self, handles: Sequence[Handle]) -> Stat:
        """What stat shows for a file that is open but has no name any more (unlinked, or
        renamed over), from its open `handles` alone: no request, no journal.

        A writer's `DirtyFile` (all writers of a file share it) holds its size and attributes.
        Without one, a reader's: the attributes it was opened with, and the size of what it
        reads (its local file, else the object version its ranges come from).
        """
        for handle in handles:
            if handle.dirty is not None:
                row = handle.dirty.row
                return Stat(row.meta, row.size, row.base_etag, "unlinked")
        for handle in handles:
            opened = handle.opened
            if opened is None:
                continue
            if handle.fd >= 0:
                size = os.fstat(handle.fd).st_size
            elif handle.fetcher is not None:
                size = handle.fetcher.size
            else:
                size = opened.size
            return replace(opened, size=size, state="unlinked")
        raise NotFound("a file with no name and no handle that describes it")

    def setattr_open(
        self,
        handles: Sequence[Handle],
        *,
        mode: int | None = None,
        uid: int | None = None,
        gid: int | None = None,
        size: int | None = None,
        mtime_ns: int | None = None,
        handle: Handle | None = None,
    ) -> Stat:
        """setattr of a file that is open but has no name any more, through its open
        `handles` (`handle`: the one the call came through, when the kernel names it).

        Only what the open file holds changes: a size (ftruncate) truncates a writer's own
        local file, and mode, owner and mtime change what `stat_open` shows. Nothing reaches
        the journal or the bucket: the file's pending upload went with its name, and
        `PendingFiles.persist` never journals a row that is not its path's current one.
        """
        if self.opts.read_only:
            raise ReadOnly("the mount is read-only")
        s = self.stat_open(handles)
        meta = PosixMeta(
            (s.meta.mode & ~0o7777) | (mode & 0o7777) if mode is not None else s.meta.mode,
            s.meta.uid if uid is None else uid,
            s.meta.gid if gid is None else gid,
            s.meta.mtime_ns if mtime_ns is None else mtime_ns,
        )
        if size is not None:
            candidates = [handle] if handle is not None else handles
            writer = next((h for h in candidates if h.writable and h.dirty is not None), None)
            if writer is None or writer.dirty is None:
                raise InvalidArgument("a file with no name is truncated only through a "
                                      "descriptor open for writing")
            # On the trio thread, as writes are: no write can land between the truncate and
            # the size it records.
            os.ftruncate(writer.fd, size)
            df = writer.dirty
            df.row.size = size
            df.row.generation += 1
            df.data_changed = True
            if mtime_ns is None:
                meta = PosixMeta(meta.mode, meta.uid, meta.gid, time.time_ns())
        for h in handles:
            if h.dirty is not None:
                h.dirty.row.meta = meta
            elif h.opened is not None:
                h.opened = replace(h.opened, meta=meta)
        return self.stat_open(handles)

    # -- history: `zonefs versions`, `restore`, `undelete` ----------------------------------

    async def version_list(self, path: str) -> list[dict[str, Any]]:
        """Every version of the file at `path`, newest first (`zonefs versions`)."""
        self._check_history_path(path)
        return await self.history.describe(path)

    def _check_history_path(self, path: str) -> None:
        if not path or keys.is_within(path, RESERVED):
            raise InvalidArgument(f"{path or '/'}: name a file of the zone")

    async def _settle(self, path: str) -> None:
        """Upload what is pending for `path` first: the history command must act on the
        bucket's latest, and a later upload must not undo it."""
        self._check_writable(path)
        self._check_history_path(path)
        if self.writeback.is_pending(path):  # new bytes, or a delete
            self.writeback.schedule(path, delay=0)
            await self.writeback.flush(path)

    def _changed_remotely(self, path: str) -> None:
        self.cache.invalidate(path)
        self.objects.forget_opened(path)

    async def restore(self, path: str, *, version_id: str | None = None,
                      when: float | None = None) -> dict[str, Any]:
        """Make an older version of `path` current again (a server-side copy)."""
        await self._settle(path)
        chosen, info = await self.history.restore(path, version_id=version_id, when=when)
        self._changed_remotely(path)
        return {"restored": chosen.version_id, "from_time": chosen.mtime,
                "new_version": info.version_id, "size": info.size}

    async def undelete(self, path: str) -> str:
        """Bring the deleted file at `path` back."""
        await self._settle(path)
        how = await self.history.undelete(path)
        self._changed_remotely(path)
        return how

    # -- whole filesystem ---------------------------------------------------------------------

    def statfs(self) -> dict[str, int]:
        block = 4096
        total = 1 << 50
        return {"f_bsize": block, "f_frsize": block, "f_blocks": total // block,
                "f_bfree": total // block, "f_bavail": total // block, "f_files": 1 << 32,
                "f_ffree": 1 << 32, "f_favail": 1 << 32, "f_namemax": keys.NAME_MAX}

    def open_for_write(self) -> int:
        return self.pending.open_for_write()

    @property
    def pending_count(self) -> int:
        """Changes not yet in the bucket: files, directories and symlinks to put, deletes."""
        return self.pending.count

    async def sync_dir(self, path: str) -> None:
        """fsync of a directory: return once every pending change of its entries (files,
        directories and symlinks created or changed in it, deletes, renames into it) is in
        the bucket."""
        todo = [df.queue_key for p, df in list(self.dirty.items()) if keys.split(p)[0] == path]
        todo += [k for k in list(self.deletes.by_key)
                 if keys.split(k[:-1] if k.endswith("/") else k)[0] == path]
        await self.pending.flush(todo)

    @property
    def dirty_bytes(self) -> int:
        """Bytes of local data waiting for upload."""
        return sum(df.row.size for df in self.dirty.values() if df.row.data)

    def status(self) -> dict[str, Any]:
        dirty_bytes = self.dirty_bytes
        return {
            "zone": self.remote.description,
            "dirty_files": sum(1 for df in self.dirty.values() if not df.is_dir),
            "dirty_bytes": dirty_bytes,
            "pending_dirs": sum(1 for df in self.dirty.values() if df.is_dir),
            "pending_deletes": len(self.deletes),
            "pending": self.pending_count,
            "uploaded_bytes": self.uploaded_bytes,
            "downloaded_bytes": self.remote.requests.downloaded_bytes,
            "writeback": self.writeback.stats_dict(),
            "cache": self.blobs.stats(),
            "requests": dict(self.remote.requests.counts),
            "odd_keys": [{"key": k, "what": w} for k, w in sorted(self._reported.items())],
            "conflicts": self.pending.conflicts,
        }
