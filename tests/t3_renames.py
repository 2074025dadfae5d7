"""Renames through the path-based core (`Vfs`): files and directories, clean and pending,
and renames cut short by a crash.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone). Each test checks what a user would see (bytes and headers in the bucket,
listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import logging
import os
import stat as st
from collections.abc import Mapping

import pytest
import trio
from conftest import QUIRK_MARKER_RACE, seaweedfs_quirk
from vfs_harness import (
    GID,
    HOLD,
    UID,
    Env,
    SlowAckRemote,
    Store,
    check_invariants,
    close,
    drain,
    names,
    read_file,
    requests,
    sha256,
    wait_until,
    write_all,
    write_file,
)

from zonefs.cache.journal import MOVE_COPY, MOVE_DELETE, Journal, Move
from zonefs.common.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NotADirectory,
    NotEmpty,
    NotFound,
    RemoteError,
)
from zonefs.core.vfs import RENAME_EXCHANGE, RENAME_NOREPLACE
from zonefs.remote import ObjectInfo, Remote, open_remote

# -- rename ---------------------------------------------------------------------------------------


async def test_rename_clean_file(env: Env) -> None:
    data = os.urandom(70_000)
    async with env.vfs() as vfs:
        await write_file(vfs, "a", data, mode=0o600, uid=UID, gid=GID)
        await drain(vfs)
        await vfs.rename("a", "b")
        await drain(vfs)  # the copy, then the delete
        assert await env.store.head("a") is None
        assert await env.store.read("b") == data
        info = await env.store.head("b")
        assert info is not None and info.metadata is not None
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        assert info.metadata["zonefs-sha256"] == sha256(data)
        with pytest.raises(NotFound):
            await vfs.stat("a")
        assert (await vfs.stat("b")).size == len(data)
        assert names(await vfs.listdir("")) == ["b"]
        assert await read_file(vfs, "b") == data
        await check_invariants(vfs)


async def test_a_renamed_clean_file_reaches_the_store_without_the_writeback_delay(
    env: Env,
) -> None:
    # There are no bytes to coalesce: the copy and the delete follow the rename at once, as
    # `mv` with any S3 tool would, even with a long writeback_delay.
    data = os.urandom(5_000)
    async with env.vfs(writeback_delay=60.0) as vfs:
        await write_file(vfs, "a", data)
        await drain(vfs)
        await vfs.rename("a", "b")

        async def moved() -> bool:
            return await env.store.keys() == {"b"}

        with trio.move_on_after(5):  # far below the 60 s delay
            while not await moved():
                await trio.sleep(0.05)
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == data
        await check_invariants(vfs)


async def test_rename_pending_file(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "a", b"pending bytes")
        await vfs.rename("a", "b")
        with pytest.raises(NotFound):
            await vfs.stat("a")
        assert (await vfs.stat("b")).size == len(b"pending bytes")
        assert names(await vfs.listdir("")) == ["b"]
        assert [r.path for r in vfs.journal.dirty_rows()] == ["b"]
        await drain(vfs)
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == b"pending bytes"
        await check_invariants(vfs)


async def test_rename_locally_modified_remote_file(env: Env) -> None:
    await env.store.put("a", b"old content")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle = await vfs.open("a", os.O_RDWR)
        await vfs.write(handle, 0, b"NEW")
        await close(vfs, handle)
        await vfs.rename("a", "b")
        assert requests(vfs, "copy") == requests(vfs, "delete") == 0  # all local: no request
        with pytest.raises(NotFound):
            await vfs.stat("a")
        await drain(vfs)
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == b"NEW content"
        await check_invariants(vfs)


async def test_rename_replaces_target(env: Env) -> None:
    await env.store.put("a", b"A")
    await env.store.put("b", b"B")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.rename("a", "b")
        assert await read_file(vfs, "b") == b"A"
        await drain(vfs)
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == b"A"
        await write_file(vfs, "c", b"pending C")  # a pending target is replaced too
        await vfs.rename("b", "c")
        assert await read_file(vfs, "c") == b"A"
        await drain(vfs)
        assert await env.store.keys() == {"c"}
        assert await env.store.read("c") == b"A"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_directory_tree_with_pending_files(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("d/sub", 0o755, UID, GID)
        await write_file(vfs, "d/x", b"uploaded x")
        await drain(vfs)
        await write_file(vfs, "d/sub/y", b"pending y")
        await write_file(vfs, "d/z", b"pending z")
        handle = await vfs.open("d/x", os.O_RDWR)  # uploaded, then changed locally
        await vfs.write(handle, 0, b"U")
        await close(vfs, handle)

        await vfs.rename("d", "e")
        with pytest.raises(NotFound):
            await vfs.stat("d")
        assert names(await vfs.listdir("")) == ["e"]
        assert names(await vfs.listdir("e")) == ["sub", "x", "z"]
        assert names(await vfs.listdir("e/sub")) == ["y"]
        # The directories' new times (files were created in them) moved with them, where the
        # store keeps a marker's headers (elsewhere the cache dir remembers them).
        dirs = ["e", "e/sub"] if vfs.capabilities.dir_markers == "kept" else []
        assert [r.path for r in vfs.journal.dirty_rows()] == [*dirs, "e/sub/y", "e/x", "e/z"]
        await drain(vfs)
        keys = await env.store.keys()
        assert not [k for k in keys if k.startswith("d/")], keys
        assert keys == {"e/", "e/sub/", "e/x", "e/sub/y", "e/z"}
        assert await env.store.read("e/x") == b"Uploaded x"
        assert await env.store.read("e/sub/y") == b"pending y"
        assert await env.store.read("e/z") == b"pending z"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_directory_that_exists_only_as_prefix(env: Env) -> None:
    await env.store.put("p/q/r", b"r")  # no directory markers at all
    async with env.vfs() as vfs:
        await vfs.rename("p", "n")
        assert names(await vfs.listdir("n/q")) == ["r"]
        keys = await env.store.keys()
        assert "p/q/r" not in keys and "n/q/r" in keys
        assert await env.store.read("n/q/r") == b"r"
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_directory_with_pending_chmod_inside(env: Env) -> None:
    data = b"keep these bytes"
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await write_file(vfs, "d/f", data, mode=0o644)
        await drain(vfs)
        await vfs.setattr("d/f", mode=0o600)  # pending metadata-only change
        await vfs.rename("d", "e")
        await drain(vfs, timeout=2.5)  # a retry comes within 2 s while draining
        assert await env.store.read("e/f") == data
        info = await env.store.head("e/f")
        assert info is not None and info.metadata is not None
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        assert not [k for k in await env.store.keys() if k.startswith("d/")]
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_directory_while_upload_is_acknowledged(env: Env) -> None:
    remote = SlowAckRemote(open_remote(env.zone), ack_delay=0.2)
    async with env.vfs(remote=remote, writeback_delay=0) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await write_file(vfs, "d/f", b"racing bytes")
        # The object is stored; the response is still on its way when the rename comes.
        await wait_until(remote.stored.is_set)
        assert "d/f" in vfs.ledger.writeback.in_flight_paths()
        await vfs.rename("d", "e")
        await drain(vfs)
        keys = await env.store.keys()
        assert not [k for k in keys if k.startswith("d/")], keys
        assert await env.store.read("e/f") == b"racing bytes"
        await check_invariants(vfs)


async def test_rename_file_while_its_upload_is_acknowledged(env: Env) -> None:
    remote = SlowAckRemote(open_remote(env.zone), ack_delay=0.2)
    async with env.vfs(remote=remote, writeback_delay=0) as vfs:
        await write_file(vfs, "a", b"racing bytes")
        await wait_until(remote.stored.is_set)
        await vfs.rename("a", "b")
        await drain(vfs)
        assert await env.store.keys() == {"b"}
        assert await env.store.read("b") == b"racing bytes"
        assert await read_file(vfs, "b") == b"racing bytes"
        await check_invariants(vfs)


@pytest.mark.parametrize("source", ["clean", "pending"])
async def test_rename_over_a_file_whose_upload_lands_meanwhile(env: Env, source: str) -> None:
    """`mv f x` over a new file `x` whose upload is acknowledged while the rename waits for
    it, then a write and `mv x y`: the object that upload left at `x` is deleted, not leaked
    (found by the random-operations test). `source` is `f` as a clean object (a pending
    copy) or with pending bytes (its row moves)."""
    await env.store.put("f", b"source bytes")
    remote = SlowAckRemote(open_remote(env.zone), ack_delay=0.3)
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        await vfs.stat("f")
        expected = b"source bytes"
        if source == "pending":
            handle = await vfs.open("f", os.O_WRONLY | os.O_APPEND)
            await write_all(vfs, handle, b"+", offset=len(expected))
            await close(vfs, handle)
            expected += b"+"
        await write_file(vfs, "x", b"first file")
        vfs.ledger.writeback.schedule("x", delay=0)
        await wait_until(remote.stored.is_set)  # stored; the answer is on its way
        await vfs.rename("f", "x")
        handle = await vfs.open("x", os.O_WRONLY)
        await write_all(vfs, handle, b"W", offset=3)
        await close(vfs, handle)
        await vfs.rename("x", "y")
        expected = expected[:3] + b"W" + expected[4:]
        assert await read_file(vfs, "y") == expected
        await drain(vfs)
        assert await env.store.keys() == {"y"}
        assert await env.store.read("y") == expected
        await check_invariants(vfs)


async def test_unlink_while_upload_is_acknowledged(env: Env) -> None:
    remote = SlowAckRemote(open_remote(env.zone), ack_delay=0.2)
    async with env.vfs(remote=remote, writeback_delay=0) as vfs:
        await write_file(vfs, "a", b"short-lived")
        await wait_until(remote.stored.is_set)
        await vfs.unlink("a")
        await drain(vfs)
        assert await env.store.keys() == set(), "the upload that landed late is deleted too"
        with pytest.raises(NotFound):
            await vfs.stat("a")
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_flags_and_refusals(env: Env) -> None:
    async with env.vfs() as vfs:
        await write_file(vfs, "a", b"A")
        await write_file(vfs, "b", b"B")
        await vfs.mkdir("dir", 0o755, UID, GID)
        await vfs.mkdir("full", 0o755, UID, GID)
        await write_file(vfs, "full/f", b"F")
        await vfs.mkdir("empty", 0o755, UID, GID)
        await drain(vfs)

        with pytest.raises(Exists):
            await vfs.rename("a", "b", RENAME_NOREPLACE)
        with pytest.raises(InvalidArgument):
            await vfs.rename("a", "b", RENAME_EXCHANGE)
        assert await env.store.read("a") == b"A" and await env.store.read("b") == b"B"
        await vfs.rename("a", "c", RENAME_NOREPLACE)
        assert await read_file(vfs, "c") == b"A"
        await drain(vfs)
        assert await env.store.read("c") == b"A"

        with pytest.raises(NotFound):
            await vfs.rename("missing", "x")
        with pytest.raises(InvalidArgument):
            await vfs.rename("dir", "dir/inside")
        with pytest.raises(IsADirectory):
            await vfs.rename("c", "dir")
        with pytest.raises(NotADirectory):
            await vfs.rename("dir", "c")
        with pytest.raises(NotEmpty):
            await vfs.rename("dir", "full")
        with pytest.raises(NotFound):
            await vfs.rename("c", "nowhere/c")
        await vfs.rename("dir", "empty")  # replacing an empty directory is allowed
        assert names(await vfs.listdir("")) == ["b", "c", "empty", "full"]
        await vfs.rename("c", "c")  # a no-op
        assert await read_file(vfs, "c") == b"A"
        await check_invariants(vfs)
        keys = await env.store.keys()
        assert keys == {"b", "c", "empty/", "full/", "full/f"}


# -- renames cut short by a crash ---------------------------------------------------------------


class CrashingRemote(SlowAckRemote):
    """Delegates to `inner` until `copies` copies (or `deletes` deletes) were made; then that
    call and every later copy or delete fail, the way a killed daemon stops: what it did stays
    done, nothing more happens. Uploads go through unchanged (ack_delay 0)."""

    def __init__(self, inner: Remote, *, copies: int | None = None,
                 deletes: int | None = None) -> None:
        super().__init__(inner, ack_delay=0)
        self.copies_left, self.deletes_left = copies, deletes
        self.dead = False

    def _copy(self, src_key: str, dst_key: str, metadata: Mapping[str, str] | None = None,
              content_type: str | None = None, src_version_id: str | None = None) -> ObjectInfo:
        if self.copies_left is not None:
            self.dead = self.dead or self.copies_left <= 0
            self.copies_left -= 1
        if self.dead:
            raise RemoteError(f"simulated crash before copying {src_key!r}")
        return super()._copy(src_key, dst_key, metadata, content_type, src_version_id)

    def _delete(self, key: str) -> None:
        if self.deletes_left is not None:
            self.dead = self.dead or self.deletes_left <= 0
            self.deletes_left -= 1
        if self.dead:
            raise RemoteError(f"simulated crash before deleting {key!r}")
        super()._delete(key)


async def _keys_under(store: Store, prefix: str) -> set[str]:
    return {k for k in await store.keys() if k.startswith(prefix)}


@pytest.mark.unversioned_on_moto
@seaweedfs_quirk(QUIRK_MARKER_RACE)
async def test_directory_rename_cut_short_resumes_at_next_start(
    env: Env, caplog: pytest.LogCaptureFixture,
) -> None:
    uploaded = {f"d/{i:02d}" if i % 3 else f"d/sub/{i:02d}": f"uploaded {i}\n".encode() * (i + 1)
                for i in range(14)}
    pending = {f"d/new{i}": f"pending {i}\n".encode() for i in range(4)}
    pending["d/sub/new4"] = b"pending in sub\n"
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.mkdir("d/sub", 0o750, UID, GID)
        for path, data in uploaded.items():
            await write_file(vfs, path, data)
        await write_file(vfs, "d/zz-chmod", b"mode changes, bytes stay")
        await write_file(vfs, "d/zz-edited", b"old bytes of an edited file")
        await drain(vfs)
        # Closed but not uploaded: new files, a local edit of an uploaded file, a chmod.
        for path, data in pending.items():
            await write_file(vfs, path, data)
        handle = await vfs.open("d/zz-edited", os.O_RDWR)
        await vfs.write(handle, 0, b"NEW")
        await close(vfs, handle)
        await vfs.setattr("d/zz-chmod", mode=0o600)
    before = await _keys_under(env.store, "d/")
    assert len(before) == 2 + len(uploaded) + 2

    crash = CrashingRemote(open_remote(env.zone), copies=6)
    async with env.vfs(remote=crash, writeback_delay=HOLD) as vfs:
        crash_caps = vfs.capabilities
        with pytest.raises(RemoteError, match="simulated crash"):
            await vfs.rename("d", "e")
    # Cut short: objects under both names, the plan in the journal. Six copies; no marker yet
    # where the store keeps a marker's headers: the directories' new times (files were
    # created in them) move as pending rows, and their markers are put by write-back.
    # Elsewhere the top marker is put anew at its place in the listing's order.
    kept = crash_caps.dir_markers == "kept"
    assert len(await _keys_under(env.store, "e/")) == 6 + (0 if kept else 1)
    assert await _keys_under(env.store, "d/") == before

    caplog.clear()
    caplog.set_level(logging.INFO, logger="zonefs.core.renames")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        # Resumed before the core answered: nothing under the old name, the copies done once.
        assert not await _keys_under(env.store, "d/")
        # Neither the edited file nor the two markers are copied.
        assert requests(vfs, "copy") == len(before) - 6 - 1 - 2
        assert [r for r in caplog.messages if "resuming the rename of 'd' to 'e'" in r]
        assert vfs.journal.renames() == []
        with pytest.raises(NotFound):
            await vfs.stat("d")
        # The directories' new times moved with them too (files were created in them).
        dirs = ["e", "e/sub"] if kept else []
        assert sorted(r.path for r in vfs.journal.dirty_rows()) == sorted(
            [*dirs, "e/zz-edited", *(p.replace("d/", "e/", 1) for p in pending)])
        assert await vfs.recover() == 0  # nothing left: running it again changes nothing
        assert names(await vfs.listdir("e")) == sorted(
            ["sub", "zz-chmod", "zz-edited",
             *(p[2:] for p in [*uploaded, *pending] if p.count("/") == 1)])
        await check_invariants(vfs)  # drains: the pending files go up under the new names
        # Each pending file uploaded once, and the markers `e/` and `e/sub/` put (with the new
        # times of the directories, where files were created; where the store drops a
        # marker's headers, `e/` was put by the rename and `e/sub/` is put now).
        assert requests(vfs, "put") == len(pending) + 1 + (2 if kept else 1), (
            "each pending file uploaded once")
    expected = {p.replace("d/", "e/", 1): data for p, data in {**uploaded, **pending}.items()}
    expected["e/zz-chmod"] = b"mode changes, bytes stay"
    expected["e/zz-edited"] = b"NEW bytes of an edited file"
    assert await env.store.keys() == {"e/", "e/sub/", *expected}
    for key, data in expected.items():
        assert await env.store.read(key) == data, key
    info = await env.store.head("e/zz-chmod")
    assert info is not None and info.metadata is not None
    assert info.metadata["mode"] == str(st.S_IFREG | 0o600), "the pending chmod survived"
    marker = await env.store.head("e/sub/")
    assert marker is not None and marker.metadata is not None
    if (await env.capabilities()).dir_markers == "kept":  # else the store drops it (SeaweedFS)
        assert marker.metadata["mode"] == str(st.S_IFDIR | 0o750)


async def test_file_rename_cut_between_copy_and_delete_resumes(env: Env) -> None:
    data = os.urandom(50_000)
    async with env.vfs() as vfs:
        await write_file(vfs, "a", data, mode=0o640)
        await drain(vfs)
    crash = CrashingRemote(open_remote(env.zone), deletes=0)
    async with env.vfs(remote=crash, writeback_delay=0) as vfs:
        await vfs.rename("a", "b")  # journaled: the copy, then the delete of `a`
        await wait_until(lambda: crash.dead)  # copied; the process dies at the delete
    assert await env.store.keys() == {"a", "b"}  # copied, not yet deleted
    # A delete the store refuses does not keep the core from starting; it stays journaled.
    async with env.vfs(remote=CrashingRemote(open_remote(env.zone), deletes=0)) as vfs:
        assert [k for k, _ in vfs.journal.deletes()] == ["a"]
        assert await read_file(vfs, "b") == data
    async with env.vfs() as vfs:
        await drain(vfs)
        assert await env.store.keys() == {"b"}
        assert requests(vfs, "copy") == 0, "the copy was recorded done: not repeated"
        assert await read_file(vfs, "b") == data
        with pytest.raises(NotFound):
            await vfs.stat("a")
        await check_invariants(vfs)
    assert await env.store.read("b") == data
    info = await env.store.head("b")
    assert info is not None and info.metadata is not None
    assert info.metadata["mode"] == str(st.S_IFREG | 0o640)
    assert info.metadata["zonefs-sha256"] == sha256(data)


async def test_rename_resume_is_idempotent_when_progress_was_lost(env: Env) -> None:
    """The journal lost its progress marks (power loss): a copy whose source is gone but whose
    destination exists counts as done, a delete of a missing key is fine."""
    await env.store.put("b", b"already moved")
    await env.store.put("c", b"not yet moved")
    journal = Journal(str(env.cache_dir / "journal.sqlite"))
    batch = journal.begin_rename("a", "b")
    journal.plan_moves(batch, [Move(MOVE_COPY, "a", "b", "etag-lost"),
                               Move(MOVE_COPY, "c", "d", None),
                               Move(MOVE_DELETE, "gone")])
    journal.seal_rename(batch)
    unsealed = journal.begin_rename("x", "y")  # cut short while listing: nothing moved
    journal.plan_moves(unsealed, [Move(MOVE_COPY, "c", "y", None)])
    journal.close()
    async with env.vfs() as vfs:
        assert vfs.journal.renames() == []
        await check_invariants(vfs)
    assert await env.store.keys() == {"b", "d"}
    assert await env.store.read("b") == b"already moved"
    assert await env.store.read("d") == b"not yet moved"
