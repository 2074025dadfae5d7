"""The filesystem core: every POSIX semantic, by path, with no knowledge of FUSE or inodes.

`Vfs` is the one entry point `fuse_ops`, the daemon and the tests use: it wires the components
together and answers namespace changes (mkdir, rmdir, symlink, unlink, rename), attribute
changes, fsync of a directory, the history commands and status. What a path shows is
`view.View`'s (the remote listing with the pending changes laid over it); open files are
`files.Files`'; pending changes, their journal rows and their uploads are the pending
ledger's (`pending.ledger.Ledger`, the one owner of pending state: the core asks it through
named operations and changes none itself); moving objects is `renames.Renamer`'s.

Invariants:
- A dirty row is written to the journal before its path is handed to the write-back queue, and
  leaves the journal only in the transaction that records the uploaded object.
- An upload marks a file clean only if nothing changed it while the upload ran (generation).
- mkdir, rmdir, unlink and symlink, and the rename of a file with pending bytes, are journaled
  (fsync'ed) before they return and reach the bucket through the write-back queue, so they
  work while the store is unreachable. Attribute changes are journaled at once and fsync'ed
  within a second. Other renames copy objects in the store before they return; they are
  journaled first, and one a crash cut short is finished by `recover`, which runs before the
  mount answers and before pending changes are queued again.
"""

from __future__ import annotations

import logging
import os
import sqlite3
import stat as st
import time
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import trio

from zonefs.cache.dircache import DirCache, Entry
from zonefs.cache.journal import DirtyRow, Journal, ObjectRow
from zonefs.common import keys
from zonefs.common.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotPermitted,
    ZonefsError,
)
from zonefs.common.keys import RESERVED, PosixMeta
from zonefs.core.changelog import ChangeLog
from zonefs.core.content import ContentIds
from zonefs.core.exclusive import ExclusiveCreates
from zonefs.core.files import Files
from zonefs.core.objects import RemoteObjects
from zonefs.core.renames import Renamer
from zonefs.core.values import Handle, Stat
from zonefs.core.versions import History
from zonefs.core.view import View
from zonefs.pending.ledger import Ledger
from zonefs.pending.moves import LocalMoves

if TYPE_CHECKING:
    from zonefs.cache.blobs import BlobStore
    from zonefs.common.config import MountOptions
    from zonefs.core.fetch import Spawn
    from zonefs.core.memory import MemoryBudget
    from zonefs.remote.base import ObjectInfo, Remote
    from zonefs.remote.probe import Capabilities

log = logging.getLogger(__name__)

RENAME_NOREPLACE = 1
RENAME_EXCHANGE = 2


def _write_synced(dest: str, data: bytes) -> None:
    """Write `data` to the file `dest` and fsync it (blocking: run it in a thread)."""
    with open(dest, "wb") as out:
        out.write(data)
        out.flush()
        os.fsync(out.fileno())


