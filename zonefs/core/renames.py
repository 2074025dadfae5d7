"""Renames: moving objects, and the local state of files not yet uploaded, to a new name.

S3 has no rename: a file is copied server-side and the old object deleted; a directory is
moved one object at a time (not atomic to other clients). A pending file with new bytes is not
copied: its journal row moves and its bytes are uploaded under the new name, and the object
under the old name, if any, becomes a pending delete, all in one journal transaction and with
no request (`move_pending_file`: an editor's save by rename works while the store is down).
A pending metadata change travels in the copy's headers; a file open for write but unchanged
moves with its copy. A pending delete of a key a copy is about to write is applied first. The
POSIX checks (flags, types, emptiness) are `vfs`'s; this module does the moving.

Every rename is journaled (`journal.renames`/`moves`) so a crash in the middle is finished at the
next mount (`Renamer.resume`, before the mount answers). Invariants:
- The whole plan (objects to copy or delete, pending rows to move or drop, the marker to put) is
  durable before the first change; listing a directory only adds rows to an unsealed plan, which
  a crash forgets with nothing changed.
- Steps run in phases: pending rows (one fsync'ed transaction per page), then every copy, then
  every delete. No source object is deleted before every copy of its rename landed, so a crash
  leaves each object under the old name, the new name or both, never neither. A resume repeats
  what the journal does not show done, and every step is idempotent: a copy whose source is
  gone but whose destination exists was done, a delete of a missing key is fine.
- A copy carries the metadata decided at planning time (in the plan's headers), so a pending
  metadata change whose row was already dropped is not lost by a crash.
- A directory marker (`dir/`) is never copied: it is put anew, empty, under the new name with
  the attributes read at planning time, then the old one is deleted like any copied object.
  Some stores cannot copy a marker (SeaweedFS answers NoSuchKey) or keep no body on it, so a
  rename never depends on either, and no rename drops an empty directory.
- A copy whose store answers "no such key" while the source is still there and the
  destination is not fails the rename (it stays journaled): the source is never deleted then.
- A rename that fails part-way while mounted (the store unreachable) returns the error and
  stays journaled: the next mount finishes it.
"""

from __future__ import annotations

import logging
import stat as st
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import TYPE_CHECKING

from zonefs.cache.journal import (
    MOVE_COPY,
    MOVE_DELETE,
    MOVE_DIRTY,
    MOVE_DROP,
    MOVE_MARKER,
    RENAME_LISTING,
    DirtyRow,
    Journal,
    Move,
    ObjectRow,
)
from zonefs.common import keys
from zonefs.common.errors import NotFound, RemoteError, ZonefsError
from zonefs.pending.rows import ANY_OBJECT, DirtyFile, moves_as_row

if TYPE_CHECKING:
    from zonefs.common.keys import PosixMeta
    from zonefs.core.values import Stat
    from zonefs.pending.ledger import PendingFiles
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)


def moves_locally_row(df: DirtyFile) -> bool:
    """A pending file whose rename moves only its row: new bytes, or a copy still to be made
    (not a directory: those go through `move_dir`)."""
    return not df.is_dir and moves_as_row(df)

#: Steps read from the journal at a time: a directory of many keys is never all in memory.
PAGE = 500


