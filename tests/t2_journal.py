"""The journal (SQLite, WAL): dirty rows survive a reopen, rows move and finish atomically,
remembered objects are filtered by ETag, rename plans count only once sealed and their steps
are idempotent, multipart uploads and the intents journaled before their creation stay until
settled (a journal from before intents existed opens and keeps its uploads), and the database
is private to its owner."""

from __future__ import annotations

import os
import sqlite3
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from zonefs.cache.journal import (
    MOVE_COPY,
    MOVE_DELETE,
    MOVE_DIRTY,
    MOVE_DROP,
    RENAME_LISTING,
    RENAME_PLANNED,
    DirtyRow,
    Journal,
    Move,
    MultipartIntent,
    ObjectRow,
)
from zonefs.common.errors import NoSpace
from zonefs.common.keys import PosixMeta

META = PosixMeta(0o100644, 1000, 1000, 1_700_000_000_123_456_789, 1_700_000_001_000_000_000,
                 1_600_000_000_000_000_007)


def row(path: str, data: str | None = "staging/1", size: int = 5, gen: int = 1,
        base: str | None = None) -> DirtyRow:
    return DirtyRow(path, data, size, META, base, gen)


def obj(key: str, etag: str = "e1", sha256: str | None = "a" * 64) -> ObjectRow:
    return ObjectRow(key, etag, 5, META, sha256, "b" * 40 if sha256 else None)


@pytest.fixture
def db_path(tmp_path: Path) -> str:
    return str(tmp_path / "journal.sqlite")


@pytest.fixture
def journal(db_path: str) -> Iterator[Journal]:
    j = Journal(db_path)
    yield j
    j.close()


def rows_of(path: str) -> list[DirtyRow]:
    """Dirty rows as a second, independent connection sees them (another process would)."""
    other = Journal(path)
    try:
        return list(other.dirty_rows())
    finally:
        other.close()


# -- dirty rows -------------------------------------------------------------------------------


def test_dirty_rows_round_trip_in_path_order(journal: Journal) -> None:
    rows = [
        row("b/x", "staging/2", 0, 3, "etag-b"),
        row("a", None, 42, 7),  # metadata only
        DirtyRow("c", "staging/3", 1 << 40, PosixMeta(0o120777, 0, 0, -1, -1, -1), None, 1),
    ]
    for r in rows:
        journal.put_dirty(r)
    assert list(journal.dirty_rows()) == sorted(rows, key=lambda r: r.path)


def test_dirty_rows_survive_reopen(db_path: str) -> None:
    first = Journal(db_path)
    first.put_dirty(row("a/b.txt", base="etag"))
    first.put_dirty(row("unicode-é", None, 9))
    first.close()
    second = Journal(db_path)
    try:
        assert [r.path for r in second.dirty_rows()] == ["a/b.txt", "unicode-é"]
        assert next(second.dirty_rows()) == row("a/b.txt", base="etag")
    finally:
        second.close()


def test_committed_rows_are_visible_without_close(journal: Journal, db_path: str) -> None:
    # A crash never closes the journal: every write must be committed when the call returns.
    journal.put_dirty(row("a"))
    assert rows_of(db_path) == [row("a")]
    journal.drop_dirty("a")
    assert rows_of(db_path) == []


def test_put_dirty_replaces_same_path(journal: Journal) -> None:
    journal.put_dirty(row("a", size=1, gen=1))
    journal.put_dirty(row("a", "staging/9", size=2, gen=2))
    assert list(journal.dirty_rows()) == [row("a", "staging/9", size=2, gen=2)]


def test_drop_dirty(journal: Journal) -> None:
    journal.put_dirty(row("a"))
    journal.put_dirty(row("b"))
    journal.drop_dirty("a")
    journal.drop_dirty("missing")  # harmless
    assert [r.path for r in journal.dirty_rows()] == ["b"]


def test_move_dirty_renames_and_replaces_target(journal: Journal, db_path: str) -> None:
    journal.put_dirty(row("old", "staging/old", gen=4))
    journal.put_dirty(row("new", "staging/new", gen=9))
    journal.put_dirty(row("other"))
    journal.move_dirty("old", "new")
    moved = row("new", "staging/old", gen=4)
    assert list(journal.dirty_rows()) == [moved, row("other")]
    assert rows_of(db_path) == [moved, row("other")]


def test_move_dirty_to_free_name(journal: Journal) -> None:
    journal.put_dirty(row("d/a"))
    journal.move_dirty("d/a", "e/a")
    assert [r.path for r in journal.dirty_rows()] == ["e/a"]


def test_move_dirty_onto_itself_keeps_the_row(journal: Journal) -> None:
    journal.put_dirty(row("a"))
    journal.move_dirty("a", "a")
    assert list(journal.dirty_rows()) == [row("a")]


