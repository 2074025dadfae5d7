"""The FUSE adapter: `pyfuse3.Operations` on top of the path-based `Vfs`.

It owns inode numbers (through `InodeTable`), file handles and directory snapshots, and builds
`EntryAttributes`; it holds no cache or S3 logic. Errors are translated here, in `_errors`, and
only here: a `ZonefsError` becomes `FUSEError(exc.errno)`, an `OSError` keeps its errno, and
anything else is logged with its traceback and becomes EIO. Nothing but `FUSEError` leaves a
handler; `forget` never raises.

Lookup counts follow pyfuse3's contract: lookup, create, mkdir, symlink and mknod add one, and so
does every `readdir_reply` that returns True. Unlinked inodes live until the kernel forgets them.

Open files whose name is gone: `_open` maps every inode with open file handles to them (added
by open and create, removed by release; it does not touch lookup counts). An inode that
`InodeTable` has detached (unlinked, or renamed over) has no path for `Vfs`, so getattr and
setattr of one that is still open answer from its handles (`Vfs.stat_open`,
`Vfs.setattr_open`), with st_nlink 0; one with no handle left is ENOENT, as before.
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import stat as st
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from typing import TYPE_CHECKING, Any

import pyfuse3
import trio

from zonefs.common.errors import NotFound, ZonefsError
from zonefs.common.keys import NAME_MAX, join
from zonefs.core.content import XATTR_NAMES, XATTR_PREFIX
from zonefs.mount.inodes import InodeTable

if TYPE_CHECKING:
    from zonefs.common.config import MountOptions
    from zonefs.core.values import Handle, Stat
    from zonefs.core.vfs import Vfs

log = logging.getLogger(__name__)

_XATTR_PREFIX_BYTES = XATTR_PREFIX.encode()


@asynccontextmanager
async def _errors(op: str, *args: Any) -> AsyncIterator[None]:
    try:
        yield
    except pyfuse3.FUSEError:
        raise
    except ZonefsError as exc:
        log.debug("%s%r: %s (%s)", op, args, errno.errorcode.get(exc.errno, exc.errno), exc)
        raise pyfuse3.FUSEError(exc.errno) from None
    except OSError as exc:
        log.debug("%s%r: %s", op, args, exc)
        raise pyfuse3.FUSEError(exc.errno or errno.EIO) from None
    except Exception:
        log.exception("%s%r failed unexpectedly", op, args)
        raise pyfuse3.FUSEError(errno.EIO) from None


class ZonefsOperations(pyfuse3.Operations):
    """Inode-based FUSE handlers that resolve paths and call `Vfs`."""

    supports_dot_lookup = True
    enable_writeback_cache = False
    enable_acl = False

    def __init__(self, vfs: Vfs, opts: MountOptions) -> None:
        super().__init__()
        self.vfs = vfs
        self.opts = opts
        self.inodes = InodeTable()
        self.content = vfs.content
        self._handles: dict[int, Handle] = {}
        self._open: dict[int, dict[int, Handle]] = {}  # inode -> its open fh -> Handle
        self._handle_inode: dict[int, int] = {}  # fh -> inode
        self._dirs: dict[int, Sequence[tuple[str, Stat]]] = {}
        self._dir_paths: dict[int, str] = {}
        self._next_fh = 1
        # Set once the kernel's FUSE_INIT is answered: the kernel applies its own limits to the
        # mount then (its read-ahead window among them), so tuning waits for this.
        self.initialized = trio.Event()
        # Invalidations go to the kernel one batch at a time, and none once the session is
        # closing (`stop_notifying`): pyfuse3 must not be called on a closed session.
        self._notifying = trio.Lock()
        self._kernel_gone = False

    def init(self) -> None:
        # Called by pyfuse3 on FUSE_INIT, just before the reply goes out in the same step.
        self.initialized.set()

    # -- helpers ----------------------------------------------------------------------------------

    def _path(self, inode: int) -> str:
        return self.inodes.path_of(inode)

    def _child(self, parent_inode: int, name: bytes, *, new: bool = False) -> str:
        """The path of `name` in a directory. Keys are UTF-8: a name that is not cannot exist
        (ENOENT) and cannot be created (EINVAL). A name over NAME_MAX bytes is ENAMETOOLONG
        for every call, as on a local filesystem (the kernel passes FUSE up to 1,024)."""
        if len(name) > NAME_MAX:
            raise pyfuse3.FUSEError(errno.ENAMETOOLONG)
        try:
            text = name.decode("utf-8")
        except UnicodeDecodeError:
            raise pyfuse3.FUSEError(errno.EINVAL if new else errno.ENOENT) from None
        return join(self._path(parent_inode), text)

    def _attr(self, inode: int, s: Stat, *, linked: bool = True) -> pyfuse3.EntryAttributes:
        a = pyfuse3.EntryAttributes()
        a.st_ino = inode
        a.generation = 0
        # Stand-in attributes (a listing that did not wait for headers) are asked for again.
        a.entry_timeout = a.attr_timeout = 0 if s.provisional else self.opts.metadata_ttl
        a.st_mode = s.meta.mode
        # An unlinked file has no link left (the kernel counted it down itself at unlink). A
        # directory has 2 and one per subdirectory ('..' in each), as far as the mount knows.
        a.st_nlink = 0 if not linked else 1
        if linked and st.S_ISDIR(s.meta.mode):
            try:
                a.st_nlink = 2 + self.vfs.subdirs(self._path(inode))
            except NotFound:
                a.st_nlink = 2
        a.st_uid = s.meta.uid
        a.st_gid = s.meta.gid
        a.st_rdev = s.meta.rdev
        a.st_size = s.size
        a.st_blksize = 1 << 20
        a.st_blocks = (s.size + 511) // 512
        a.st_mtime_ns = s.meta.mtime_ns
        a.st_ctime_ns = s.meta.ctime_ns
        a.st_atime_ns = s.meta.atime_ns
        return a

    def _entry(self, path: str, s: Stat) -> pyfuse3.EntryAttributes:
        return self._attr(self.inodes.lookup(path), s)

    def _new_fh(self) -> int:
        fh = self._next_fh
        self._next_fh += 1
        return fh

    def _add_handle(self, inode: int, handle: Handle) -> int:
        """A new file handle number for `handle`, an open file of `inode`."""
        fh = self._new_fh()
        self._handles[fh] = handle
        self._open.setdefault(inode, {})[fh] = handle
        self._handle_inode[fh] = inode
        return fh

    def _unlinked_handles(self, inode: int) -> list[Handle]:
        """The open handles of `inode` when its name is gone (unlinked or renamed over);
        empty while it has a path, or when nothing holds it open."""
        if self.inodes.is_live(inode):
            return []
        return list(self._open.get(inode, {}).values())

    async def changed_elsewhere(self, paths: list[str], trees: list[str]) -> None:
        """Other mounts, or routes the kernel did not see (a restore, an undelete), changed
        `paths`, and everything below `trees` ('': the whole zone): drop the attributes,
        pages and names the kernel caches of them, and the attributes of the directories
        above them, so the next access asks us again."""
        inodes: dict[int, bool] = {}  # inode -> attributes only
        names: list[tuple[int, bytes]] = []  # (parent inode, name)

        def forget(path: str) -> None:
            if (ino := self.inodes.ino_of(path)) is not None:
                inodes[ino] = False
            if path:
                parent, name = path.rpartition("/")[::2]
                if (parent_ino := self.inodes.ino_of(parent)) is not None:
                    names.append((parent_ino, os.fsencode(name)))

        def above(path: str) -> None:
            while path:
                path = path.rpartition("/")[0]
                if (ino := self.inodes.ino_of(path)) is not None:
                    inodes.setdefault(ino, True)

        for path in paths:
            forget(path)
            above(path)
        for top in trees:
            for path, _ in self.inodes.attached_under(top):
                forget(path)
            above(top)
        if not inodes and not names:
            return

        def notify() -> None:
            # Blocking writes to /dev/fuse: in a thread, never inside a request handler.
            for ino, attr_only in inodes.items():
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_inode(ino, attr_only)
            for parent_ino, name in names:
                with contextlib.suppress(OSError):
                    pyfuse3.invalidate_entry(parent_ino, name)

        async with self._notifying:
            if self._kernel_gone or not self.initialized.is_set():
                return
            await trio.to_thread.run_sync(notify)

    async def stop_notifying(self) -> None:
        """Before the FUSE session closes: no invalidation after this returns (one on its
        way is waited for)."""
        self._kernel_gone = True
        async with self._notifying:
            pass

    # -- lookups and attributes ---------------------------------------------------------------

    async def lookup(self, parent_inode: int, name: bytes, ctx: Any = None) -> Any:
        async with _errors("lookup", parent_inode, name):
            parent = self._path(parent_inode)
            if name == b".":
                path = parent
            elif name == b"..":
                path = parent.rpartition("/")[0]
            else:
                path = self._child(parent_inode, name)
            return self._entry(path, await self.vfs.stat(path))

    async def getattr(self, inode: int, ctx: Any = None) -> Any:
        async with _errors("getattr", inode):
            handles = self._unlinked_handles(inode)
            if handles:
                # fstat of a descriptor whose file is gone: no path to stat by.
                return self._attr(inode, self.vfs.stat_open(handles), linked=False)
            return self._attr(inode, await self.vfs.stat(self._path(inode)))

    async def setattr(self, inode: int, attr: Any, fields: Any, fh: int | None,
                      ctx: Any) -> Any:
        async with _errors("setattr", inode):
            changes: dict[str, Any] = {
                "mode": attr.st_mode if fields.update_mode else None,
                "uid": attr.st_uid if fields.update_uid else None,
                "gid": attr.st_gid if fields.update_gid else None,
                "size": attr.st_size if fields.update_size else None,
                "mtime_ns": attr.st_mtime_ns if fields.update_mtime else None,
                "atime_ns": attr.st_atime_ns if fields.update_atime else None,
                "ctime_ns": attr.st_ctime_ns if fields.update_ctime else None,
                "handle": self._handles.get(fh) if fh is not None else None,
            }
            handles = self._unlinked_handles(inode)
            if handles:
                # ftruncate, fchmod, futimens of a descriptor whose file is gone. The kernel
                # names the fh for ftruncate only: the others reach the inode's handles.
                s = self.vfs.setattr_open(handles, **changes)
                return self._attr(inode, s, linked=False)
            s = await self.vfs.setattr(self._path(inode), **changes)
            return self._attr(inode, s)

    async def readlink(self, inode: int, ctx: Any) -> bytes:
        async with _errors("readlink", inode):
            return os.fsencode(await self.vfs.readlink(self._path(inode)))

    async def statfs(self, ctx: Any) -> Any:
        out = pyfuse3.StatvfsData()
        for name, value in self.vfs.statfs().items():
            setattr(out, name, value)
        return out

    def forget(self, inode_list: Sequence[tuple[int, int]]) -> None:  # type: ignore[override]
        for inode, nlookup in inode_list:
            self.inodes.forget(inode, nlookup)

    # -- namespace ----------------------------------------------------------------------------

    async def mkdir(self, parent_inode: int, name: bytes, mode: int, ctx: Any) -> Any:
        async with _errors("mkdir", parent_inode, name):
            path = self._child(parent_inode, name, new=True)
            return self._entry(path, await self.vfs.mkdir(path, mode, ctx.uid, ctx.gid))

    async def rmdir(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        async with _errors("rmdir", parent_inode, name):
            path = self._child(parent_inode, name)
            await self.vfs.rmdir(path)
            self.inodes.remove(path)

    async def unlink(self, parent_inode: int, name: bytes, ctx: Any) -> None:
        async with _errors("unlink", parent_inode, name):
            path = self._child(parent_inode, name)
            await self.vfs.unlink(path)
            self.inodes.remove(path)

    async def symlink(self, parent_inode: int, name: bytes, target: bytes, ctx: Any) -> Any:
        async with _errors("symlink", parent_inode, name):
            path = self._child(parent_inode, name, new=True)
            s = await self.vfs.symlink(path, os.fsdecode(target), ctx.uid, ctx.gid)
            return self._entry(path, s)

    async def rename(self, parent_inode_old: int, name_old: bytes, parent_inode_new: int,
                     name_new: bytes, flags: int, ctx: Any) -> None:
        async with _errors("rename", name_old, name_new):
            old = self._child(parent_inode_old, name_old)
            new = self._child(parent_inode_new, name_new, new=True)
            await self.vfs.rename(old, new, flags)
            self.inodes.rename(old, new)

    async def link(self, inode: int, new_parent_inode: int, new_name: bytes, ctx: Any) -> Any:
        raise pyfuse3.FUSEError(errno.EPERM)  # objects cannot share a key

    async def mknod(self, parent_inode: int, name: bytes, mode: int, rdev: int,
                    ctx: Any) -> Any:
        async with _errors("mknod", parent_inode, name):
            path = self._child(parent_inode, name, new=True)
            handle, s = await self.vfs.create(path, mode, ctx.uid, ctx.gid, rdev)
            await self.vfs.flush(handle)
            await self.vfs.release(handle)
            return self._entry(path, s)

    # -- files ----------------------------------------------------------------------------------

    async def create(self, parent_inode: int, name: bytes, mode: int, flags: int,
                     ctx: Any) -> Any:
        async with _errors("create", parent_inode, name):
            path = self._child(parent_inode, name, new=True)
            # O_EXCL: the caller is promised the name was not there, on any machine.
            handle, s = await self.vfs.create(path, mode, ctx.uid, ctx.gid,
                                              exclusive=bool(flags & os.O_EXCL))
            handle.append = bool(flags & os.O_APPEND)
            entry = self._entry(path, s)
            fh = self._add_handle(entry.st_ino, handle)
            return pyfuse3.FileInfo(fh=fh), entry

    async def open(self, inode: int, flags: int, ctx: Any) -> Any:
        async with _errors("open", inode):
            handle = await self.vfs.open(self._path(inode), flags)
            fh = self._add_handle(inode, handle)
            return pyfuse3.FileInfo(fh=fh, keep_cache=handle.keep_cache)

    async def read(self, fh: int, off: int, size: int) -> bytes:
        async with _errors("read", fh, off, size):
            return await self.vfs.read(self._handles[fh], off, size)

    async def write(self, fh: int, off: int, buf: bytes) -> int:
        async with _errors("write", fh, off, len(buf)):
            return await self.vfs.write(self._handles[fh], off, buf)

    async def flush(self, fh: int) -> None:
        async with _errors("flush", fh):
            await self.vfs.flush(self._handles[fh])

    async def fsync(self, fh: int, datasync: bool) -> None:
        async with _errors("fsync", fh):
            await self.vfs.fsync(self._handles[fh])

    async def release(self, fh: int) -> None:
        async with _errors("release", fh):
            handle = self._handles.pop(fh)
            inode = self._handle_inode.pop(fh)
            others = self._open[inode]
            del others[fh]
            if not others:
                del self._open[inode]
            await self.vfs.release(handle)

    # -- directories --------------------------------------------------------------------------

    async def opendir(self, inode: int, ctx: Any) -> int:
        async with _errors("opendir", inode):
            path = self._path(inode)
            entries = await self.vfs.listing(path)
            fh = self._new_fh()
            # A snapshot of the names per handle keeps readdir offsets stable while entries
            # come and go; each entry's attributes are made as readdir reaches it.
            self._dirs[fh] = entries
            self._dir_paths[fh] = path
            return fh

    async def readdir(self, fh: int, start_id: int, token: Any) -> None:
        """Offsets: 1 is after `.`, 2 after `..`, 2 + i + 1 after the snapshot's entry i."""
        async with _errors("readdir", fh, start_id):
            entries = self._dirs[fh]
            parent = self._dir_paths[fh]
            for offset, name in ((0, "."), (1, "..")):
                # The kernel keeps no entry for these (no lookup is counted); it only takes
                # their inode numbers and types, for `ls -ai`.
                if start_id <= offset and not pyfuse3.readdir_reply(
                        token, name.encode(), self._dot_attr(parent, name), offset + 1):
                    return
            for index in range(max(0, start_id - 2), len(entries)):
                name, s = entries[index]
                path = join(parent, name)
                inode = self.inodes.lookup(path)
                if not pyfuse3.readdir_reply(token, os.fsencode(name), self._attr(inode, s),
                                             index + 3):
                    self.inodes.forget(inode, 1)
                    break

    def _dot_attr(self, path: str, name: str) -> pyfuse3.EntryAttributes:
        """What readdir says of `.` or `..` in `path`: a directory and its inode number."""
        target = path if name == "." else path.rpartition("/")[0]
        a = pyfuse3.EntryAttributes()
        a.st_ino = self.inodes.ino_of(target) or self.inodes.ino_of(path) or pyfuse3.ROOT_INODE
        a.st_mode = st.S_IFDIR | 0o755
        return a

    async def releasedir(self, fh: int) -> None:
        self._dirs.pop(fh, None)
        self._dir_paths.pop(fh, None)

    async def fsyncdir(self, fh: int, datasync: bool) -> None:
        async with _errors("fsyncdir", fh):
            await self.vfs.sync_dir(self._dir_paths[fh])

    # -- extended attributes: the read-only user.zonefs.* content identity -------------------

    async def getxattr(self, inode: int, name: bytes, ctx: Any) -> bytes:
        if not name.startswith(_XATTR_PREFIX_BYTES):
            # `ls -l` asks every file for security.selinux and system.posix_acl_access: answer
            # before any other work. The mount has neither labels nor ACLs: saying so
            # (ENOTSUP) lets `ls` stop asking for the rest of the device, where "no such
            # attribute" (ENODATA) makes it ask for every file (two round trips each).
            unsupported = name.startswith((b"security.", b"system."))
            raise pyfuse3.FUSEError(errno.ENOTSUP if unsupported else errno.ENODATA)
        async with _errors("getxattr", inode, name):
            if self._unlinked_handles(inode):
                raise pyfuse3.FUSEError(errno.ENODATA)  # no object: no content identity
            text = name.decode("utf-8", "replace")
            path = self._path(inode)
            if not await self._is_file(path):
                raise pyfuse3.FUSEError(errno.ENODATA)
            try:
                return await self.content.xattr(path, text[len(XATTR_PREFIX):])
            except NotFound:
                raise pyfuse3.FUSEError(errno.ENODATA) from None

    async def listxattr(self, inode: int, ctx: Any) -> list[bytes]:
        async with _errors("listxattr", inode):
            if self._unlinked_handles(inode):
                return []
            path = self._path(inode)
            if not await self._is_file(path):
                return []
            info = await self.content.info(path)
            present = [n for n in XATTR_NAMES
                       if info["versionId" if n == "version_id" else n] is not None]
            return [(XATTR_PREFIX + n).encode() for n in present]

    async def setxattr(self, inode: int, name: bytes, value: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)  # user.zonefs.* are computed, nothing else kept

    async def removexattr(self, inode: int, name: bytes, ctx: Any) -> None:
        raise pyfuse3.FUSEError(errno.ENOTSUP)

    async def _is_file(self, path: str) -> bool:
        return st.S_ISREG((await self.vfs.stat(path)).meta.mode)
