"""The ledger alone (`zonefs.pending.ledger.Ledger`), without the core: its named operations
called the way the core calls them, on a real journal and blob cache in the test's tmp dir and
the embedded local zone as the store, with the write-back queue running in a nursery and a
write-back delay long enough that nothing uploads unless a test flushes.

Each test asserts what the journal, the store (objects and their bytes) and `ledger.row`
show: rows journaled at close, one pending change per key, a row settled clean only when its
generation did not move during its upload, kinds named and derived again after a restart,
orphan staging files removed at start, and writes waiting for uploads when the cache is full.
"""

from __future__ import annotations

import hashlib
import os
import stat as st
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import trio
from vfs_harness import DRAIN_TIMEOUT, HOLD, DelegatingRemote, Store

from zonefs.cache.blobs import BlobStore, Digest
from zonefs.cache.dircache import DirCache
from zonefs.cache.journal import DirtyRow, Journal
from zonefs.common import keys
from zonefs.common.config import MountOptions, ZoneConfig
from zonefs.common.keys import PosixMeta
from zonefs.pending import upload
from zonefs.pending.ledger import Ledger
from zonefs.pending.rows import ANY_OBJECT, STREAMED_OVER, DirtyFile, Kind
from zonefs.remote import ObjectInfo, Remote, open_remote
from zonefs.remote.probe import Capabilities

UID, GID = 1234, 5678


def file_meta(mode: int = 0o644, kind: int = st.S_IFREG) -> PosixMeta:
    return PosixMeta.new(kind | mode, UID, GID)


@dataclass
class Rig:
    """A running ledger, what it owns on disk, and the store as another client sees it."""

    ledger: Ledger
    journal: Journal
    blobs: BlobStore
    store: Store
    nursery: trio.Nursery

    def journaled(self) -> dict[str, DirtyRow]:
        return {row.path: row for row in self.journal.dirty_rows()}

    def staged(self, df: DirtyFile) -> bool:
        """Whether the row's data file is still in staging/."""
        return df.row.data is not None and os.path.exists(self.blobs.abspath(df.row.data))

    async def write(self, df: DirtyFile, data: bytes, offset: int = 0) -> None:
        """write() through a handle: room first, the bytes in the data file, then `wrote`."""
        growth = max(0, offset + len(data) - df.row.size)
        if growth:
            await self.ledger.wait_for_room(growth)
        assert df.row.data is not None
        fd = os.open(self.blobs.abspath(df.row.data), os.O_WRONLY)
        try:
            os.pwrite(fd, data, offset)
            os.fsync(fd)
        finally:
            os.close(fd)
        self.ledger.wrote(df, offset, len(data))

    async def new_file(self, path: str, data: bytes = b"", *, exists: bool = False,
                       etag: str | None = None) -> DirtyFile:
        """create(), write() and close() of `path`: its one writer is left for the caller's
        `last_close`."""
        staging, fd = self.blobs.open_new_staging()
        os.close(fd)
        df = await self.ledger.created(path, self.blobs.relpath(staging), file_meta(), etag,
                                       exists)
        if data:
            await self.write(df, data)
        assert self.ledger.closed(df, wrote=bool(data))
        return df

    async def uploaded(self, path: str, data: bytes) -> ObjectInfo:
        """A file created through the ledger and flushed: the object it left in the store."""
        self.ledger.last_close(await self.new_file(path, data))
        await self.ledger.flush([path])
        info = await self.store.head(path)
        assert info is not None
        return info

    async def open_copy(self, path: str, *, truncate: bool) -> DirtyFile:
        """open() for writing of a clean file (O_TRUNC when `truncate`): a local copy of its
        object, or an empty file, with one writer."""
        info = await self.store.head(path)
        assert info is not None
        staging = self.blobs.new_staging()
        if not truncate:
            Path(staging).write_bytes(await self.store.read(path))
        df = self.ledger.took_local_copy(path, self.blobs.relpath(staging),
                                         0 if truncate else info.size, file_meta(), info.etag,
                                         truncated=truncate)
        self.ledger.opened_for_write(df)
        return df


