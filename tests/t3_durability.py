"""Durability through the path-based core (`Vfs`): fsync, coalescing, in-flight rewrites,
the journal and restarts.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone). Each test checks what a user would see (bytes and headers in the bucket,
listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import os
import random
import stat as st
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import pytest
import trio
from vfs_harness import (
    DRAIN_TIMEOUT,
    GID,
    HOLD,
    UID,
    Env,
    MiB,
    SlowAckRemote,
    check_invariants,
    close,
    drain,
    names,
    read_file,
    requests,
    wait_until,
    write_all,
    write_file,
)

from zonefs.cache import journal as journal_module
from zonefs.cache.journal import Journal
from zonefs.common.errors import (
    Refused,
)
from zonefs.pending.rows import INLINE_MAX
from zonefs.remote import Remote, open_remote

if TYPE_CHECKING:
    from zonefs.core.values import Handle

# -- durability: fsync, coalescing, in-flight rewrites --------------------------------------------


async def test_fsync_returns_once_the_object_is_in_the_store(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle, _ = await vfs.create("f", 0o644, UID, GID)
        await vfs.write(handle, 0, b"first")
        await vfs.fsync(handle)
        assert await env.store.read("f") == b"first"
        await vfs.write(handle, 5, b" second")
        await vfs.fsync(handle)
        assert await env.store.read("f") == b"first second"
        puts = requests(vfs, "put")
        await vfs.fsync(handle)  # nothing new: nothing to send
        assert requests(vfs, "put") == puts
        await close(vfs, handle)
        assert requests(vfs, "put") == puts, "closing after fsync needs no second upload"
        reader = await vfs.open("f", os.O_RDONLY)
        await vfs.fsync(reader)  # a clean file: returns at once
        await vfs.release(reader)
        await check_invariants(vfs)
        assert await env.store.read("f") == b"first second"


async def test_rewrites_before_upload_coalesce(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "f", b"v1")
        for version in (b"v2", b"version 3"):
            handle = await vfs.open("f", os.O_WRONLY | os.O_TRUNC)
            await vfs.write(handle, 0, version)
            await close(vfs, handle)
        await vfs.setattr("f", mode=0o600)
        assert await drain(vfs) == 1
        assert requests(vfs, "put") == 1 and requests(vfs, "copy") == 0
        assert await env.store.read("f") == b"version 3"
        info = await env.store.head("f")
        assert info is not None and info.metadata is not None
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        await check_invariants(vfs)


@pytest.mark.parametrize("ack", ["cancelled", "late"])
@pytest.mark.parametrize("flags", [os.O_WRONLY | os.O_TRUNC, os.O_RDWR], ids=["trunc", "rdwr"])
async def test_reopen_for_write_during_upload_keeps_latest_bytes(
    env: Env, ack: str, flags: int,
) -> None:
    v1 = random.Random(4).randbytes(2 * MiB)
    v2 = b"second version"
    expected = v2 if flags & os.O_TRUNC else v2 + v1[len(v2):]
    remote = SlowAckRemote(open_remote(env.zone), 0.2) if ack == "late" else None
    async with env.vfs(remote=remote, writeback_delay=0) as vfs:
        await write_file(vfs, "f", v1)
        if remote is not None:
            await wait_until(remote.stored.is_set)  # v1 landed; its response has not
        else:
            await wait_until(lambda: "f" in vfs.ledger.writeback.in_flight_paths())
        handle = await vfs.open("f", flags)
        await vfs.write(handle, 0, v2)
        await close(vfs, handle)
        assert await read_file(vfs, "f") == expected
        await drain(vfs)
        assert await env.store.read("f") == expected
        assert (await vfs.stat("f")).size == len(expected)
        await check_invariants(vfs)


async def test_truncating_open_after_fsync_of_open_file(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        writer, _ = await vfs.create("f", 0o644, UID, GID)
        await vfs.write(writer, 0, b"hello")
        await vfs.fsync(writer)
        assert await env.store.read("f") == b"hello"
        truncator = await vfs.open("f", os.O_WRONLY | os.O_TRUNC)
        await close(vfs, truncator)
        await close(vfs, writer)
        await drain(vfs)
        assert (await vfs.stat("f")).size == 0
        assert await env.store.read("f") == b""
        await check_invariants(vfs)


# -- the journal and restarts ---------------------------------------------------------------------


async def test_close_journals_before_any_upload(env: Env) -> None:
    data = os.urandom(10_000)
    journal_path = str(env.cache_dir / "journal.sqlite")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle, _ = await vfs.create("f", 0o640, UID, GID)
        await write_all(vfs, handle, data)
        other = Journal(journal_path)
        try:
            assert list(other.dirty_rows()) == [], "nothing is acknowledged before close"
            await vfs.flush(handle)
            [row] = list(other.dirty_rows())  # a second connection: it is on disk
        finally:
            other.close()
        assert (row.path, row.size, row.meta.mode, row.meta.uid) == (
            "f", len(data), st.S_IFREG | 0o640, UID)
        assert row.data is not None
        assert Path(vfs.blobs.abspath(row.data)).read_bytes() == data
        await vfs.release(handle)
        assert await env.store.head("f") is None, "close does not wait for the upload"
        await check_invariants(vfs)
        assert await env.store.read("f") == data


async def test_restart_uploads_what_the_journal_holds(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "g", b"uploaded before the crash")
        await drain(vfs)
        await vfs.mkdir("d", 0o755, UID, GID)
        await write_file(vfs, "f1", b"one")
        await write_file(vfs, "d/f2", b"two" * 1000)
        await vfs.setattr("g", mode=0o600)
        unacked, _ = await vfs.create("never-closed", 0o644, UID, GID)
        await vfs.write(unacked, 0, b"lost, and that is allowed")
        os.close(unacked.fd)  # the process dies: no flush, no release, no drain
        # `d`: made in the store at once, or pending; then its new times (a file was made in
        # it) are pending too, unless the store drops a marker's headers (then remembered).
        made_at_once = vfs.exclusive.dirs_enforced
        kept = vfs.capabilities.dir_markers == "kept"
    assert await env.store.head("f1") is None
    other = Journal(str(env.cache_dir / "journal.sqlite"))
    try:
        d = ["d"] if kept or not made_at_once else []
        assert [r.path for r in other.dirty_rows()] == [*d, "d/f2", "f1", "g"]
    finally:
        other.close()

    async with env.vfs(writeback_delay=HOLD) as vfs:
        # Still pending after the restart, and visible meanwhile.
        assert (await vfs.stat("f1")).size == 3
        assert (await vfs.stat("d/f2")).state == "dirty"
        assert names(await vfs.listdir("")) == ["d", "f1", "g"]
        assert (await vfs.stat("g")).meta.mode == st.S_IFREG | 0o600
        await drain(vfs)
        assert await env.store.read("f1") == b"one"
        assert await env.store.read("d/f2") == b"two" * 1000
        assert await env.store.read("g") == b"uploaded before the crash"
        info = await env.store.head("g")
        assert info is not None and info.metadata is not None
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        assert await env.store.head("never-closed") is None
        await check_invariants(vfs)


async def test_rename_and_unlink_of_pending_files_survive_restart(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "old-name", b"moved")
        await vfs.rename("old-name", "new-name")
        await write_file(vfs, "gone", b"deleted before upload")
        await vfs.unlink("gone")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert names(await vfs.listdir("")) == ["new-name"]
        await drain(vfs)
        assert await env.store.keys() == {"new-name"}
        assert await env.store.read("new-name") == b"moved"
        await check_invariants(vfs)


async def test_create_over_pending_file_then_crash(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "f", b"acknowledged")
        handle, _ = await vfs.create("f", 0o644, UID, GID)
        await vfs.write(handle, 0, b"not yet")
        os.close(handle.fd)  # crash before close
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await check_invariants(vfs)  # drains: must not be stuck on a missing data file
        # The truncating create was done; bytes written after it but never closed may or may
        # not have survived, as on any filesystem. The file itself must not vanish.
        assert await env.store.read("f") in (b"acknowledged", b"", b"not yet")


@pytest.mark.expect_log("'f': its pending bytes are gone from the cache dir; dropped")
async def test_lost_finish_commit_does_not_wedge_the_next_mount(env: Env) -> None:
    journal_path = str(env.cache_dir / "journal.sqlite")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "f", b"uploaded, then the power went out")
        [row] = list(vfs.journal.dirty_rows())
        await drain(vfs)
        await check_invariants(vfs)
    # What the disk may hold after a power loss: the rename into blobs/ reached the disk, the
    # unsynced commit that dropped the dirty row did not.
    replay = Journal(journal_path)
    try:
        replay.put_dirty(row)
    finally:
        replay.close()
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await drain(vfs, timeout=2.5)
        assert await read_file(vfs, "f") == b"uploaded, then the power went out"
        assert await env.store.read("f") == b"uploaded, then the power went out"
        await check_invariants(vfs)


async def test_new_core_ignores_unjournaled_staging_files(env: Env) -> None:
    stray = env.cache_dir / "staging" / "stray"
    stray.parent.mkdir(mode=0o700, parents=True)
    stray.write_bytes(b"written but never closed")
    async with env.vfs() as vfs:
        assert not stray.exists()
        assert await vfs.listdir("") == []
        await check_invariants(vfs)
    assert await env.store.keys() == set()


async def test_status_and_statfs(env: Env) -> None:
    async with env.vfs() as vfs:
        assert vfs.statfs()["f_namemax"] == 255
        await write_file(vfs, "s", b"status")
        status = vfs.status()
        assert status["dirty_files"] == 1 and status["dirty_bytes"] == 6
        await check_invariants(vfs)
        status = vfs.status()
        assert (status["dirty_files"], status["dirty_bytes"], status["uploaded_bytes"]) == (0, 0, 6)
        assert status["writeback"]["uploaded"] == 1
        assert status["requests"].get("put") == 1


async def test_history_of_many_versions_is_paged(env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A long history lists through many small pages (S3 pages by 1,000), completely and in
    order; each version reads back byte-exact."""
    monkeypatch.setattr(Remote, "VERSION_PAGE", 7)
    bodies = [f"version {n}\n".encode() for n in range(23)]
    for body in bodies:
        await env.store.put("h/doc", body)
    await env.store.put("h/other", b"x")
    await env.store.put("h/sub/deeper", b"y")
    async with env.vfs() as vfs:
        assert names(await vfs.listdir(".zonefs/versions/h")) == ["doc", "other", "sub"]
        listing = await vfs.listdir(".zonefs/versions/h/doc")
        assert [s.size for _, s in listing] == [len(b) for b in reversed(bodies)]
        for (name, _), body in zip(listing[::5], list(reversed(bodies))[::5], strict=True):
            assert await read_file(vfs, f".zonefs/versions/h/doc/{name}") == body
        assert await read_file(vfs, ".zonefs/at/-0s/h/doc") == bodies[-1]
        await check_invariants(vfs)


