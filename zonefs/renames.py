"""Renames: moving objects, and the local state of files not yet uploaded, to a new name.

S3 has no rename: a file is copied server-side and the old object deleted; a directory is
moved one object at a time (not atomic to other clients). A pending file with new bytes is not
copied: its journal row moves and its bytes are uploaded under the new name. A pending
metadata change travels in the copy's headers; a file open for write but unchanged moves with
its copy. The POSIX checks (flags, types, emptiness) are `vfs`'s; this module does the moving.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from . import keys
from .handles import DirtyFile, Stat, has_new_bytes
from .journal import Journal, ObjectRow
from .keys import PosixMeta
from .remote.base import ObjectInfo, Remote
from .uploads import PendingFiles

log = logging.getLogger(__name__)


class Renamer:
    """Moves files and directory trees; see the module docstring."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        pending: PendingFiles,
        *,
        remote_exists: Callable[[str], Awaitable[bool]],
        put_marker: Callable[[str, PosixMeta], Awaitable[None]],
    ) -> None:
        self.remote, self.journal, self.pending = remote, journal, pending
        self._remote_exists = remote_exists
        self._put_marker = put_marker

    async def move_file(self, old: str, new: str, src: Stat) -> None:
        """Move the file `old` (whose stat is `src`) to `new`, replacing what is there."""
        await self.pending.writeback.cancel(old)
        await self.pending.writeback.cancel(new)
        replaced = self.pending.dirty.pop(new, None)
        if replaced is not None:
            self.pending.drop(new, replaced)
        df = self.pending.dirty.pop(old, None)
        if df is not None and has_new_bytes(df):
            # The new bytes go up under the new name; the old key, if any, goes away now.
            remote_old = await self._remote_exists(old)
            self._carry_dirty(old, new, df, None)
            if remote_old:
                await self.remote.delete(old)
        else:
            info = await self._copy_object(old, new, src.etag, df)
            await self.remote.delete(old)
            if df is not None:
                self._carry_dirty(old, new, df, info.etag)
        self.journal.drop_object(old)

    async def _copy_object(self, old: str, new: str, etag: str | None,
                           df: DirtyFile | None) -> ObjectInfo:
        """Server-side copy of `old` to `new`. A pending metadata change of the file (`df`)
        travels in the copy's headers; the remembered object moves along."""
        memo = self.journal.get_object(old, etag)
        md = None
        if df is not None:
            md = keys.encode_meta(df.row.meta, **self.pending.hash_headers(old, etag))
        info = await self.remote.copy(old, new, md)
        if memo is not None:
            self.journal.saw_copy(memo.sha256, memo.etag, info.etag)
            meta = df.row.meta if df is not None else memo.meta
            self.journal.put_object(ObjectRow(new, info.etag, memo.size, meta, memo.sha256,
                                              memo.sha1))
        return info

    def _carry_dirty(self, old: str, new: str, df: DirtyFile, copied_etag: str | None) -> None:
        """Move the local state of a renamed file from `old` to `new`.

        With `copied_etag` the object was copied server-side (with any pending metadata), so
        what stays dirty is only an open, unchanged copy; without it the file's new bytes
        are uploaded under the new name.
        """
        df.row.path = new
        if copied_etag is None:
            self.journal.move_dirty(old, new)
            df.row.base_etag = None
            self.pending.dirty[new] = df
            self.pending.writeback.schedule(new)
            return
        if df.persisted:
            self.journal.drop_dirty(old)
            df.persisted = False
        df.meta_changed = False
        if df.row.data is not None and df.writers:
            df.row.base_etag = copied_etag
            self.pending.dirty[new] = df  # still open for write, unchanged so far

    async def move_dir(self, old: str, new: str, meta: PosixMeta) -> None:
        """Copy then delete every object below `old`, one by one (not atomic to others)."""
        moving: dict[str, DirtyFile] = {}
        for path in [p for p in self.pending.dirty if keys.is_within(p, old)]:
            await self.pending.writeback.cancel(path)
            df = self.pending.dirty.pop(path, None)
            if df is not None:  # else its upload finished while we waited
                moving[path] = df
        prefix = keys.dir_key(old)
        token: str | None = None
        moved: list[str] = []
        copied: dict[str, str] = {}  # path -> ETag of the copy
        while True:
            page = await self.remote.list(prefix, None, token)
            for obj in page.objects:
                moved.append(obj.key)
                df = moving.get(obj.key)
                if df is not None and has_new_bytes(df):
                    continue  # newer local bytes will be uploaded under the new name
                dest = keys.dir_key(new) + obj.key[len(prefix):]
                info = await self._copy_object(obj.key, dest, obj.etag, df)
                copied[obj.key] = info.etag
            token = page.next_token
            if not token:
                break
        if keys.dir_key(old) not in moved:
            # The source existed only as a prefix: keep the moved directory even if it is empty.
            await self._put_marker(new, meta)
        for path, df in moving.items():
            target = keys.rebase(path, old, new)
            if has_new_bytes(df) or path in copied:
                self._carry_dirty(path, target, df, None if has_new_bytes(df) else copied[path])
            else:
                log.warning("%r had a pending metadata change but no object; dropped", path)
                self.pending.drop(path, df)
        for key in moved:
            await self.remote.delete(key)
            self.journal.drop_object(key)
