"""Open files: create, open, read, write, close (flush), fsync and release, by path, with no
knowledge of FUSE.

`Files` gives a path local mutable data when it is opened for writing (a staging file, copied
from the blob cache or downloaded, unless truncated), serves reads from a local file or a
`fetch.RangeFetcher`, and tells the pending ledger (`pending.ledger.Ledger`) what each call did
to a file's pending row: it changes none itself.

Invariants:
- close() returns once the row is in the journal (fsync'ed) and the bytes are durable: for a
  file up to `INLINE_MAX`, journaled with the row in the same commit; for a larger one,
  fsync'ed in their staging file first. The upload is scheduled at the last writer's close
  (or by fsync).
- While a file has writers, no upload of it is in flight: opening for write cancels one.
- A file unlinked or renamed over while open lives on in its handles only: reads, writes,
  `stat_open` and `setattr_open` work on its local file, and nothing of it reaches the journal
  or the bucket once its name is gone.
- A read handle reads the version it opened, except past its end: a file that has grown since
  (its newer version ends the old bytes the same way: a log another machine appends to) is
  followed there, so `tail -f` sees what was appended. One read never mixes two versions.
"""

from __future__ import annotations

import errno
import os
import stat as st
from collections.abc import Sequence
from dataclasses import replace
from typing import TYPE_CHECKING

import trio

from zonefs.common import keys
from zonefs.common.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NoSpace,
    NotFound,
    NotSupported,
    ReadOnly,
    ZonefsError,
)
from zonefs.common.keys import RESERVED, PosixMeta
from zonefs.core.exclusive import Taken
from zonefs.core.values import Handle, Stat
from zonefs.pending.rows import ANY_OBJECT, INLINE_MAX, Kind

#: Bytes before the end of a read handle's version compared with a newer version before the
#: handle follows the file into it (`Files._follow`).
FOLLOW_CHECK = 4096

if TYPE_CHECKING:
    from zonefs.cache.blobs import BlobStore
    from zonefs.cache.journal import Journal
    from zonefs.common.config import MountOptions
    from zonefs.core.exclusive import ExclusiveCreates
    from zonefs.core.objects import RemoteObjects
    from zonefs.core.versions import History
    from zonefs.core.view import View
    from zonefs.pending.ledger import Ledger
    from zonefs.pending.rows import DirtyFile
    from zonefs.remote.base import Remote

#: The file types `create` keeps besides regular files (mknod, bind).
_SPECIAL_TYPES = (st.S_IFIFO, st.S_IFSOCK, st.S_IFCHR, st.S_IFBLK)


def _copy_fd_to(fd: int, dest: str) -> None:
    """Copy the whole file open at `fd` to the path `dest` (blocking: run it in a thread)."""
    with open(dest, "wb") as out:
        offset = 0
        while chunk := os.pread(fd, 1 << 20, offset):
            out.write(chunk)
            offset += len(chunk)