@pytest.mark.parametrize("env", ["local"], indirect=True)
@pytest.mark.expect_log(r"write-back: the store refused '.*' \(KeyTooLongError: ")
async def test_a_refused_file_keeps_its_bytes_and_holds_nothing_up(env: Env) -> None:
    """The local zone refuses keys over 1024 bytes, as S3 does: such a file stays pending and
    readable, fsync fails with the refusal, a drain does not wait for it, and writes of other
    files do not wait for its bytes to leave the cache (cache_size)."""
    dirs = "/".join("d" * 199 + str(n) for n in range(4))
    long = f"{dirs}/{'€' * 85}"
    big = os.urandom(5000)
    async with env.vfs(cache_size=1000) as vfs:
        path = ""
        for part in dirs.split("/"):
            path = f"{path}/{part}".lstrip("/")
            await vfs.mkdir(path, 0o755, UID, GID)
        handle, _ = await vfs.create(long, 0o644, UID, GID)
        await write_all(vfs, handle, big)
        with pytest.raises(Refused, match="KeyTooLongError"):
            await vfs.fsync(handle)
        await close(vfs, handle)
        with trio.fail_after(10):
            await drain(vfs)
            await write_file(vfs, "other", os.urandom(3000))  # no wait for the refused bytes
            await drain(vfs)
        assert [r["path"] for r in vfs.refused()] == [long]
        assert vfs.status()["refused"][0]["answer"].startswith("KeyTooLongError: ")
        assert await read_file(vfs, long) == big
        assert await env.store.head("other") is not None
        assert await env.store.head(long) is None
        await vfs.unlink(long)  # given up: only its directory's new times are left pending
        assert vfs.refused() == []
        await drain(vfs)
        assert vfs.pending_count == 0