class Vfs:
    """Path-based filesystem over one zone. See the module docstring for the invariants."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        blobs: BlobStore,
        opts: MountOptions,
        capabilities: Capabilities,
        *,
        spawn: Spawn,
        memory: MemoryBudget | None = None,
    ) -> None:
        self.remote, self.journal, self.blobs, self.opts = remote, journal, blobs, opts
        self._spawn = spawn
        self.cache = DirCache(opts.metadata_ttl)
        # What the store can do: the store probe's answers, known before the mount answers.
        self.capabilities = capabilities
        # What ranged reads may hold in memory (`-o max_memory`, sized by the daemon).
        self.memory = memory
        self.objects = RemoteObjects(remote, journal, blobs, self.cache, opts, spawn=spawn,
                                     dir_markers_dropped=capabilities.dir_markers == "dropped",
                                     budget=self.memory)
        self.ledger = Ledger(remote, journal, blobs, self.cache, opts, capabilities,
                             forget_opened=self.objects.forget_opened)
        self.moves = LocalMoves(self.ledger, journal)
        self.renamer = Renamer(remote, journal, self.ledger, self.moves,
                               put_marker=self._put_marker, marker_meta=self._marker_meta)
        self.history = History(remote, self.objects, uid=opts.uid, gid=opts.gid,
                               ttl=opts.metadata_ttl, capabilities=capabilities)
        # Every change this mount makes in the store lands in the listing cache: the
        # history views and commands hear of each at once.
        self.cache.on_local_change(self.history.forget)
        self.view = View(remote, journal, self.cache, self.objects, self.ledger, self.history,
                         opts, capabilities, spawn=spawn)
        self.exclusive = ExclusiveCreates(remote, self.ledger, self.cache, capabilities, opts)
        self.files = Files(remote, journal, blobs, self.objects, self.ledger, self.history,
                           self.view, self.exclusive, opts)
        self.content = ContentIds(remote, journal, blobs, self.cache, self.objects, self.ledger,
                                  self.view, self.files, ttl=opts.metadata_ttl)
        # Run by the daemon (`-o changes=on`): other mounts hear of this one's writes.
        self.changes = ChangeLog(remote, self.cache, writable=not opts.read_only,
                                 forget_opened=self.objects.forget_opened,
                                 poll=opts.change_poll)
        self.changes.on_others = self.ledger.others_watching

    @property
    def uploaded_bytes(self) -> int:
        return self.ledger.uploaded_bytes

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
        await self.ledger.abort_leftover_uploads()
        return await self.renamer.resume()

    async def keep_journal_synced(self) -> None:
        """Fsync lazy journal commits now and then (run by the daemon)."""
        await self.ledger.keep_journal_synced()

    def requeue_dirty(self) -> int:
        """Hand every journaled change to the write-back queue (at mount)."""
        return self.ledger.requeue()

    # -- what paths show (view.View) --------------------------------------------------------

    async def stat(self, path: str) -> Stat:
        return await self.view.stat(path)

    def subdirs(self, path: str) -> int:
        """How many subdirectories the directory `path` has, as far as the mount knows."""
        return self.view.subdirs(path)

    async def listdir(self, path: str) -> list[tuple[str, Stat]]:
        """Sorted (name, Stat) of a directory, pending local changes included."""
        return await self.view.listdir(path)

    async def listing(self, path: str) -> Sequence[tuple[str, Stat]]:
        """What `listdir` answers, each Stat made when it is read (`values.Listing`): what a
        readdir handle holds while it is open."""
        return await self.view.listing(path)

    # -- open files (files.Files) -----------------------------------------------------------

    async def create(self, path: str, mode: int, uid: int, gid: int, rdev: int = 0, *,
                     exclusive: bool = False) -> tuple[Handle, Stat]:
        made = await self.files.create(path, mode, uid, gid, rdev, exclusive=exclusive)
        await self._entries_changed(path)
        return made

    async def open(self, path: str, flags: int) -> Handle:
        return await self.files.open(path, flags)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        return await self.files.read(handle, offset, size)

    async def write(self, handle: Handle, offset: int, data: bytes) -> int:
        return await self.files.write(handle, offset, data)

    async def flush(self, handle: Handle) -> None:
        """close(): make the handle's bytes safe in the journal (fsync'ed), not yet uploaded."""
        await self.files.flush(handle)

    async def fsync(self, handle: Handle) -> None:
        """fsync(): return once the file is durable in the bucket."""
        await self.files.fsync(handle)

    async def release(self, handle: Handle) -> None:
        await self.files.release(handle)

    def stat_open(self, handles: Sequence[Handle]) -> Stat:
        """What stat shows for a file that is open but has no name any more."""
        return self.files.stat_open(handles)

    def setattr_open(self, handles: Sequence[Handle], **changes: Any) -> Stat:
        """setattr of a file that is open but has no name any more (see `Files`)."""
        return self.files.setattr_open(handles, **changes)

    # -- namespace changes ------------------------------------------------------------------------

    async def _entries_changed(self, *paths: str) -> None:
        """Entries were created, removed or renamed at `paths`: the directories holding them
        get mtime and ctime now, shown at once, and kept on their markers by write-back as a
        pending attribute change (one row per directory: a burst of creates in one
        directory costs one marker put when it is quiet)."""
        for parent in dict.fromkeys(keys.split(p)[0] for p in paths):
            try:
                await self._dir_changed(parent)
            except (ZonefsError, sqlite3.Error, OSError) as exc:
                # The change itself was made (and answered as done): only the directory's
                # times are not kept (removed meanwhile, headers not known now, a full disk).
                log.info("the times of %r were not updated: %s", parent or "/", exc)

    async def _dir_changed(self, parent: str) -> None:
        """An entry of the directory `parent` was created, removed or renamed."""
        if parent == "":
            self.view.root_changed()
            return
        s = await self.stat(parent)
        if not s.is_dir or s.provisional:
            return  # its headers are not known: a put would replace them by defaults
        meta = s.meta.modified_now()
        pending = self.ledger.row(parent) is not None
        if pending or (not self.objects.dir_markers_dropped and self.view.has_marker(parent)):
            # On the marker, by write-back: a row already queued keeps its due time.
            self.ledger.metadata_changed(parent, meta, size=0, etag=s.etag, keep_due=True)
        elif self.objects.dir_markers_dropped:
            # The store keeps no headers on markers (SeaweedFS): a put would keep nothing.
            # This machine remembers them, as it does the attributes it sets there.
            self.objects.remember_dir_meta(parent, meta)
            self.view.set_cached_meta(parent, meta)
        else:
            # A directory that exists only as a prefix of other keys gets no marker for
            # this (the bucket keeps the layout other tools gave it): its new times show
            # while the mount remembers its entry.
            self.view.set_cached_meta(parent, meta)

    async def mkdir(self, path: str, mode: int, uid: int, gid: int) -> Stat:
        made = await self._mkdir(path, mode, uid, gid)
        self.view.dir_added(path)
        await self._entries_changed(path)
        return made

    async def _mkdir(self, path: str, mode: int, uid: int, gid: int) -> Stat:
        """A new directory: its marker put in the store at once where the store enforces
        conditional creates (`ExclusiveCreates`: of mounts racing for the name, one wins), else
        a pending one, put by the write-back queue."""
        self.view.check_writable(path)
        self.view.check_new_name(path)
        await self.view.parent_dir(path)
        if await self.view.exists(path) is not None:
            raise Exists(path)
        meta = PosixMeta.new(st.S_IFDIR | (mode & 0o7777), uid, gid)
        key = keys.dir_key(path)
        taken = await self.exclusive.create(key, path, b"", keys.encode_meta(meta),
                                            keys.DIR_CONTENT_TYPE)
        made = taken.info
        if made is not None:
            self._marker_made(path, made, meta)
            state = "clean"
        else:
            await self.ledger.created_entry(DirtyRow(path, None, 0, meta, None, 1),
                                            may_exist=taken.may_exist)
            state = "dirty"
        # A new directory is empty: lookups in it need not ask the bucket (and work while it
        # cannot be reached).
        self.cache.put_listing(path, {})
        return Stat(meta, 0, made.etag if made is not None else None, state)

    def _marker_made(self, path: str, info: ObjectInfo, meta: PosixMeta) -> None:
        """The marker of the directory `path` was put (`info`) with the attributes `meta`."""
        self.cache.put_entry(path, Entry(True, 0, info.etag, time.time(), meta, marker=True))
        # Remembered too: where the store drops a marker's metadata (the probe's
        # dir_markers=dropped), this machine still shows the attributes it set.
        self.journal.put_object(ObjectRow(keys.dir_key(path), info.etag, 0, meta))

    async def _put_marker(self, path: str, meta: PosixMeta) -> None:
        """Put the marker of `path` now (a rename's step; mkdir goes through write-back)."""
        info = await self.remote.put_bytes(keys.dir_key(path), b"", keys.encode_meta(meta),
                                           keys.DIR_CONTENT_TYPE)
        self._marker_made(path, info, meta)

    async def _marker_meta(self, path: str, mtime: float) -> PosixMeta:
        """The attributes of the directory `path` as the store (or this machine, where the
        store drops a marker's metadata) knows them, for a rename that puts its marker anew;
        `mtime` (its listed LastModified) stands in when nothing says more."""
        known = self.cache.entry(path)
        if isinstance(known, Entry) and known.is_dir and known.meta is not None:
            return known.meta
        entry = Entry(True, 0, None, mtime)
        await self.objects.ensure_meta(path, entry, whole=False)
        assert entry.meta is not None
        return entry.meta

    async def rmdir(self, path: str) -> None:
        await self._rmdir(path)
        self.view.dir_removed(path)
        await self._entries_changed(path)

    async def _rmdir(self, path: str) -> None:
        """A pending delete of the directory's marker (once nothing below it is pending)."""
        self.view.check_writable(path)
        if path == "":
            raise NotPermitted("cannot remove the mount root")
        s = await self.stat(path)
        if not s.is_dir:
            raise NotADirectory(path)
        # Look at the store again (it may have new keys from other clients), but keep the
        # last listing to answer from while it cannot be reached.
        self.cache.expire_tree(path)
        if await self.listing(path):
            raise NotEmpty(path)
        await self.ledger.removed(path, is_dir=s.is_dir, etag=s.etag)

    async def symlink(self, path: str, target: str, uid: int, gid: int) -> Stat:
        made = await self._symlink(path, target, uid, gid)
        await self._entries_changed(path)
        return made

    async def _symlink(self, path: str, target: str, uid: int, gid: int) -> Stat:
        """A pending symlink: a small object whose body is the target, put by write-back."""
        self.view.check_writable(path)
        self.view.check_new_name(path)
        await self.view.parent_dir(path)
        if await self.view.exists(path) is not None:
            raise Exists(path)
        meta = PosixMeta.new(st.S_IFLNK | 0o777, uid, gid)
        body = os.fsencode(target)
        staging = self.blobs.new_staging()
        await trio.to_thread.run_sync(_write_synced, staging, body)
        await self.ledger.created_entry(DirtyRow(path, self.blobs.relpath(staging), len(body),
                                                 meta, None, 1))
        return Stat(meta, len(body), None, "dirty")

    async def readlink(self, path: str) -> str:
        s = await self.stat(path)
        if not st.S_ISLNK(s.meta.mode):
            raise InvalidArgument(f"{path} is not a symlink")
        df = self.ledger.row(path)
        if df is not None and df.row.data is not None:
            with open(self.blobs.abspath(df.row.data), "rb") as f:
                return os.fsdecode(f.read())
        key = df.row.source if df is not None and df.is_copy and df.row.source else path
        return os.fsdecode(bytes(await self.remote.get_range(key, 0, max(s.size, 1))))

    async def unlink(self, path: str) -> None:
        """A pending delete of the object (none when the store cannot hold one); a pending
        upload of the file is cancelled."""
        self.view.check_writable(path)
        s = await self.stat(path)
        if s.is_dir:
            raise IsADirectory(path)
        await self.ledger.removed(path, is_dir=s.is_dir, etag=s.etag)
        await self._entries_changed(path)

    async def rename(self, old: str, new: str, flags: int = 0) -> None:
        if await self._rename(old, new, flags):
            await self._entries_changed(old, new)

    async def _rename(self, old: str, new: str, flags: int) -> bool:
        """Whether anything moved."""
        self.view.check_writable(old)
        self.view.check_writable(new)
        if flags & RENAME_EXCHANGE:
            raise InvalidArgument("RENAME_EXCHANGE is not supported")
        if flags & ~RENAME_NOREPLACE:
            raise InvalidArgument(f"rename flags {flags:#x}")
        if old == new:
            return False
        if keys.is_within(new, old):
            raise InvalidArgument("cannot move a directory into itself")
        self.view.check_new_name(new)
        src = await self.stat(old)
        await self.view.parent_dir(new)
        dst = await self.view.exists(new)
        if dst is not None:
            if flags & RENAME_NOREPLACE:
                raise Exists(new)
            if src.is_dir and not dst.is_dir:
                raise NotADirectory(new)
            if dst.is_dir and not src.is_dir:
                raise IsADirectory(new)
            if dst.is_dir:
                if await self.listing(new):
                    raise NotEmpty(new)
                # A pending delete of its marker, which the move applies before it copies.
                await self.ledger.removed(new, is_dir=dst.is_dir, etag=dst.etag)
        if not src.is_dir:
            # Looked at again, with nothing awaited before the move decides: an upload of
            # `old` that landed while `new` was looked up changed the object the move starts
            # from, and the copy's reads and the old name's delete ask for its ETag.
            src = await self.stat(old)
        dst_etag = dst.etag if dst is not None else None
        if not src.is_dir and self.moves.moves_locally(old):
            # Pending bytes go up under the new name: no request now, none of the caches'
            # remote facts change (the overlay of pending changes shows the move).
            if await self.moves.move_pending_file(old, new, dst_etag, dst is not None):
                return True
            src = await self.stat(old)  # uploaded meanwhile: moved by a copy in the store
        if not src.is_dir and await self.moves.move_by_copy(
                old, new, size=src.size, meta=src.meta.changed_now(), etag=src.etag,
                dst_etag=dst_etag,
                dst_exists=dst is not None):
            return True  # a pending copy, then the old name's delete: no request now either
        try:
            # A rename changes the ctime of what it moves (as on a local filesystem).
            if src.is_dir:
                await self.renamer.move_dir(old, new, src.meta.changed_now())
                self.view.dir_moved(old, new, replaced=dst is not None)
            else:
                await self.renamer.move_file(old, new, src)
        finally:
            # Also after a rename that failed part-way: objects may be under both names.
            self.cache.invalidate_tree(old)
            self.cache.invalidate_tree(new)
        return True

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
        atime_ns: int | None = None,
        ctime_ns: int | None = None,
        handle: Handle | None = None,
    ) -> Stat:
        self.view.check_writable(path)
        s = await self.stat(path)
        if size is not None and s.is_dir:
            raise IsADirectory(path)
        meta = s.meta.set_to(mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns, atime_ns=atime_ns,
                             ctime_ns=ctime_ns)
        if size is None and s.meta.same_but_ctime(meta):
            # Nothing changes: no new object version for a chmod to the same mode or a
            # `chown -1 -1` (which leave ctime as it was on a local filesystem too).
            return s
        if path == "":
            raise NotPermitted("the mount root's attributes come from the mount options")
        if size is not None:
            df = handle.dirty if handle is not None and handle.dirty else None
            if df is None:
                df = await self.files.make_dirty(path, truncate=size == 0)
            os.truncate(self.blobs.abspath(df.row.data or ""), size)
            self.ledger.truncated(df, size)
            if mtime_ns is None:
                meta = meta.modified_now()
            self.ledger.set_meta(df, meta)
        else:
            self.ledger.metadata_changed(path, meta, size=s.size, etag=s.etag)
        return await self.stat(path)

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
        self.view.check_writable(path)
        self._check_history_path(path)
        await self.ledger.upload_now(path)  # new bytes, or a delete

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
        return self.ledger.open_for_write()

    @property
    def pending_count(self) -> int:
        """Changes not yet in the bucket: files, directories and symlinks to put, deletes."""
        return self.ledger.count

    async def sync_dir(self, path: str) -> None:
        """fsync of a directory: return once every pending change of its entries (files,
        directories and symlinks created or changed in it, deletes, renames into it) is in
        the bucket."""
        todo = [df.queue_key for p, df in list(self.ledger.items())
                if keys.split(p)[0] == path]
        todo += [k for k in self.ledger.delete_keys()
                 if keys.split(k[:-1] if k.endswith("/") else k)[0] == path]
        await self.ledger.flush(todo)

    @property
    def dirty_bytes(self) -> int:
        """Bytes of local data waiting for upload."""
        return sum(df.row.size for _, df in self.ledger.items() if df.row.data)

    def refused(self) -> list[dict[str, Any]]:
        """The changes the store refused for good (see `WriteBack.refused`): each key (a
        directory's ends in "/"), the store's answer, and since when (seconds since the
        epoch). Their bytes stay in the cache and their rows in the journal."""
        return [{"path": r.path, "answer": r.answer, "since": round(r.since, 3)}
                for r in self.ledger.refused()]

    def metrics(self) -> dict[str, Any]:
        """`status`, with the request latencies by kind (bucket counts and sum): what the
        metrics endpoint shows (`mount.metrics`), taken on the trio thread."""
        return {**self.status(),
                "latency": {kind: (list(lat.buckets), lat.total)
                            for kind, lat in self.remote.requests.latency.items()}}

    def status(self) -> dict[str, Any]:
        dirty_bytes = self.dirty_bytes
        return {
            "zone": self.remote.description,
            "store": self.remote.health.to_dict(),
            "dirty_files": sum(1 for _, df in self.ledger.items() if not df.is_dir),
            "dirty_bytes": dirty_bytes,
            "pending_dirs": sum(1 for _, df in self.ledger.items() if df.is_dir),
            "pending_deletes": len(self.ledger.delete_keys()),
            "pending": self.pending_count,
            "uploaded_bytes": self.uploaded_bytes,
            "downloaded_bytes": self.remote.requests.downloaded_bytes,
            "writeback": self.ledger.writeback_stats(),
            "refused": self.refused(),
            "cache": self.blobs.stats(),
            "requests": dict(self.remote.requests.counts),
            "odd_keys": [{"key": k, "what": w} for k, w in sorted(self.view.reported.items())],
            "conflicts": self.ledger.conflicts,
            "exclusive_creates": self.exclusive.to_dict(),
            "changes": self.changes.to_dict(),
            "memory": self.memory.to_dict() if self.memory is not None else None,
        }
