"""Renames: moving objects, and the local state of files not yet uploaded, to a new name.

S3 has no rename: a file is copied server-side and the old object deleted; a directory is
moved one object at a time (not atomic to other clients). A pending file with new bytes is not
copied: its journal row moves and its bytes are uploaded under the new name, and the object
under the old name, if any, becomes a pending delete, all in one journal transaction and with
no request (`pending.moves.LocalMoves.move_pending_file`: an editor's save by rename works
while the store is down).
A pending metadata change travels in the copy's headers; a file open for write but unchanged
moves with its copy. A pending delete of a key a copy is about to write is applied first. The
POSIX checks (flags, types, emptiness) are `vfs`'s; this module moves objects in the store, and
asks the pending wing (`pending.moves`) to move pending rows: it changes none itself.

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
from dataclasses import replace
from typing import TYPE_CHECKING

from zonefs.cache.journal import (
    MOVE_COPY,
    MOVE_DELETE,
    MOVE_DIRTY,
    MOVE_DROP,
    MOVE_MARKER,
    RENAME_LISTING,
    Journal,
    Move,
    ObjectRow,
)
from zonefs.common import keys
from zonefs.common.errors import NotFound, RemoteError, ZonefsError
from zonefs.pending.rows import moves_as_row

if TYPE_CHECKING:
    from zonefs.common.keys import PosixMeta
    from zonefs.core.values import Stat
    from zonefs.pending.ledger import Ledger
    from zonefs.pending.moves import LocalMoves
    from zonefs.pending.rows import DirtyFile
    from zonefs.remote.base import Remote

log = logging.getLogger(__name__)


#: Steps read from the journal at a time: a directory of many keys is never all in memory.
PAGE = 500


class Renamer:
    """Moves files and directory trees; see the module docstring."""

    def __init__(
        self,
        remote: Remote,
        journal: Journal,
        ledger: Ledger,
        moves: LocalMoves,
        *,
        put_marker: Callable[[str, PosixMeta], Awaitable[None]],
        marker_meta: Callable[[str, float], Awaitable[PosixMeta]],
    ) -> None:
        self.remote, self.journal, self.ledger, self.moves = remote, journal, ledger, moves
        self._put_marker = put_marker
        # The attributes of the directory at a path (its listed mtime for the defaults).
        self._marker_meta = marker_meta

    # -- planning -------------------------------------------------------------------------------

    def _copy_headers(self, key: str, etag: str | None, df: DirtyFile | None,
                      meta: PosixMeta | None = None) -> dict[str, str] | None:
        """Headers for the copy of `key`: `meta`, or those of a pending metadata change
        (`df`), keeping the content IDs; None keeps the source's."""
        if df is not None:
            meta = df.row.meta if meta is None else replace(df.row.meta,
                                                              ctime_ns=meta.ctime_ns)
        if meta is None:
            return None
        return keys.encode_meta(meta, **self.ledger.hash_headers(key, etag))

    async def move_file(self, old: str, new: str, src: Stat) -> None:
        """Move the file `old` (whose stat is `src`; no pending bytes) to `new` by a copy in
        the store now, replacing what is there (a file open for writing, unchanged so far,
        whose writer follows it)."""
        # Pending copies reading the object at `new`, and a delete there, are applied before
        # this copy replaces it; the rows of both names are taken out until the plan is set.
        replaced, df = await self.moves.take_pair(old, new)
        plan: list[Move] = []
        # Only rows that are in the journal get steps: a file never closed has none to move.
        if replaced is not None and replaced.persisted:
            plan.append(Move(MOVE_DROP, new))  # first: the row moved to `new` must survive
        # The moved file's ctime is now (its name changed).
        plan.append(Move(MOVE_COPY, old, new, src.etag,
                         self._copy_headers(old, src.etag, df, src.meta.changed_now())))
        if df is not None and df.persisted:
            plan.append(Move(MOVE_DROP, old, new))
        batch = self.journal.begin_rename(old, new)
        self.journal.plan_moves(batch, plan)
        self.journal.seal_rename(batch)
        # Pending state moves first (no await in between: the journal and memory agree).
        self._apply_pending(batch)
        if replaced is not None:
            self.moves.dropped_by_plan(new, replaced)
        if df is not None:
            self.moves.carry(old, new, df, True)
        await self._run_remote(batch, {old: df} if df is not None else {})
        self.journal.drop_object(old)

    async def move_dir(self, old: str, new: str, meta: PosixMeta) -> None:
        """Copy then delete every object below `old`, one by one (not atomic to others)."""
        # Pending copies (renamed files) that read an object where the copies go are made
        # first: those objects must not be replaced under them, and their deletes wait for them.
        await self.ledger.flush(self.ledger.copies_reading_under(keys.dir_key(new)))
        # Deletes pending where the copies go (`rm -r b; mv a b`) are applied next: they
        # must not remove what the copies bring. So are those below the source (`rm a/x;
        # mv a b`): the listing then shows only what moves, and no key of a deleted file
        # keeps the old directory showing after the move.
        await self.ledger.flush([keys.dir_key(new), *self.ledger.deletes_below(new),
                                 *self.ledger.deletes_below(old)])
        batch = self.journal.begin_rename(old, new)
        moving: dict[str, DirtyFile] = {}
        try:
            moving = await self.moves.take_below(old)
            listed, has_marker = await self._plan_listing(batch, old, new, moving, meta)
        except BaseException:
            # Nothing was changed yet: forget the plan, the pending files stay where they were.
            self.journal.end_rename(batch)
            self.moves.put_back(moving)
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
            self.moves.carry(path, keys.rebase(path, old, new), df, path in listed)
        if moved_row is not None and moved_row.is_dir and moves_as_row(moved_row):
            self.ledger.set_meta(moved_row, meta)  # a pending directory: its new ctime
        await self._run_remote(batch, moving)
        self._hide_what_stays(old)

    def _hide_what_stays(self, old: str) -> None:
        """Objects a pending copy still reads stay under the old name (their deletes wait for
        those copies): the directories holding them must not show again meanwhile, so each
        gets a pending delete of its marker (applied after the deletes below it)."""
        dirs: set[str] = set()
        for key in self.ledger.deletes_below(old):
            parent = keys.split(key[:-1] if key.endswith("/") else key)[0]
            while keys.is_within(parent, old):
                dirs.add(parent)
                if parent == old:
                    break
                parent = keys.split(parent)[0]
        for d in sorted(dirs, key=lambda p: -p.count("/")):
            self.ledger.delete_later(keys.dir_key(d), None)

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
                if self.ledger.has_delete(obj.key):
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
        """Run the batch's `dirty` and `drop` steps on pending state (see
        `LocalMoves.apply_planned`)."""
        for page in self._steps(batch, (MOVE_DIRTY, MOVE_DROP)):
            self.moves.apply_planned(page, resuming=resuming)

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
                if self.ledger.copies_from(m.src):
                    # A pending copy (a renamed file) still reads it: the delete waits for
                    # that copy, as a pending delete.
                    self.ledger.delete_later(m.src, m.etag)
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
        self.moves.copy_landed(m.dst, df, info.etag)

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