async def test_history_follows_this_mounts_changes_at_once(env: Env) -> None:
    """The history views and commands cache what they listed, yet every change this mount
    makes (an upload, a delete, an undelete, a restore) shows there at once: browsing the
    versions of a file and then deleting it must not make `undelete` say it is not deleted."""
    async with env.vfs() as vfs:
        await write_file(vfs, "doc", b"one")
        await drain(vfs)
        first = names(await vfs.listdir(".zonefs/versions/doc"))  # cached from now on
        assert len(first) == 1
        assert names(await vfs.listdir(".zonefs/versions")) == ["doc"]

        await vfs.unlink("doc")
        await drain(vfs)
        listing = names(await vfs.listdir(".zonefs/versions/doc"))
        assert [n.endswith(".deleted") for n in listing] == [True, False]
        assert await vfs.undelete("doc")
        assert await read_file(vfs, "doc") == b"one"
        assert names(await vfs.listdir(".zonefs/versions/doc")) == first

        await write_file(vfs, "doc", b"two")
        await vfs.mkdir("dir", 0o755, UID, GID)
        await write_file(vfs, "dir/new", b"n")
        await drain(vfs)
        assert len(await vfs.listdir(".zonefs/versions/doc")) == 2
        assert names(await vfs.listdir(".zonefs/versions")) == ["dir", "doc"]
        older = (await vfs.history.key_versions("doc"))[1]
        await vfs.restore("doc", version_id=older.version_id)
        assert len(await vfs.listdir(".zonefs/versions/doc")) == 3
        assert await read_file(vfs, "doc") == b"one"
        await check_invariants(vfs)


