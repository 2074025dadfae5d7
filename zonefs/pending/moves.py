"""Local moves: a rename's changes to pending state, on behalf of `core.renames`.

A pending file with new bytes (or a copy still to be made) is renamed by moving its row: its
bytes are uploaded under the new name, and the object under the old name, if any, becomes a
pending delete, in one journal transaction and with no request (`move_pending_file`). A clean
file is renamed as a pending copy (`move_by_copy`). A rename that copies objects in the store
(`core.renames`) takes the rows it moves out of the ledger first (`take_below`, `take_pair`)
and, once its plan is journaled, hands them to their new names (`apply_planned`, `carry`), or
back (`put_back`) when it changed nothing.

Only this wing changes pending rows: the core decides that and where a rename goes, these
operations change the rows, the deletes and the queue, through the ledger they belong to.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from typing import TYPE_CHECKING

from zonefs.cache.journal import MOVE_DIRTY, MOVE_DROP, DirtyRow
from zonefs.pending.rows import (
    ANY_OBJECT,
    MOVED_DELAY,
    DirtyFile,
    Kind,
    may_exist,
    moves_as_row,
)

if TYPE_CHECKING:
    from collections.abc import Mapping

    from zonefs.cache.journal import Journal, Move
    from zonefs.common.keys import PosixMeta
    from zonefs.pending.ledger import Ledger

log = logging.getLogger(__name__)


def moves_locally_row(df: DirtyFile) -> bool:
    """A pending file whose rename moves only its row: new bytes, or a copy still to be made
    (not a directory: those go through the store's copies)."""
    return not df.is_dir and moves_as_row(df)


class LocalMoves:
    """The pending-state side of renames; see the module docstring."""

    def __init__(self, ledger: Ledger, journal: Journal) -> None:
        self.ledger, self.journal = ledger, journal
        self.rows = ledger.rows

    def moves_locally(self, old: str) -> bool:
        """Whether renaming the file `old` only moves its pending row (new bytes, a copy
        still to be made)."""
        df = self.rows.get(old)
        return df is not None and moves_locally_row(df)

    async def move_pending_file(self, old: str, new: str, dst_etag: str | None,
                                dst_exists: bool) -> bool:
        """Move the pending file `old` (new bytes) to `new`, replacing what `new` shows now
        (`dst_exists`, its ETag `dst_etag`): one journal transaction, no request. False when
        its upload landed meanwhile (it is clean now: a copy in the store moves it)."""
        ledger = self.ledger
        await ledger.cancel(old)
        if not self.moves_locally(old):
            return False  # before touching `new`: a delete pending there must stay queued
        replacing = self.rows.get(new)
        if not ledger.has_delete(new):
            await ledger.cancel(new)  # a pending file the move replaces
        replaced = self.rows.pop(new, None)
        df = self.rows.pop(old)
        claimed, claimed_etag = await ledger.claim(new)
        base = self._replaced_base(new, dst_etag, dst_exists, replacing, replaced, claimed,
                                   claimed_etag)
        maybe, etag = may_exist(df, None)
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
            ledger.deletes.remember(*delete)
        if replaced is not None:
            replaced.persisted = False  # its row went with the move
            ledger.drop(new, replaced)
        df.row.path, df.row.base_etag = new, base
        df.row.meta = df.row.meta.changed_now()  # a rename changes ctime
        df.absent = base is None
        # An upload made under the old name (by fsync while open) is not this name's: the
        # last close must upload again rather than take it as done.
        df.uploaded_generation, df.uploaded = -1, None
        self.rows[new] = df
        if df.persisted:
            ledger.persist(df, durable=False)  # its new ctime
        ledger.schedule(df)
        return True

    async def move_by_copy(self, old: str, new: str, *, size: int, meta: PosixMeta,
                           etag: str | None, dst_etag: str | None, dst_exists: bool) -> bool:
        """Move the clean file `old` (`size` bytes, attributes `meta`, object `etag`) to
        `new`, replacing what `new` shows now, as a pending copy: one journal transaction,
        no request. The copy row at `new` is made by the write-back queue, and the delete of
        `old` waits for it. False when `old` is open for writing, or changed while this
        waited for uploads to stop (then the core moves it at once, as it is)."""
        ledger = self.ledger
        before = self.rows.get(old)
        if before is not None and (before.writers or moves_locally_row(before)):
            return False
        replacing = self.rows.get(new)
        await ledger.cancel(old)  # a pending attribute change rides along
        if not ledger.has_delete(new):
            await ledger.cancel(new)  # a pending file the move replaces
        claimed, claimed_etag = await ledger.claim(new)
        if self.rows.get(old) is not before:
            # Changed while we waited (written to, or its attribute change landed, which
            # may have given the object a new ETag): `etag` is out of date. Give the delete
            # back, untouched; the core moves it as it is now.
            if claimed:
                ledger.deletes.remember(new, claimed_etag)
            return False
        replaced = self.rows.pop(new, None)
        df = self.rows.pop(old, None)
        base = self._replaced_base(new, dst_etag, dst_exists, replacing, replaced, claimed,
                                   claimed_etag)
        # The copy's headers: a pending attribute change's, and ctime now (`meta`'s).
        row = DirtyRow(new, None, size, replace(df.row.meta, ctime_ns=meta.ctime_ns)
                       if df is not None else meta, base, 1, source=old)
        self.journal.move_by_copy(row, old, delete_etag=etag,
                                  replaces_delete=new if claimed else None)
        if replaced is not None:
            replaced.persisted = False  # its row went with the move
            ledger.drop(new, replaced)
        moved = DirtyFile(row, Kind.COPY, persisted=True, absent=base is None)
        self.rows[new] = moved
        ledger.deletes.remember(old, etag)  # applied once the copy is made
        ledger.schedule(moved, delay=MOVED_DELAY)
        return True

    def _replaced_base(self, new: str, dst_etag: str | None, dst_exists: bool,
                       replacing: DirtyFile | None, replaced: DirtyFile | None, claimed: bool,
                       claimed_etag: str | None) -> str | None:
        """The ETag the write that a rename makes at `new` must expect there (None: that no
        object is there), from what is known after the rename waited for uploads at `new` to
        stop. `dst_etag` is what `new` showed before that wait, `replacing` its pending row
        then, and `replaced` its pending row now (taken out); `claimed` says whether a
        pending delete of `new` was taken over (with the ETag it named)."""
        if replacing is not None and replaced is None:
            # The pending file at `new` was uploaded while the rename waited: its object is
            # there now, which `dst_etag` (from before) does not show.
            memo = self.journal.get_object(new)
            return memo.etag if memo is not None and memo.etag else ANY_OBJECT
        if replaced is not None and replaced.row.base_etag:
            return replaced.row.base_etag  # fresher than `dst_etag`: an upload may have landed
        if dst_exists and dst_etag:
            return dst_etag
        if claimed:
            return claimed_etag or ANY_OBJECT  # the object of the delete this write replaces
        if replaced is not None and may_exist(replaced, dst_etag)[0]:
            return ANY_OBJECT  # a pending file replaced here, an upload of which may have landed
        return None

    # -- renames that copy objects in the store ------------------------------------------------

    async def take_pair(self, old: str, new: str) -> tuple[DirtyFile | None, DirtyFile | None]:
        """For the move of the clean file `old` onto `new` by a copy now: stop their queued
        changes and take their rows out (`new`'s, the one replaced; `old`'s). Pending copies
        reading the object at `new`, and a delete pending there, are applied first."""
        ledger = self.ledger
        await ledger.cancel(old)
        await ledger.flush(self.rows.copies_reading(new))
        if ledger.has_delete(new):
            await ledger.flush([new])  # deleted first: the copy then lands after it
        else:
            await ledger.cancel(new)
        return self.rows.pop(new, None), self.rows.pop(old, None)

    async def take_below(self, old: str) -> dict[str, DirtyFile]:
        """For the move of the directory `old`: stop the queued changes of every row at or
        below it and take them out (a row whose upload landed while this waited stays)."""
        moving: dict[str, DirtyFile] = {}
        try:
            for path, df in self.ledger.below(old):
                await self.ledger.cancel(df.queue_key)
                taken = self.rows.pop(path, None)
                if taken is not None:  # else its upload finished while we waited
                    moving[path] = taken
        except BaseException:
            self.put_back(moving)
            raise
        return moving

    def put_back(self, moving: Mapping[str, DirtyFile]) -> None:
        """A rename that changed nothing: its pending files stay under their old names."""
        for path, df in moving.items():
            self.rows.setdefault(path, df)

    def dropped_by_plan(self, path: str, df: DirtyFile) -> None:
        """A row the rename replaces, whose journal row the plan's `drop` step removed."""
        df.persisted = False
        self.ledger.drop(path, df)

    def apply_planned(self, page: list[Move], *, resuming: bool) -> None:
        """Run one page of a rename plan's `dirty` and `drop` steps on the journal. When
        resuming after a crash, the rows in memory (loaded from the journal at start)
        follow; a live rename moves its rows itself (`carry`), open ones included."""
        self.journal.apply_pending_moves(page)
        if not resuming:
            return
        for m in page:
            df = self.rows.pop(m.src, None)
            if df is None:
                continue
            if m.kind == MOVE_DROP:
                self.ledger.discard_data(df)  # nothing is open after a crash
                continue
            assert m.kind == MOVE_DIRTY and m.dst is not None
            gone = self.rows.pop(m.dst, None)
            if gone is not None:
                self.ledger.discard_data(gone)
            df.row.path, df.row.base_etag = m.dst, None
            self.rows[m.dst] = df

    def carry(self, old: str, new: str, df: DirtyFile, has_object: bool) -> None:
        """Move the in-memory state of a renamed pending file from `old` to `new` (its journal
        row was handled by the plan).

        New bytes are uploaded under the new name; otherwise the object's copy carries any
        metadata change, and what stays pending is only a file open for write, unchanged so
        far (its base ETag is set when the copy lands: `copy_landed`). A metadata change of
        a file that has no object is dropped.
        """
        df.row.path = new
        if moves_as_row(df):
            df.row.base_etag = None
            df.absent = True
            # An upload made under the old name (by fsync while open) is not this name's:
            # the last close must upload again rather than take it as done.
            df.uploaded_generation, df.uploaded = -1, None
            self.rows[new] = df
            self.ledger.schedule(df)
            return
        df.persisted = False
        if not has_object:
            log.warning("%r had a pending metadata change but no object; dropped", old)
            self.ledger.drop(old, df)
            return
        df.kind = Kind.UNCHANGED  # the copy carries the metadata change
        if df.row.data is not None and df.writers:
            self.rows[new] = df  # still open for write, unchanged so far
        else:
            self.ledger.discard_data(df)

    def copy_landed(self, key: str, df: DirtyFile | None, etag: str) -> None:
        """The copy of a rename landed at `key` as `etag`: an open, unchanged file moved with
        it (`df`) now starts from it."""
        if df is not None and self.rows.get(key) is df:
            df.row.base_etag = etag