class Renamer:
    """Moves files and directory trees; see the module docstring."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        pending: PendingFiles,
        *,
        put_marker: Callable[[str, PosixMeta], Awaitable[None]],
        marker_meta: Callable[[str, float], Awaitable[PosixMeta]],
    ) -> None:
        self.remote, self.journal, self.pending = remote, journal, pending
        self._put_marker = put_marker
        # The attributes of the directory at a path (its listed mtime for the defaults).
        self._marker_meta = marker_meta

    # -- planning -------------------------------------------------------------------------------

    def _copy_headers(self, key: str, etag: str | None,
                      df: DirtyFile | None) -> dict[str, str] | None:
        """Headers for the copy of `key`: those of a pending metadata change (`df`), keeping
        the content IDs; None keeps the source's."""
        if df is None:
            return None
        return keys.encode_meta(df.row.meta, **self.pending.hash_headers(key, etag))

    def moves_locally(self, old: str) -> bool:
        """Whether renaming the file `old` only moves its pending row (new bytes, a copy
        still to be made)."""
        df = self.pending.dirty.get(old)
        return df is not None and moves_locally_row(df)

    async def move_pending_file(self, old: str, new: str, dst: Stat | None) -> bool:
        """Move the pending file `old` (new bytes) to `new`, replacing `dst` (what `new`
        shows now, if anything): one journal transaction, no request. False when its upload
        landed meanwhile (it is clean now: a copy in the store moves it)."""
        await self.pending.writeback.cancel(old)
        if not self.moves_locally(old):
            return False  # before touching `new`: a delete pending there must stay queued
        replacing = self.pending.dirty.get(new)
        if new not in self.pending.deletes:
            await self.pending.writeback.cancel(new)  # a pending file the move replaces
        replaced = self.pending.dirty.pop(new, None)
        df = self.pending.dirty.pop(old)
        claimed, claimed_etag = await self.pending.claim(new)
        base = self._replaced_base(new, dst, replacing, replaced, claimed, claimed_etag)
        maybe, etag = self.pending.presence(df, None)
        delete = (old, etag) if maybe else None
        if df.persisted:
            self.journal.move_pending(old, new, base_etag=base, delete=delete,
                                      replaces_delete=new if claimed else None)
        else:
            # Never closed: its row is journaled at close, under the new name; what the
            # rename removes is journaled now.
            if replaced is not None and replaced.persisted:
                self.journal.drop_dirty(new)
            if delete is not None:
                self.journal.put_delete(*delete)
            if claimed:
                df.claimed = new
        if delete is not None:
            self.pending.deletes.remember(*delete)
        if replaced is not None:
            replaced.persisted = False  # its row went with the move
            self.pending.drop(new, replaced)
        df.row.path, df.row.base_etag = new, base
        df.absent = base is None
        # An upload made under the old name (by fsync while open) is not this name's: the
        # last close must upload again rather than take it as done.
        df.uploaded_generation, df.uploaded = -1, None
        self.pending.dirty[new] = df
        self.pending.schedule(df)
        return True

    async def move_by_copy(self, old: str, new: str, src: Stat, dst: Stat | None) -> bool:
        """Move the clean file `old` (whose stat is `src`) to `new`, replacing `dst` (what
        `new` shows now, if anything), as a pending copy: one journal transaction, no request.
        The copy row at `new` is made by the write-back queue, and the delete of `old` waits
        for it. False when `old` is open for writing, or changed while this waited for
        uploads to stop (then `move_file` moves it at once, as it is, with its writer)."""
        before = self.pending.dirty.get(old)
        if before is not None and (before.writers or moves_locally_row(before)):
            return False
        replacing = self.pending.dirty.get(new)
        await self.pending.writeback.cancel(old)  # a pending attribute change rides along
        if new not in self.pending.deletes:
            await self.pending.writeback.cancel(new)  # a pending file the move replaces
        claimed, claimed_etag = await self.pending.claim(new)
        if self.pending.dirty.get(old) is not before:
            # Changed while we waited (written to, or its attribute change landed, which
            # may have given the object a new ETag): `src` is out of date. Give the delete
            # back, untouched; `move_file` moves it as it is now.
            if claimed:
                self.pending.deletes.remember(new, claimed_etag)
            return False
        replaced = self.pending.dirty.pop(new, None)
        df = self.pending.dirty.pop(old, None)
        base = self._replaced_base(new, dst, replacing, replaced, claimed, claimed_etag)
        meta = df.row.meta if df is not None else src.meta
        row = DirtyRow(new, None, src.size, meta, base, 1, source=old)
        self.journal.move_by_copy(row, old, delete_etag=src.etag,
                                  replaces_delete=new if claimed else None)
        if replaced is not None:
            replaced.persisted = False  # its row went with the move
            self.pending.drop(new, replaced)
        moved = DirtyFile(row, persisted=True, absent=base is None)
        self.pending.dirty[new] = moved
        self.pending.deletes.remember(old, src.etag)  # applied once the copy is made
        self.pending.schedule(moved)
        return True

    def _replaced_base(self, new: str, dst: Stat | None, replacing: DirtyFile | None,
                       replaced: DirtyFile | None, claimed: bool,
                       claimed_etag: str | None) -> str | None:
        """The ETag the write that a rename makes at `new` must expect there (None: that no
        object is there), from what is known after the rename waited for uploads at `new` to
        stop. `dst` is what `new` showed before that wait, `replacing` its pending row then, and
        `replaced` its pending row now (taken out); `claimed` says whether a pending delete
        of `new` was taken over (with the ETag it named)."""
        if replacing is not None and replaced is None:
            # The pending file at `new` was uploaded while the rename waited: its object is
            # there now, which `dst` (its stat from before) does not show.
            memo = self.journal.get_object(new)
            return memo.etag if memo is not None and memo.etag else ANY_OBJECT
        if replaced is not None and replaced.row.base_etag:
            return replaced.row.base_etag  # fresher than `dst`: an upload may have landed
        if dst is not None and dst.etag:
            return dst.etag
        if claimed:
            return claimed_etag or ANY_OBJECT  # the object of the delete this write replaces
        if replaced is not None and self.pending.presence(replaced, dst.etag if dst else None)[0]:
            return ANY_OBJECT  # a pending file replaced here, an upload of which may have landed
        return None

    async def move_file(self, old: str, new: str, src: Stat) -> None:
        """Move the file `old` (whose stat is `src`; no pending bytes) to `new` by a copy in
        the store now, replacing what is there (a file open for writing, unchanged so far,
        whose writer follows it)."""
        await self.pending.writeback.cancel(old)
        # Pending copies reading the object at `new` are made before this one replaces it.
        await self.pending.flush(self.pending.dirty.copies_reading(new))
        if new in self.pending.deletes:
            await self.pending.flush([new])  # deleted first: the copy then lands after it
        else:
            await self.pending.writeback.cancel(new)
        replaced = self.pending.dirty.pop(new, None)
        df = self.pending.dirty.pop(old, None)
        plan: list[Move] = []
        # Only rows that are in the journal get steps: a file never closed has none to move.
        if replaced is not None and replaced.persisted:
            plan.append(Move(MOVE_DROP, new))  # first: the row moved to `new` must survive
        plan.append(Move(MOVE_COPY, old, new, src.etag, self._copy_headers(old, src.etag, df)))
        if df is not None and df.persisted:
            plan.append(Move(MOVE_DROP, old, new))
        batch = self.journal.begin_rename(old, new)
        self.journal.plan_moves(batch, plan)
        self.journal.seal_rename(batch)
        # Pending state moves first (no await in between: the journal and memory agree).
        self._apply_pending(batch)
        if replaced is not None:
            replaced.persisted = False  # its row went with the plan's `drop`
            self.pending.drop(new, replaced)
        if df is not None:
            self._carry(old, new, df, True)
        await self._run_remote(batch, {old: df} if df is not None else {})
        self.journal.drop_object(old)

    async def move_dir(self, old: str, new: str, meta: PosixMeta) -> None:
        """Copy then delete every object below `old`, one by one (not atomic to others)."""
        moving: dict[str, DirtyFile] = {}
        # Pending copies (renamed files) that read an object where the copies go are made
        # first: those objects must not be replaced under them, and their deletes wait for them.
        await self.pending.flush(self.pending.dirty.copies_reading_under(keys.dir_key(new)))
        # Deletes pending where the copies go (`rm -r b; mv a b`) are applied next: they
        # must not remove what the copies bring. So are those below the source (`rm a/x;
        # mv a b`): the listing then shows only what moves, and no key of a deleted file
        # keeps the old directory showing after the move.
        await self.pending.flush([keys.dir_key(new), *self.pending.deletes.below(new),
                                  *self.pending.deletes.below(old)])
        batch = self.journal.begin_rename(old, new)
        try:
            below = [(p, df.queue_key) for p, df in self.pending.dirty.items()
                     if keys.is_within(p, old)]
            for path, queue_key in below:
                await self.pending.writeback.cancel(queue_key)
                df = self.pending.dirty.pop(path, None)
                if df is not None:  # else its upload finished while we waited
                    moving[path] = df
            listed, has_marker = await self._plan_listing(batch, old, new, moving, meta)
        except BaseException:
            # Nothing was changed yet: forget the plan, the pending files stay where they were.
            self.journal.end_rename(batch)
            self._put_back(moving)
            raise
        tail: list[Move] = []
        moved_row = moving.get(old)
        if not has_marker and (moved_row is None or not moved_row.is_dir):
            # The source existed only as a prefix: keep the moved directory even if it is empty.
            tail.append(Move(MOVE_MARKER, keys.dir_key(old), new,
                             headers=keys.encode_meta(meta)))
        for path, df in moving.items():
            if not df.persisted:
                continue
            target = keys.rebase(path, old, new)
            if moves_as_row(df):
                tail.append(Move(MOVE_DIRTY, path, target))
            else:
                tail.append(Move(MOVE_DROP, path, target if path in listed else None))
        self.journal.plan_moves(batch, tail)
        self.journal.seal_rename(batch)
        self._apply_pending(batch)
        for path, df in moving.items():
            self._carry(path, keys.rebase(path, old, new), df, path in listed)
        await self._run_remote(batch, moving)
        self._hide_what_stays(old)

    def _hide_what_stays(self, old: str) -> None:
        """Objects a pending copy still reads stay under the old name (their deletes wait for
        those copies): the directories holding them must not show again meanwhile, so each
        gets a pending delete of its marker (applied after the deletes below it)."""
        dirs: set[str] = set()
        for key in self.pending.deletes.below(old):
            parent = keys.split(key[:-1] if key.endswith("/") else key)[0]
            while keys.is_within(parent, old):
                dirs.add(parent)
                if parent == old:
                    break
                parent = keys.split(parent)[0]
        for d in sorted(dirs, key=lambda p: -p.count("/")):
            if keys.dir_key(d) not in self.pending.deletes:
                self.pending.deletes.add(keys.dir_key(d), None)

    async def _plan_listing(self, batch: int, old: str, new: str,
                            moving: Mapping[str, DirtyFile],
                            meta: PosixMeta) -> tuple[set[str], bool]:
        """Plan a step for every object below `old`, page by page (`meta`: the attributes of
        `old` itself). Returns the moving files that have an object, and whether the directory
        marker itself exists."""
        prefix, new_prefix = keys.dir_key(old), keys.dir_key(new)
        listed: set[str] = set()
        has_marker = False
        token: str | None = None
        while True:
            page = await self.remote.list(prefix, None, token)
            plan: list[Move] = []
            for obj in page.objects:
                has_marker = has_marker or obj.key == prefix
                if obj.key in self.pending.deletes:
                    continue  # deleted here: its pending delete removes it, nothing to move
                df = moving.get(obj.key)
                if df is None and obj.key.endswith("/"):
                    row = moving.get(obj.key[:-1])
                    df = row if row is not None and row.is_dir else None
                if df is not None:
                    listed.add(df.row.path)
                if df is not None and moves_as_row(df):
                    # Newer local bytes will be uploaded under the new name.
                    plan.append(Move(MOVE_DELETE, obj.key))
                elif obj.key.endswith("/"):
                    # A marker is put anew (see the module docstring), with the attributes
                    # decided now: a pending change's, else the directory's own.
                    if df is not None:
                        dir_meta = df.row.meta
                    elif obj.key == prefix:
                        dir_meta = meta
                    else:
                        dir_meta = await self._marker_meta(obj.key[:-1], obj.mtime)
                    plan.append(Move(MOVE_COPY, obj.key, new_prefix + obj.key[len(prefix):],
                                     obj.etag, keys.encode_meta(dir_meta)))
                else:
                    plan.append(Move(MOVE_COPY, obj.key, new_prefix + obj.key[len(prefix):],
                                     obj.etag, self._copy_headers(obj.key, obj.etag, df)))
            self.journal.plan_moves(batch, plan)
            token = page.next_token
            if not token:
                return listed, has_marker

    def _put_back(self, moving: Mapping[str, DirtyFile]) -> None:
        """A rename that changed nothing: its pending files stay under their old names."""
        for path, df in moving.items():
            self.pending.dirty.setdefault(path, df)

    # -- in-memory state of pending files -------------------------------------------------------

    def _carry(self, old: str, new: str, df: DirtyFile, has_object: bool) -> None:
        """Move the in-memory state of a renamed pending file from `old` to `new` (its journal
        row was handled by the plan).

        New bytes are uploaded under the new name; otherwise the object's copy carries any
        metadata change, and what stays dirty is only a file open for write, unchanged so far
        (its base ETag is set when the copy lands). A metadata change of a file that has no
        object is dropped.
        """
        df.row.path = new
        if moves_as_row(df):
            df.row.base_etag = None
            df.absent = True
            # An upload made under the old name (by fsync while open) is not this name's:
            # the last close must upload again rather than take it as done.
            df.uploaded_generation, df.uploaded = -1, None
            self.pending.dirty[new] = df
            self.pending.schedule(df)
            return
        df.persisted = False
        if not has_object:
            log.warning("%r had a pending metadata change but no object; dropped", old)
            self.pending.drop(old, df)
            return
        df.meta_changed = False
        if df.row.data is not None and df.writers:
            self.pending.dirty[new] = df  # still open for write, unchanged so far
        else:
            self.pending.discard_data(df)

    # -- running a plan -------------------------------------------------------------------------

    def _steps(self, batch: int, kinds: Iterable[str], *,
               copied: bool | None = None) -> Iterable[list[Move]]:
        """The batch's steps of `kinds`, a page at a time, read afresh after each page (steps
        run between pages remove or change rows)."""
        after = 0
        while page := self.journal.moves(batch, kinds, after=after, limit=PAGE, copied=copied):
            yield page
            after = page[-1].id

    def _apply_pending(self, batch: int, *, resuming: bool = False) -> None:
        """Run the batch's `dirty` and `drop` steps on the journal. When resuming, the
        in-memory mirror (loaded from the journal at start) follows; a live rename moves its
        files itself (`_carry`), open ones included."""
        for page in self._steps(batch, (MOVE_DIRTY, MOVE_DROP)):
            self.journal.apply_pending_moves(page)
            if not resuming:
                continue
            for m in page:
                df = self.pending.dirty.pop(m.src, None)
                if df is None:
                    continue
                if m.kind == MOVE_DROP:
                    self.pending.discard_data(df)  # nothing is open after a crash
                    continue
                assert m.dst is not None
                gone = self.pending.dirty.pop(m.dst, None)
                if gone is not None:
                    self.pending.discard_data(gone)
                df.row.path, df.row.base_etag = m.dst, None
                self.pending.dirty[m.dst] = df

    async def _run_remote(self, batch: int, moving: Mapping[str, DirtyFile]) -> None:
        """Copies, then the marker, then deletes; then the rename is forgotten."""
        for page in self._steps(batch, (MOVE_COPY,), copied=False):
            for m in page:
                await self._copy(m, moving.get(m.src))
        for page in self._steps(batch, (MOVE_MARKER,)):
            for m in page:
                assert m.dst is not None and m.headers is not None
                await self._put_marker(m.dst, _meta_of(m.headers))
                self.journal.done_move(m.id)
        for page in self._steps(batch, (MOVE_COPY, MOVE_DELETE)):
            for m in page:
                if self.pending.dirty.copies_from(m.src):
                    # A pending copy (a renamed file) still reads it: the delete waits for
                    # that copy, as a pending delete.
                    if m.src not in self.pending.deletes:
                        self.pending.deletes.add(m.src, m.etag)
                else:
                    await self.remote.delete(m.src)  # a missing key is fine
                    self.journal.drop_object(m.src)
                self.journal.done_move(m.id)
        self.journal.end_rename(batch)

    async def _copy(self, m: Move, df: DirtyFile | None) -> None:
        """Server-side copy of one object, marked in the journal. The remembered object
        moves along; an open, unchanged file (`df`) now starts from the copy."""
        assert m.dst is not None
        if m.src.endswith("/"):
            await self._recreate_marker(m)
            return
        memo = self.journal.get_object(m.src, m.etag)
        try:
            info = await self.remote.copy(m.src, m.dst, m.headers)
        except NotFound:
            # Copied before a crash, then deleted by this rename's own deletes (whose marks
            # were lost), or deleted by another client meanwhile: nothing left to copy.
            if not await self._exists(m.dst):
                if await self._exists(m.src):
                    # The store would not copy an object it has: the source must stay.
                    raise RemoteError(f"the store answered 'no such key' to the copy of "
                                      f"{m.src!r} to {m.dst!r}, which it holds") from None
                log.warning("%r vanished before it could be moved to %r", m.src, m.dst)
            self.journal.mark_copied(m.id)
            return
        self.journal.mark_copied(m.id)
        if memo is not None:
            self.journal.saw_copy(memo.sha256, memo.etag, info.etag)
            meta = _meta_of(m.headers) if m.headers else memo.meta
            self.journal.put_object(ObjectRow(m.dst, info.etag, memo.size, meta, memo.sha256,
                                              memo.sha1))
        if df is not None and self.pending.dirty.get(m.dst) is df:
            df.row.base_etag = info.etag

    async def _recreate_marker(self, m: Move) -> None:
        """Put the directory marker of a copy step anew at its destination (never a copy:
        see the module docstring). A plan journaled before markers were put anew has no
        headers: the directory's attributes are read now."""
        assert m.dst is not None
        path = m.dst[:-1]
        if m.headers is not None:
            meta = _meta_of(m.headers)
        else:
            meta = await self._marker_meta(m.src[:-1], 0.0)
        await self._put_marker(path, meta)
        self.journal.mark_copied(m.id)

    async def _exists(self, key: str) -> bool:
        try:
            await self.remote.head(key)
        except NotFound:
            return False
        return True

    # -- after a crash --------------------------------------------------------------------------

    async def resume(self) -> int:
        """Finish every rename a crash cut short (at mount, before it answers and before
        pending uploads are queued). Returns how many were resumed; running it again finds
        nothing left."""
        resumed = 0
        for r in self.journal.renames():
            if r.state == RENAME_LISTING:
                self.journal.end_rename(r.batch)  # its plan was never sealed: nothing moved
                continue
            log.info("resuming the rename of %r to %r cut short by a crash (%d step(s) left)",
                     r.old, r.new, self.journal.count_moves(r.batch))
            self._apply_pending(r.batch, resuming=True)
            try:
                await self._run_remote(r.batch, {})
            except ZonefsError as exc:
                # One object the store refuses must not keep the zone from mounting: what is
                # left stays journaled and is tried again at the next mount.
                log.error("the rename of %r to %r could not be finished (%s); it is tried "
                          "again at the next mount", r.old, r.new, exc)
                continue
            resumed += 1
        return resumed


def _meta_of(headers: Mapping[str, str]) -> PosixMeta:
    """The POSIX attributes in a plan's headers (written by `keys.encode_meta`: all there)."""
    return keys.decode_meta(headers, is_dir=st.S_ISDIR(int(headers["mode"])), default_mode=0,
                            default_uid=0, default_gid=0, fallback_mtime=0.0)