# -- finishing uploads and remembered objects --------------------------------------------------


def test_finish_upload_drops_row_and_records_object(journal: Journal, db_path: str) -> None:
    journal.put_dirty(row("a"))
    journal.put_dirty(row("b"))
    journal.finish_upload("a", obj("a", "etag-new"))
    assert [r.path for r in journal.dirty_rows()] == ["b"]
    assert journal.get_object("a") == obj("a", "etag-new")
    assert [r.path for r in rows_of(db_path)] == ["b"]


def test_finish_upload_is_atomic(journal: Journal) -> None:
    # If recording the object fails, the dirty row must stay: the upload is then repeated,
    # never forgotten. A NULL ETag violates the schema and makes the insert fail.
    journal.put_dirty(row("a"))
    bad = ObjectRow("a", None, 5, META)  # type: ignore[arg-type]
    with pytest.raises(sqlite3.IntegrityError):
        journal.finish_upload("a", bad)
    assert [r.path for r in journal.dirty_rows()] == ["a"]
    assert journal.get_object("a") is None
    journal.put_dirty(row("b"))  # the connection is usable after the rollback
    assert [r.path for r in journal.dirty_rows()] == ["a", "b"]


def test_a_journal_that_cannot_grow_fails_with_enospc_and_commits_nothing(
    journal: Journal, db_path: str,
) -> None:
    # A full cache disk: the close that cannot journal its row gets ENOSPC (not EIO and a
    # traceback), nothing is half-written, and the journal works again once there is room.
    journal.put_dirty(row("a"))
    pages = journal._db.execute("PRAGMA page_count").fetchone()[0]  # noqa: SLF001
    journal._db.execute(f"PRAGMA max_page_count = {pages}")  # noqa: SLF001 - a full disk
    with pytest.raises(NoSpace):
        for n in range(2000):
            journal.put_dirty(row(f"big/{n:04d}/" + "x" * 200))
    assert "a" in [r.path for r in rows_of(db_path)]
    journal._db.execute("PRAGMA max_page_count = 1073741823")  # noqa: SLF001 - room again
    journal.put_dirty(row("b"))
    assert "b" in [r.path for r in rows_of(db_path)]


def test_get_object_filters_by_etag(journal: Journal) -> None:
    journal.put_object(obj("k", "e1"))
    assert journal.get_object("k") == obj("k", "e1")
    assert journal.get_object("k", "e1") == obj("k", "e1")
    assert journal.get_object("k", "e2") is None, "a changed object must not reuse old facts"
    assert journal.get_object("missing") is None
    journal.put_object(obj("k", "e2", None))
    assert journal.get_object("k", "e1") is None
    assert journal.get_object("k", "e2") == obj("k", "e2", None)


def test_remembered_objects_read_from_memory_follow_every_write(journal: Journal) -> None:
    # get_object answers from memory after the first query: each write must show at once,
    # and a write rolled back must not.
    assert journal.get_object("a") is None  # remembered as absent
    journal.put_dirty(row("a"))
    journal.finish_upload("a", obj("a", "e1"))
    assert journal.get_object("a", "e1") == obj("a", "e1")
    bad = ObjectRow("a", None, 5, META)  # type: ignore[arg-type]
    journal.put_dirty(row("a"))
    with pytest.raises(sqlite3.IntegrityError):
        journal.finish_upload("a", bad)
    assert journal.get_object("a") == obj("a", "e1"), "the rolled-back write does not show"
    journal.put_object(obj("a", "e2"))
    assert journal.get_object("a", "e1") is None and journal.get_object("a", "e2")
    journal.drop_delete("a")
    assert journal.get_object("a") is None
    journal.put_object(obj("a", "e3"))
    journal.drop_object("a")
    assert journal.get_object("a") is None


def test_remembered_headers_are_written_in_batches_and_read_at_once(
    journal: Journal, db_path: str,
) -> None:
    journal.remember_object(obj("h1", "e1", sha256="d" * 64))
    assert journal.get_object("h1", "e1") == obj("h1", "e1", sha256="d" * 64)
    assert journal.blob_in_use("d" * 64), "queries of the table see rows held back"
    journal.remember_object(obj("h2", "e1"))
    journal.put_object(obj("h2", "e2"))  # a later write wins over the held-back one
    journal.remember_object(obj("h3", "e1"))
    journal.drop_object("h3")
    journal.sync()
    assert journal.get_object("h2") == obj("h2", "e2")
    assert journal.get_object("h3") is None
    db = sqlite3.connect(db_path)
    try:
        written = dict(db.execute("SELECT key, etag FROM objects WHERE key LIKE 'h%'"))
    finally:
        db.close()
    assert written == {"h1": "e1", "h2": "e2"}