@asynccontextmanager
async def running(zone: ZoneConfig, cache_dir: Path, *, remote: Remote | None = None,
                  **changes: Any) -> AsyncIterator[Rig]:
    """A ledger on `zone` with its cache in `cache_dir`; stopped, not drained, on exit (what
    is pending stays journaled for the next one)."""
    cache_dir.mkdir(mode=0o700, exist_ok=True)
    opts = MountOptions(writeback_delay=HOLD, metadata_ttl=30.0, cache_dir=str(cache_dir),
                        **changes)
    remote = remote or open_remote(zone)
    journal = Journal(str(cache_dir / "journal.sqlite"))
    blobs = BlobStore(str(cache_dir), capacity=opts.cache_size)
    store = Store("local", open_remote(zone))
    try:
        with trio.fail_after(DRAIN_TIMEOUT):
            async with trio.open_nursery() as nursery:
                ledger = Ledger(remote, journal, blobs, DirCache(opts.metadata_ttl), opts,
                                Capabilities(), forget_opened=lambda path: None)
                await nursery.start(ledger.run_writeback)
                yield Rig(ledger, journal, blobs, store, nursery)
                nursery.cancel_scope.cancel()
    finally:
        journal.close()
        remote.close()
        store.remote.close()


class PausedUpload(DelegatingRemote):
    """An upload stores its object, then waits for `release` before it answers: a change can
    reach the row while its upload is in flight and has landed. `landed` is set then;
    `stored` counts the objects uploads stored."""

    def __init__(self, inner: Remote) -> None:
        super().__init__(inner)
        self.landed = trio.Event()
        self.release = trio.Event()
        self.stored = 0

    async def upload(self, *args: Any, **kwargs: Any) -> ObjectInfo:
        info = await super().upload(*args, **kwargs)
        self.stored += 1
        self.landed.set()
        await self.release.wait()
        return info


async def flush_in_background(rig: Rig, path: str) -> trio.Event:
    """fsync() of `path` in a task of its own; the event is set when it returned."""
    done = trio.Event()

    async def flush() -> None:
        await rig.ledger.flush([path])
        done.set()

    rig.nursery.start_soon(flush)
    return done


# -- a file's life: created, written, closed, uploaded -------------------------------------------