class Files:
    """Open files by path; see the module docstring for the invariants."""

    def __init__(self, remote: Remote, journal: Journal, blobs: BlobStore,
                 objects: RemoteObjects, ledger: Ledger, history: History, view: View,
                 exclusive: ExclusiveCreates, opts: MountOptions) -> None:
        self.remote, self.journal, self.blobs, self.objects = remote, journal, blobs, objects
        self.ledger, self.history, self.view, self.opts = ledger, history, view, opts
        self.exclusive = exclusive


    async def make_dirty(self, path: str, *, truncate: bool) -> DirtyFile:
        """Give `path` local mutable data (copied or downloaded unless truncating)."""
        await self.ledger.cancel(path)
        df = self.ledger.row(path)
        if df is not None and df.row.data is not None:
            if truncate:
                os.truncate(self.blobs.abspath(df.row.data), 0)
                self.ledger.truncated(df, 0)
            return df
        s = await self.view.stat(path)
        # A renamed file whose copy is not made yet: its bytes are still under the old name.
        source = df.row.source if df is not None and df.is_copy else None
        staging = self.blobs.new_staging()
        if not truncate and s.size:
            if source is not None:
                await self._copy_current(source, self.source_etag(source), staging)
            else:
                await self._copy_current(path, s.etag, staging)
        return self.ledger.took_local_copy(path, self.blobs.relpath(staging),
                                           0 if truncate else s.size, s.meta, s.etag,
                                           truncated=truncate)

    def source_etag(self, source: str) -> str | None:
        """The ETag of the object a pending copy reads (its name's delete remembers it)."""
        d = self.ledger.delete_of(source)
        if d is not None and d.etag:
            return d.etag
        memo = self.journal.get_object(source)
        return memo.etag if memo is not None else None

    async def _copy_current(self, key: str, etag: str | None, dest: str) -> None:
        memo = self.journal.get_object(key, etag)
        if memo is not None and memo.sha256:
            fd = await self.blobs.open_verified(memo.sha256, key=key)
            if fd is not None:
                try:
                    await trio.to_thread.run_sync(_copy_fd_to, fd, dest)
                finally:
                    os.close(fd)
                return
        await self.remote.download(key, dest, None, etag)

    async def create(self, path: str, mode: int, uid: int, gid: int, rdev: int = 0, *,
                     exclusive: bool = False) -> tuple[Handle, Stat]:
        """A new file at `path`, open for writing. `mode`'s type may also be a FIFO, a socket
        or a device (mknod, bind): an empty object whose `mode` header (and `rdev`, for a
        device) says so; the kernel gives it its behaviour. Any other type is a regular
        file. `exclusive` (O_EXCL): the name is taken in the store before this returns
        (`ExclusiveCreates`), Exists if another client has it."""
        self.view.check_writable(path)
        self.view.check_new_name(path)
        await self.view.parent_dir(path)
        existing = await self.view.exists(path)
        if existing is not None and existing.is_dir:
            raise IsADirectory(path)
        if exclusive and existing is not None:
            raise Exists(path)  # made since the kernel looked the name up
        staging, fd = self.blobs.open_new_staging()
        kind = st.S_IFMT(mode) if st.S_IFMT(mode) in _SPECIAL_TYPES else st.S_IFREG
        device = kind in (st.S_IFCHR, st.S_IFBLK)
        meta = PosixMeta.new(kind | (mode & 0o7777), uid, gid, rdev if device else 0)
        try:
            taken = Taken(None)
            if exclusive:
                taken = await self.exclusive.create(path, path, b"", keys.encode_meta(meta))
            if taken.info is not None:
                # Taken in the store: the file's bytes replace that empty object at close.
                df = await self.ledger.created(path, self.blobs.relpath(staging), meta,
                                               taken.info.etag, True)
            elif taken.may_exist:
                # Its answer was lost: an empty object of this create may be there.
                df = await self.ledger.created(path, self.blobs.relpath(staging), meta,
                                               ANY_OBJECT, True)
            else:
                df = await self.ledger.created(path, self.blobs.relpath(staging), meta,
                                               existing.etag if existing else None,
                                               existing is not None)
        except BaseException:
            os.close(fd)
            os.unlink(staging)
            raise
        s = Stat(meta, 0, None, "dirty")
        return Handle(path, True, fd=fd, dirty=df, opened=s), s

    async def open(self, path: str, flags: int) -> Handle:
        writable = (flags & os.O_ACCMODE) != os.O_RDONLY
        if writable or flags & os.O_TRUNC:
            self.view.check_writable(path)
        s = await self.view.stat(path)
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
            df = await self.make_dirty(path, truncate=bool(flags & os.O_TRUNC))
            self.ledger.opened_for_write(df)
            fd = os.open(self.blobs.abspath(df.row.data or ""), os.O_RDWR)
            return Handle(path, True, append=bool(flags & os.O_APPEND), fd=fd, dirty=df)
        df = self.ledger.row(path)
        if df is not None and df.row.data is not None:
            return Handle(path, False, fd=os.open(self.blobs.abspath(df.row.data), os.O_RDONLY))
        if df is not None and df.is_copy and df.row.source is not None:
            # Renamed, copy not made yet: read the object under its old name.
            return await self.objects.open_version(path, df.row.source, None,
                                                   self.source_etag(df.row.source) or "",
                                                   df.row.size)
        return await self.objects.open(path, s)

    async def read(self, handle: Handle, offset: int, size: int) -> bytes:
        data = await self._read(handle, offset, size)
        if len(data) < size and await self._follow(handle, offset + len(data)):
            return await self._read(handle, offset, size)  # all of it from the newer one
        return data

    async def _read(self, handle: Handle, offset: int, size: int) -> bytes:
        if handle.fetcher is not None:
            return await handle.fetcher.read(offset, size)
        return os.pread(handle.fd, size, offset)

    async def _follow(self, handle: Handle, end: int) -> bool:
        """`handle` read to the end (`end`) of the version it opened: when the file has
        grown since, and its current version holds the same bytes before `end` (the last
        FOLLOW_CHECK of them are compared), the handle moves to it. Whether it moved."""
        if handle.writable or handle.dirty is not None or handle.fetcher is None and \
                handle.fd < 0 or keys.is_within(handle.path, RESERVED) or \
                self.opts.at is not None:
            return False
        try:
            s = await self.view.stat(handle.path)
            if s.is_dir or s.size <= end or (s.etag is not None and s.etag == handle.etag):
                return False
            newer = await self._open_file(handle.path, os.O_RDONLY, s, False)
        except ZonefsError:
            return False
        start = max(0, end - FOLLOW_CHECK)
        try:
            same = await self._read(newer, start, end - start) == \
                await self._read(handle, start, end - start)
        except (ZonefsError, OSError):
            same = False
        if not same:
            self.objects.release(newer)
            return False
        self.objects.release(handle)
        handle.fd, handle.fetcher, handle.pinned = newer.fd, newer.fetcher, newer.pinned
        handle.etag, handle.keep_cache, handle.opened = newer.etag, False, s
        return True

    async def write(self, handle: Handle, offset: int, data: bytes) -> int:
        df = handle.dirty
        if df is None or not handle.writable:
            raise InvalidArgument("file not open for writing")
        if handle.append:
            offset = df.row.size
        growth = max(0, offset + len(data) - df.row.size)
        if growth:
            await self.ledger.wait_for_room(growth)
            if handle.append:
                offset = df.row.size  # another writer may have appended while we waited
        try:
            n = os.pwrite(handle.fd, data, offset)
        except OSError as exc:
            if exc.errno == errno.ENOSPC:
                raise NoSpace("the cache disk is full") from exc
            raise
        handle.wrote = True
        self.ledger.wrote(df, offset, n)
        return n

    async def flush(self, handle: Handle) -> None:
        """close(): make the handle's bytes safe in the journal (fsync'ed), not yet uploaded."""
        df = handle.dirty
        if df is None or df.kind is not Kind.BYTES or not (handle.wrote or not df.persisted):
            return
        inline = None
        if df.row.size <= INLINE_MAX:
            # Journaled with the row: one fsync for both (a small read from the page cache).
            inline = os.pread(handle.fd, INLINE_MAX + 1, 0)
            if len(inline) > INLINE_MAX:
                inline = None
        if handle.wrote and inline is None:
            await trio.to_thread.run_sync(os.fsync, handle.fd)
        if self.ledger.closed(df, wrote=handle.wrote, inline=inline, durable=False):
            # Acknowledged once the commit is fsync'ed (shared with the closes at the time).
            await self.ledger.wait_durable()
        handle.wrote = False

    async def fsync(self, handle: Handle) -> None:
        """fsync(): return once the file is durable in the bucket."""
        await self.flush(handle)
        df = handle.dirty
        if df is not None and self.ledger.row(df.row.path) is not df:
            return  # unlinked or renamed over while open: none of it goes to the bucket
        path = df.row.path if df else handle.path
        if self.ledger.row(path) is not None:
            await self.ledger.flush([path])

    async def release(self, handle: Handle) -> None:
        self.objects.release(handle)
        df = handle.dirty
        if df is None or not handle.writable:
            return
        self.ledger.last_close(df)

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
        atime_ns: int | None = None,
        ctime_ns: int | None = None,
        handle: Handle | None = None,
    ) -> Stat:
        """setattr of a file that is open but has no name any more, through its open
        `handles` (`handle`: the one the call came through, when the kernel names it).

        Only what the open file holds changes: a size (ftruncate) truncates a writer's own
        local file, and mode, owner and mtime change what `stat_open` shows. Nothing reaches
        the journal or the bucket: the file's pending upload went with its name, and
        `Ledger.persist` never journals a row that is not its path's current one.
        """
        if self.opts.read_only:
            raise ReadOnly("the mount is read-only")
        s = self.stat_open(handles)
        meta = s.meta.set_to(mode=mode, uid=uid, gid=gid, mtime_ns=mtime_ns, atime_ns=atime_ns,
                             ctime_ns=ctime_ns)
        if size is not None:
            candidates = [handle] if handle is not None else handles
            writer = next((h for h in candidates if h.writable and h.dirty is not None), None)
            if writer is None or writer.dirty is None:
                raise InvalidArgument("a file with no name is truncated only through a "
                                      "descriptor open for writing")
            # On the trio thread, as writes are: no write can land between the truncate and
            # the size it records.
            os.ftruncate(writer.fd, size)
            self.ledger.truncated(writer.dirty, size)
            if mtime_ns is None:
                meta = meta.modified_now()
        written = {id(h.dirty): h.dirty for h in handles if h.dirty is not None}
        for df in written.values():
            self.ledger.set_meta(df, meta)
        for h in handles:
            if h.dirty is None and h.opened is not None:
                h.opened = replace(h.opened, meta=meta)
        return self.stat_open(handles)