def test_remembered_headers_survive_a_clean_close(db_path: str) -> None:
    first = Journal(db_path)
    first.remember_object(obj("k"))
    first.close()
    second = Journal(db_path)
    try:
        assert second.get_object("k") == obj("k")
    finally:
        second.close()


def test_drop_object_and_blob_in_use(journal: Journal) -> None:
    journal.put_object(obj("k1", sha256="c" * 64))
    journal.put_object(obj("k2", sha256="c" * 64))
    assert journal.blob_in_use("c" * 64)
    journal.drop_object("k1")
    assert journal.get_object("k1") is None
    assert journal.blob_in_use("c" * 64)
    journal.drop_object("k2")
    assert not journal.blob_in_use("c" * 64)


def test_objects_survive_reopen(db_path: str) -> None:
    first = Journal(db_path)
    first.put_object(obj("k"))
    first.put_dirty(row("x"))  # an fsync'ed commit after it makes it durable too
    first.close()
    second = Journal(db_path)
    try:
        assert second.get_object("k") == obj("k")
    finally:
        second.close()


def test_user_data_writes_are_synchronous_full(journal: Journal) -> None:
    # put_dirty acknowledges a close(): it must run with synchronous=FULL even right after a
    # write that relaxed it (remembered objects skip the fsync).
    def level() -> int:
        return int(journal._db.execute("PRAGMA synchronous").fetchone()[0])

    journal.put_object(obj("k"))
    journal.put_dirty(row("a"))
    assert level() == 2  # FULL
    journal.finish_upload("a", obj("a"))
    journal.move_dirty("x", "y")
    assert level() == 2
    journal.put_object(obj("k"))
    journal.drop_dirty("a")
    assert level() == 2
    assert journal._db.execute("PRAGMA journal_mode").fetchone()[0] == "wal"


# -- the file itself ----------------------------------------------------------------------------


def test_journal_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0)  # the 0600 must come from the code, not from the test's umask
    try:
        path = tmp_path / "journal.sqlite"
        j = Journal(str(path))
        j.put_dirty(row("a"))
        try:
            for f in tmp_path.iterdir():  # the database and its -wal/-shm companions
                assert stat.S_IMODE(f.stat().st_mode) == 0o600, f.name
        finally:
            j.close()
    finally:
        os.umask(old)


def test_seen_pairs_carry_over_copies_but_not_claims(journal: Journal, db_path: str) -> None:
    journal.saw("a" * 64, "etag-1")
    assert journal.seen("a" * 64, "etag-1")
    assert not journal.seen("a" * 64, "etag-2") and not journal.seen("b" * 64, "etag-1")
    journal.saw_copy("a" * 64, "etag-1", "etag-copy")  # a copy of verified bytes
    journal.saw_copy("b" * 64, "etag-9", "etag-copy2")  # a copy of a mere claim
    assert journal.seen("a" * 64, "etag-copy") and not journal.seen("b" * 64, "etag-copy2")
    journal.saw("c" * 64, "")  # stores without ETags prove nothing
    assert not journal.seen("c" * 64, "")
    journal.close()
    assert Journal(db_path).seen("a" * 64, "etag-copy")


# -- renames in progress ----------------------------------------------------------------------


def test_rename_plan_survives_a_reopen_only_once_sealed(journal: Journal, db_path: str) -> None:
    sealed = journal.begin_rename("d", "e")
    journal.plan_moves(sealed, [Move(MOVE_COPY, "d/a", "e/a", "etag-a", {"mode": "33188"}),
                                Move(MOVE_DELETE, "d/b"), Move(MOVE_DIRTY, "d/c", "e/c")])
    journal.seal_rename(sealed)
    listing = journal.begin_rename("x", "y")
    journal.plan_moves(listing, [Move(MOVE_COPY, "x/a", "y/a")])
    other = Journal(db_path)
    try:
        renames = other.renames()
        assert [(r.old, r.new, r.state) for r in renames] == [
            ("d", "e", RENAME_PLANNED), ("x", "y", RENAME_LISTING)]
        moves = other.moves(sealed, (MOVE_COPY, MOVE_DELETE, MOVE_DIRTY))
        assert [(m.kind, m.src, m.dst, m.etag, m.headers) for m in moves] == [
            (MOVE_COPY, "d/a", "e/a", "etag-a", {"mode": "33188"}),
            (MOVE_DELETE, "d/b", None, None, None), (MOVE_DIRTY, "d/c", "e/c", None, None)]
        # Paged in plan order; the copied mark filters.
        first = other.moves(sealed, (MOVE_COPY, MOVE_DELETE), limit=1)
        assert [m.src for m in first] == ["d/a"]
        assert [m.src for m in other.moves(sealed, (MOVE_COPY, MOVE_DELETE),
                                           after=first[0].id)] == ["d/b"]
        other.mark_copied(first[0].id)
        assert other.moves(sealed, (MOVE_COPY,), copied=False) == []
        other.done_move(first[0].id)
        assert other.count_moves(sealed) == 2
        other.end_rename(listing)
        assert [r.batch for r in other.renames()] == [sealed]
    finally:
        other.close()