async def test_a_new_file_is_journaled_at_close_and_remembered_once_uploaded(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """created → wrote → closed → last_close → flush: journaled at close, then the object."""
    async with running(local_zone, tmp_path / "cache") as rig:
        staging, fd = rig.blobs.open_new_staging()
        os.close(fd)
        df = await rig.ledger.created("f", rig.blobs.relpath(staging), file_meta(), None, False)
        assert df.kind is Kind.BYTES and df.writers == 1 and df.absent
        assert rig.journaled() == {}  # not acknowledged before close
        await rig.write(df, b"hello ledger")
        assert rig.journaled() == {}
        assert rig.ledger.closed(df, wrote=True)
        assert rig.journaled()["f"].size == 12
        rig.ledger.last_close(df)
        assert rig.ledger.is_queued("f") and await rig.store.head("f") is None  # held
        await rig.ledger.flush(["f"])
        assert await rig.store.read("f") == b"hello ledger"
        assert rig.ledger.row("f") is None and rig.journaled() == {}
        memo = rig.journal.get_object("f")
        info = await rig.store.head("f")
        assert memo is not None and info is not None
        assert (memo.etag, memo.size) == (info.etag, 12)
        assert memo.sha256 is not None and rig.blobs.has(memo.sha256)
        assert rig.ledger.count == 0


async def test_every_change_of_a_row_bumps_its_generation(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """wrote, truncated and metadata_changed each move the row's generation by one."""
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("f", b"abc")
        gen = df.row.generation
        await rig.write(df, b"d", 3)
        assert df.row.generation == gen + 1
        rig.ledger.truncated(df, 1)
        assert df.row.generation == gen + 2 and df.row.size == 1
        rig.ledger.metadata_changed("f", file_meta(0o600), size=1, etag=None)
        assert df.row.generation == gen + 3 and df.row.meta.mode & 0o777 == 0o600


async def test_a_write_during_an_upload_keeps_the_row_pending_on_the_new_base(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """An upload (fsync) the row changed under is not settled: new base ETag, sent again."""
    remote = PausedUpload(open_remote(local_zone))
    async with running(local_zone, tmp_path / "cache", remote=remote) as rig:
        df = await rig.new_file("f", b"first")
        done = await flush_in_background(rig, "f")
        await remote.landed.wait()
        await rig.write(df, b" second", 5)  # another handle writes while the upload answers
        assert rig.ledger.closed(df, wrote=True)
        remote.release.set()
        await done.wait()
        landed = await rig.store.head("f")
        assert landed is not None and await rig.store.read("f") == b"first"
        assert rig.ledger.row("f") is df and df.uploaded is None  # not parked, not settled
        assert df.row.base_etag == landed.etag
        assert rig.journaled()["f"].base_etag == landed.etag
        assert rig.journaled()["f"].size == 12
        assert rig.journal.get_object("f") is None
        rig.ledger.last_close(df)
        assert rig.ledger.is_queued("f")
        await rig.ledger.flush(["f"])
        assert await rig.store.read("f") == b"first second" and remote.stored == 2
        assert rig.ledger.row("f") is None and rig.journaled() == {}
        assert rig.ledger.conflicts == 0 and await rig.store.keys() == {"f"}


async def test_an_upload_that_landed_while_open_is_the_last_close_s_end(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """fsync of an open file, no change since: the last close settles it, no second upload."""
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("f", b"synced")
        await rig.ledger.flush(["f"])
        info = await rig.store.head("f")
        assert info is not None and rig.ledger.row("f") is df  # still open
        assert df.uploaded_generation == df.row.generation
        assert rig.journaled()["f"].base_etag == info.etag
        sent = rig.ledger.uploaded_bytes
        rig.ledger.last_close(df)
        assert rig.ledger.row("f") is None and not rig.ledger.is_queued("f")
        assert rig.ledger.uploaded_bytes == sent
        memo = rig.journal.get_object("f")
        assert memo is not None and memo.etag == info.etag


async def test_a_chmod_during_an_upload_sends_it_again_over_its_own_object(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """A change during an upload that landed anyway: sent again, replacing our own object."""
    remote = PausedUpload(open_remote(local_zone))
    async with running(local_zone, tmp_path / "cache", remote=remote) as rig:
        df = await rig.new_file("f", b"bytes")
        rig.ledger.last_close(df)
        done = await flush_in_background(rig, "f")
        await remote.landed.wait()
        rig.ledger.metadata_changed("f", file_meta(0o600), size=5, etag=None)
        assert rig.ledger.row("f") is df and df.kind is Kind.BYTES
        remote.release.set()
        await done.wait()
        info = await rig.store.head("f")
        assert info is not None and info.metadata is not None
        assert int(info.metadata["mode"]) == st.S_IFREG | 0o600
        assert await rig.store.read("f") == b"bytes" and remote.stored == 2
        assert rig.ledger.row("f") is None and rig.journaled() == {}
        assert rig.ledger.conflicts == 0 and await rig.store.keys() == {"f"}


# -- local copies of clean files -------------------------------------------------------------------


async def test_an_unwritten_local_copy_is_dropped_at_last_close(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """took_local_copy without truncation is UNCHANGED: the last close drops it, no upload."""
    async with running(local_zone, tmp_path / "cache") as rig:
        before = await rig.uploaded("f", b"clean")
        df = await rig.open_copy("f", truncate=False)
        assert df.kind is Kind.UNCHANGED and rig.staged(df)
        assert not rig.ledger.closed(df, wrote=False)
        assert rig.journaled() == {}
        rig.ledger.last_close(df)
        assert rig.ledger.row("f") is None and not rig.staged(df)
        assert not rig.ledger.is_queued("f") and rig.journaled() == {}
        after = await rig.store.head("f")
        assert after is not None and after.version_id == before.version_id


async def test_a_truncating_open_is_new_bytes_even_unwritten(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """took_local_copy with truncation is BYTES: journaled at close, the object emptied."""
    async with running(local_zone, tmp_path / "cache") as rig:
        await rig.uploaded("f", b"to be cut")
        df = await rig.open_copy("f", truncate=True)
        assert df.kind is Kind.BYTES and df.row.size == 0
        assert rig.ledger.closed(df, wrote=False)
        assert rig.journaled()["f"].size == 0
        rig.ledger.last_close(df)
        await rig.ledger.flush(["f"])
        assert await rig.store.read("f") == b""
        assert rig.ledger.row("f") is None and rig.journaled() == {}


async def test_a_chmod_of_an_unwritten_copy_is_a_copy_in_place(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """metadata_changed turns an UNCHANGED copy METADATA: new headers, the same bytes."""
    async with running(local_zone, tmp_path / "cache") as rig:
        before = await rig.uploaded("f", b"same bytes")
        df = await rig.open_copy("f", truncate=False)
        rig.ledger.metadata_changed("f", file_meta(0o600), size=before.size, etag=before.etag)
        assert df.kind is Kind.METADATA
        assert not rig.ledger.is_queued("f")  # open for writing: the last close queues it
        rig.ledger.last_close(df)
        assert rig.ledger.row("f") is df and df.row.data is None and not rig.staged(df)
        assert rig.journaled()["f"].data is None
        await rig.ledger.flush(["f"])
        after = await rig.store.head("f")
        assert after is not None and after.metadata is not None
        assert after.version_id != before.version_id
        assert int(after.metadata["mode"]) == st.S_IFREG | 0o600
        assert after.metadata[keys.SHA256_KEY] == (before.metadata or {})[keys.SHA256_KEY]
        assert await rig.store.read("f") == b"same bytes"
        assert rig.ledger.row("f") is None and rig.journaled() == {}
        memo = rig.journal.get_object("f")
        assert memo is not None and memo.meta.mode == st.S_IFREG | 0o600


# -- removals and pending deletes ------------------------------------------------------------------


async def test_removing_a_file_never_uploaded_leaves_no_delete(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """removed() of a row whose name never held an object: no delete, row and data gone."""
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("f", b"short-lived")
        rig.ledger.last_close(df)
        await rig.ledger.removed("f", is_dir=False, etag=None)
        assert rig.ledger.row("f") is None and not rig.staged(df)
        assert rig.journal.deletes() == [] and rig.journaled() == {}
        assert not rig.ledger.is_queued("f") and rig.ledger.count == 0


async def test_removing_an_uploaded_file_is_a_pending_delete_applied_by_flush(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """removed() of an uploaded file journals a delete; flush deletes the object."""
    async with running(local_zone, tmp_path / "cache") as rig:
        info = await rig.uploaded("f", b"doomed")
        await rig.ledger.removed("f", is_dir=False, etag=info.etag)
        assert rig.journal.deletes() == [("f", info.etag)]
        assert rig.ledger.hides("f", False) and rig.ledger.is_queued("f")
        assert await rig.store.head("f") is not None  # held by the write-back delay
        await rig.ledger.flush(["f"])
        assert await rig.store.head("f") is None
        assert rig.journal.deletes() == [] and not rig.ledger.has_delete("f")
        assert rig.journal.get_object("f") is None


async def test_removing_a_pending_change_of_an_uploaded_file_turns_it_into_a_delete(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """removed() of a journaled row over an object: row and delete swap in one step."""
    async with running(local_zone, tmp_path / "cache") as rig:
        info = await rig.uploaded("f", b"v1")
        df = await rig.new_file("f", b"v2", exists=True, etag=info.etag)
        rig.ledger.last_close(df)
        assert "f" in rig.journaled()
        await rig.ledger.removed("f", is_dir=False, etag=None)
        assert rig.journaled() == {} and rig.journal.deletes() == [("f", info.etag)]
        await rig.ledger.flush(["f"])
        assert await rig.store.head("f") is None and rig.ledger.count == 0


async def test_a_file_created_over_a_pending_delete_claims_it(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """One pending change per key: the new row takes the delete over at its close."""
    async with running(local_zone, tmp_path / "cache") as rig:
        info = await rig.uploaded("f", b"old")
        await rig.ledger.removed("f", is_dir=False, etag=info.etag)
        df = await rig.new_file("f", b"new")
        assert not rig.ledger.has_delete("f") and df.row.base_etag == info.etag
        assert rig.journal.deletes() == []  # left in the transaction that journaled the row
        assert rig.journaled()["f"].base_etag == info.etag
        rig.ledger.last_close(df)
        await rig.ledger.flush(["f"])
        assert await rig.store.read("f") == b"new"
        assert rig.ledger.count == 0 and rig.journaled() == {}


async def test_a_claimed_delete_stands_until_the_new_file_is_closed(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """Until the create's close the journal holds the claimed delete; an unknown ETag makes
    the new file's upload replace whatever object is there."""
    async with running(local_zone, tmp_path / "cache") as rig:
        await rig.uploaded("f", b"old")
        await rig.ledger.removed("f", is_dir=False, etag=None)
        staging, fd = rig.blobs.open_new_staging()
        os.close(fd)
        df = await rig.ledger.created("f", rig.blobs.relpath(staging), file_meta(), None, False)
        assert df.claimed == "f" and not df.absent and df.row.base_etag == ANY_OBJECT
        assert not rig.ledger.has_delete("f")
        assert rig.journal.deletes() == [("f", None)] and rig.journaled() == {}
        await rig.write(df, b"new")
        assert rig.ledger.closed(df, wrote=True)
        assert rig.journal.deletes() == [] and df.claimed is None
        rig.ledger.last_close(df)
        await rig.ledger.flush(["f"])
        assert await rig.store.read("f") == b"new" and rig.ledger.conflicts == 0


# -- directories and symlinks ----------------------------------------------------------------------


async def test_a_new_directory_puts_its_marker(local_zone: ZoneConfig, tmp_path: Path) -> None:
    """created_entry of a directory: Kind.DIRECTORY, journaled at once, marker `d/` put."""
    async with running(local_zone, tmp_path / "cache") as rig:
        meta = file_meta(0o750, st.S_IFDIR)
        df = await rig.ledger.created_entry(DirtyRow("d", None, 0, meta, None, 1))
        assert df.kind is Kind.DIRECTORY and df.queue_key == "d/"
        assert "d" in rig.journaled() and rig.ledger.is_queued("d/")
        await rig.ledger.flush(["d/"])
        marker = await rig.store.head("d/")
        assert marker is not None and marker.size == 0
        assert marker.content_type == keys.DIR_CONTENT_TYPE
        assert marker.metadata == keys.encode_meta(meta)
        assert rig.ledger.row("d") is None and rig.journaled() == {}
        memo = rig.journal.get_object("d/")
        assert memo is not None and memo.meta == meta


async def test_a_new_symlink_puts_its_target(local_zone: ZoneConfig, tmp_path: Path) -> None:
    """created_entry of a symlink: Kind.SYMLINK, its body the target."""
    async with running(local_zone, tmp_path / "cache") as rig:
        body = b"../somewhere/else"
        staging = rig.blobs.new_staging()
        Path(staging).write_bytes(body)
        meta = file_meta(0o777, st.S_IFLNK)
        row = DirtyRow("l", rig.blobs.relpath(staging), len(body), meta, None, 1)
        df = await rig.ledger.created_entry(row)
        assert df.kind is Kind.SYMLINK and "l" in rig.journaled()
        await rig.ledger.flush(["l"])
        info = await rig.store.head("l")
        assert info is not None and info.metadata is not None
        assert int(info.metadata["mode"]) == meta.mode
        assert await rig.store.read("l") == body
        assert rig.ledger.row("l") is None and rig.journaled() == {}


async def test_a_directory_made_over_its_pending_delete_replaces_any_object(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """rmdir then mkdir: the marker's delete is claimed, and the marker put unconditionally."""
    async with running(local_zone, tmp_path / "cache") as rig:
        meta = file_meta(0o755, st.S_IFDIR)
        await rig.ledger.created_entry(DirtyRow("d", None, 0, meta, None, 1))
        await rig.ledger.flush(["d/"])
        await rig.ledger.removed("d", is_dir=True, etag=None)
        assert rig.journal.deletes() == [("d/", None)]
        df = await rig.ledger.created_entry(DirtyRow("d", None, 0, meta, None, 1))
        assert df.row.base_etag == ANY_OBJECT and rig.journal.deletes() == []
        await rig.ledger.flush(["d/"])
        assert await rig.store.keys() == {"d/"} and rig.ledger.count == 0


# -- restart ---------------------------------------------------------------------------------------


async def test_journaled_rows_survive_a_restart_and_unclosed_files_do_not(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """A new ledger on the same cache dir: journaled rows back, with kinds from the journal;
    staging files no row names removed."""
    cache = tmp_path / "cache"
    async with running(local_zone, cache) as rig:
        kept = await rig.new_file("kept", b"journaled bytes")
        rig.ledger.last_close(kept)
        info = await rig.uploaded("clean", b"clean bytes")
        rig.ledger.metadata_changed("clean", file_meta(0o600), size=info.size, etag=info.etag)
        staging, fd = rig.blobs.open_new_staging()
        os.close(fd)
        unclosed = await rig.ledger.created("open", rig.blobs.relpath(staging), file_meta(),
                                            None, False)
        await rig.write(unclosed, b"never acknowledged")
        stray = rig.blobs.new_staging()
        kept_data = rig.blobs.abspath(kept.row.data or "")
    async with running(local_zone, cache) as rig:
        assert sorted(rig.journaled()) == ["clean", "kept"]
        row = rig.ledger.row("kept")
        assert row is not None and row.kind is Kind.BYTES and row.persisted
        assert row.row.size == len(b"journaled bytes") and os.path.exists(kept_data)
        meta_row = rig.ledger.row("clean")
        assert meta_row is not None and meta_row.kind is Kind.METADATA
        assert meta_row.row.base_etag == info.etag
        assert rig.ledger.row("open") is None
        assert not os.path.exists(staging) and not os.path.exists(stray)
        assert rig.ledger.requeue() == 2
        await rig.ledger.drain()
        assert await rig.store.read("kept") == b"journaled bytes"
        clean = await rig.store.head("clean")
        assert clean is not None and clean.metadata is not None
        assert int(clean.metadata["mode"]) == st.S_IFREG | 0o600
        assert rig.ledger.count == 0 and rig.journaled() == {}


# -- backpressure ----------------------------------------------------------------------------------


async def test_a_write_past_cache_size_waits_for_closed_files_to_upload(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """wait_for_room uploads closed files at once (not after the delay) and returns."""
    async with running(local_zone, tmp_path / "cache", cache_size=10) as rig:
        first = await rig.new_file("first", b"12345678")
        rig.ledger.last_close(first)
        assert rig.ledger.dirty_bytes() == 8
        second = await rig.new_file("second")
        await rig.write(second, b"abcdefgh")  # 16 bytes would pass 10: "first" goes up
        assert await rig.store.read("first") == b"12345678"
        assert rig.ledger.row("first") is None and rig.ledger.dirty_bytes() == 8
        assert await rig.store.head("second") is None  # still open: not uploaded


async def test_open_files_alone_over_cache_size_do_not_block_a_write(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """When only files open for writing hold the budget, the write goes on (no deadlock)."""
    async with running(local_zone, tmp_path / "cache", cache_size=10) as rig:
        first = await rig.new_file("first", b"12345678")
        second = await rig.new_file("second")
        await rig.write(second, b"abcdefgh")
        assert rig.ledger.dirty_bytes() == 16
        assert rig.ledger.row("first") is first and await rig.store.keys() == set()


# -- a large file written in one pass -------------------------------------------------------------


def big_data(size: int = STREAMED_OVER + (1 << 20)) -> bytes:
    return hashlib.sha256(b"seed").digest() * (size // 32)


async def write_in_pieces(rig: Rig, df: DirtyFile, data: bytes, piece: int = 1 << 20) -> None:
    for start in range(0, len(data), piece):
        await rig.write(df, data[start:start + piece], start)


async def test_a_large_file_written_in_one_pass_uploads_soon_after_close_without_a_rehash(
        local_zone: ZoneConfig, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Written from its start to its end, over STREAMED_OVER: uploaded STREAMED_DELAY after
    its last close (the write-back delay is an hour here), with the content IDs taken as it
    was written: the upload does not hash the file again."""
    rehashed: list[str] = []
    real_hash_file = upload.hash_file

    def counting_hash_file(path: str) -> Digest:
        rehashed.append(path)
        return real_hash_file(path)

    monkeypatch.setattr(upload, "hash_file", counting_hash_file)
    data = big_data()
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("big")
        await write_in_pieces(rig, df, data)
        assert rig.ledger.closed(df, wrote=True)
        rig.ledger.last_close(df)
        with trio.fail_after(DRAIN_TIMEOUT):
            while rig.ledger.row("big") is not None:
                await trio.sleep(0.01)
        info = await rig.store.head("big")
        assert info is not None and info.metadata is not None
        assert info.metadata[keys.SHA256_KEY] == hashlib.sha256(data).hexdigest()
        assert info.metadata[keys.SHA1_KEY] == hashlib.sha1(data).hexdigest()
        assert await rig.store.read("big") == data
        assert rehashed == []


async def test_a_large_file_written_out_of_its_order_waits_for_the_delay_and_is_hashed_whole(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """A large file whose writes went back over written bytes is not "written in one pass":
    it waits for the write-back delay like any other, and its content IDs are those of its
    final bytes."""
    data = bytearray(big_data())
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("big")
        await write_in_pieces(rig, df, bytes(data))
        data[5:10] = b"AGAIN"
        await rig.write(df, b"AGAIN", 5)
        assert rig.ledger.closed(df, wrote=True)
        rig.ledger.last_close(df)
        await trio.sleep(1.0)  # many times STREAMED_DELAY
        assert await rig.store.head("big") is None and rig.ledger.is_queued("big")
        await rig.ledger.flush(["big"])
        info = await rig.store.head("big")
        assert info is not None and info.metadata is not None
        assert info.metadata[keys.SHA256_KEY] == hashlib.sha256(data).hexdigest()
        assert await rig.store.read("big") == bytes(data)


async def test_a_truncated_and_rewritten_file_gets_the_digest_of_its_new_bytes(
        local_zone: ZoneConfig, tmp_path: Path) -> None:
    """O_TRUNC of a file written in one pass starts its digest over: the new bytes' IDs."""
    first, second = big_data(), big_data()[::-1]
    async with running(local_zone, tmp_path / "cache") as rig:
        df = await rig.new_file("big")
        await write_in_pieces(rig, df, first)
        assert df.row.data is not None
        os.truncate(rig.blobs.abspath(df.row.data), 0)
        rig.ledger.truncated(df, 0)
        await write_in_pieces(rig, df, second)
        assert rig.ledger.closed(df, wrote=True)
        rig.ledger.last_close(df)
        await rig.ledger.flush(["big"])
        info = await rig.store.head("big")
        assert info is not None and info.metadata is not None
        assert info.metadata[keys.SHA256_KEY] == hashlib.sha256(second).hexdigest()
        assert info.metadata[keys.SHA1_KEY] == hashlib.sha1(second).hexdigest()