async def test_a_small_file_closed_before_a_power_loss_comes_back_from_the_journal(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """A small file's close journals its bytes with its row (one fsync) and does not fsync its
    staging file. After a reboot (another boot id) whatever the staging file became (emptied,
    gone) is written again from the journal: the closed bytes are uploaded. A larger file's
    staging file was fsync'ed at close and is used as it is."""
    small, large = os.urandom(5000), os.urandom(INLINE_MAX + 1)
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "small", small)
        await write_file(vfs, "gone", b"gone from the disk")
        await write_file(vfs, "large", large)
        staged = {p: vfs.blobs.abspath(vfs.ledger.row(p).row.data)  # type: ignore[union-attr]
                  for p in ("small", "gone", "large")}
    # A power loss before the kernel wrote the staging files back.
    os.truncate(staged["small"], 0)
    os.unlink(staged["gone"])
    monkeypatch.setattr(journal_module, "BOOT_ID", "another-boot")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert (await vfs.stat("small")).size == len(small)
        assert await read_file(vfs, "gone") == b"gone from the disk"
        await drain(vfs)
        assert await env.store.read("small") == small
        assert await env.store.read("gone") == b"gone from the disk"
        assert await env.store.read("large") == large
        await check_invariants(vfs)


async def test_within_one_boot_the_staging_file_is_the_truth(env: Env) -> None:
    """The process was killed, the machine did not reboot: the page cache kept every write,
    so a small file's staging file is used as it is (its writes after the last close too),
    not the bytes its close journaled; and a truncation by name is what is journaled."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "f", b"first close")
        handle = await vfs.open("f", os.O_WRONLY)
        await vfs.flush(handle)
        await vfs.write(handle, 0, b"FIRST")  # after the last close: allowed to be lost
        os.close(handle.fd)  # killed: no flush, no release
        await write_file(vfs, "t", b"0123456789")
        await vfs.setattr("t", size=4)
        vfs.journal.sync()
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await drain(vfs)
        assert await env.store.read("f") == b"FIRST close"
        assert await env.store.read("t") == b"0123"
        await check_invariants(vfs)


async def test_a_truncation_by_name_survives_a_power_loss(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """No close follows a truncation by name: it replaces the bytes journaled with the row."""
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "t", b"0123456789")
        await vfs.setattr("t", size=4)
        vfs.journal.sync()  # the attribute change's commit, fsync'ed within a second
        staged = vfs.blobs.abspath(vfs.ledger.row("t").row.data)  # type: ignore[union-attr]
    os.truncate(staged, 0)
    monkeypatch.setattr(journal_module, "BOOT_ID", "another-boot")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await drain(vfs)
        assert await env.store.read("t") == b"0123"
        await check_invariants(vfs)


async def test_closes_at_once_share_one_journal_fsync_and_each_waits_for_it(
        env: Env, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each close returns only once its row's commit is fsync'ed; closes that come while an
    fsync runs share the next one (group commit), not one each."""
    fsyncs: list[int] = []
    gate = threading.Event()
    real = Journal.fsync_wal

    def held_fsync(self: Journal) -> None:
        fsyncs.append(len(list(self.dirty_rows())))
        gate.wait(DRAIN_TIMEOUT)
        real(self)

    monkeypatch.setattr(Journal, "fsync_wal", held_fsync)
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handles = []
        for i in range(5):
            handle, _ = await vfs.create(f"f{i}", 0o644, UID, GID)
            await vfs.write(handle, 0, b"bytes of %d" % i)
            handles.append(handle)
        closed: list[str] = []

        async def flush(handle: Handle) -> None:
            await vfs.flush(handle)
            closed.append(handle.path)

        async with trio.open_nursery() as nursery:
            for handle in handles:
                nursery.start_soon(flush, handle)
            # Every close committed its row and waits: the first fsync is held.
            await wait_until(lambda: len(list(vfs.journal.dirty_rows())) == 5 and bool(fsyncs))
            await trio.sleep(0.05)
            assert closed == [], "no close returns before its commit is fsync'ed"
            gate.set()
        assert sorted(closed) == [f"f{i}" for i in range(5)]
        assert len(fsyncs) <= 2, fsyncs  # the first close's, then one for the four others
        for handle in handles:
            await vfs.release(handle)
        await check_invariants(vfs)