def test_pending_moves_never_delete_a_row_already_moved(journal: Journal, db_path: str) -> None:
    journal.put_dirty(row("d/c", "staging/c", base="etag-old"))
    journal.put_dirty(row("d/m", None))
    journal.put_dirty(row("e/x", "staging/x"))  # a replaced target
    batch = journal.begin_rename("d", "e")
    journal.plan_moves(batch, [Move(MOVE_DROP, "e/x"), Move(MOVE_DIRTY, "d/c", "e/c"),
                               Move(MOVE_DROP, "d/m", "e/m")])
    journal.seal_rename(batch)
    steps = journal.moves(batch, (MOVE_DIRTY, MOVE_DROP))
    journal.apply_pending_moves(steps)
    assert [(r.path, r.data, r.base_etag) for r in rows_of(db_path)] == [
        ("e/c", "staging/c", None)]  # moved, as a new file
    assert journal.count_moves(batch) == 0
    # The same step again (a resume after its forget was lost) changes nothing.
    journal.apply_pending_moves(steps)
    assert [r.path for r in rows_of(db_path)] == ["e/c"]


def test_multipart_uploads_are_kept_until_dropped(journal: Journal, db_path: str) -> None:
    journal.add_multipart("big.bin", "upload-1")
    journal.add_multipart("big.bin", "upload-1")  # recorded twice: still one row
    journal.add_multipart("dir/other.bin", "upload-2")
    other = Journal(db_path)  # what the next mount finds after a crash
    try:
        assert other.multipart_uploads() == [("big.bin", "upload-1"),
                                             ("dir/other.bin", "upload-2")]
        other.drop_multipart("big.bin", "upload-1")
        other.drop_multipart("big.bin", "no-such-upload")  # dropping twice is fine
        assert other.multipart_uploads() == [("dir/other.bin", "upload-2")]
    finally:
        other.close()


def test_multipart_intents_are_settled_by_the_upload_id_in_one_transaction(
    journal: Journal, db_path: str
) -> None:
    first = journal.add_multipart_intent("big.bin", 1_000)
    second = journal.add_multipart_intent("big.bin", 2_000)
    third = journal.add_multipart_intent("dir/copy.bin", 3_000)
    assert len({first, second, third}) == 3
    journal.add_multipart("big.bin", "upload-1", replaces=first)  # the create answered
    journal.add_multipart("dir/copy.bin", "upload-2")  # answered after a retry: intent stays
    other = Journal(db_path)  # what the next mount finds after a crash
    try:
        assert other.multipart_uploads() == [("big.bin", "upload-1"),
                                             ("dir/copy.bin", "upload-2")]
        assert other.multipart_intents() == [MultipartIntent(second, "big.bin", 2_000),
                                             MultipartIntent(third, "dir/copy.bin", 3_000)]
        other.drop_multipart_intents([second, third, 12345])  # an unknown id is fine
        assert other.multipart_intents() == []
    finally:
        other.close()


# The journal's `multipart` table as zonefs wrote it before intents were journaled.
OLD_MULTIPART_SCHEMA = """
CREATE TABLE multipart (
    key       TEXT NOT NULL,     -- zone key
    upload_id TEXT NOT NULL,
    PRIMARY KEY (key, upload_id)
) WITHOUT ROWID;
"""


def test_a_journal_from_before_multipart_intents_opens_and_keeps_its_uploads(
    db_path: str,
) -> None:
    old = sqlite3.connect(db_path)
    old.execute("PRAGMA journal_mode=WAL")
    old.executescript(OLD_MULTIPART_SCHEMA)
    old.execute("INSERT INTO multipart VALUES ('big.bin', 'upload-1')")
    old.commit()
    old.close()
    journal = Journal(db_path)
    try:
        assert journal.multipart_uploads() == [("big.bin", "upload-1")]
        assert journal.multipart_intents() == []
        intent = journal.add_multipart_intent("big.bin", 5)
        journal.add_multipart("big.bin", "upload-2", replaces=intent)
        assert journal.multipart_uploads() == [("big.bin", "upload-1"),
                                               ("big.bin", "upload-2")]
        assert journal.multipart_intents() == []
    finally:
        journal.close()
    reopened = Journal(db_path)  # and it opens again as it is now
    try:
        assert len(reopened.multipart_uploads()) == 2
    finally:
        reopened.close()
