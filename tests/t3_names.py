"""Names through the path-based core (`Vfs`): directories, symlinks, unlink, and the names
the store and POSIX allow.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone). Each test checks what a user would see (bytes and headers in the bucket,
listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import os
import stat as st
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
import trio
from conftest import QUIRK_LONG_NAMES, seaweedfs_quirk
from vfs_harness import (
    GID,
    HOLD,
    UID,
    Env,
    OutageRemote,
    check_invariants,
    close,
    drain,
    marker_metadata,
    names,
    read_file,
    requests,
    write_all,
    write_file,
)

from zonefs.common.errors import (
    Exists,
    InvalidArgument,
    IsADirectory,
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    PreconditionFailed,
    ReadOnly,
    RemoteError,
)
from zonefs.remote import open_remote

# -- directories, symlinks, unlink ---------------------------------------------------------------


@pytest.mark.unversioned_on_moto
async def test_mkdir_and_rmdir(env: Env) -> None:
    # A pending mkdir (exclusive on this mount only): its marker is put by write-back.
    async with env.vfs(writeback_delay=HOLD, exclusive_creates="local") as vfs:
        s = await vfs.mkdir("d", 0o750, UID, GID)
        assert s.is_dir
        assert (await vfs.stat("d")).state == "dirty"  # journaled; the marker is put later
        assert await env.store.head("d/") is None
        await drain(vfs)
        info = await env.store.head("d/")
        assert info is not None and info.size == 0
        if vfs.capabilities.dir_markers == "kept":  # else the store drops it (SeaweedFS)
            assert info.content_type == "application/x-directory"
        md = await marker_metadata(vfs, env.store, "d")
        assert md["mode"] == str(st.S_IFDIR | 0o750)
        assert (md["uid"], md["gid"]) == (str(UID), str(GID))
        assert (await vfs.stat("d")).meta.mode == st.S_IFDIR | 0o750
        assert names(await vfs.listdir("")) == ["d"]
        assert await vfs.listdir("d") == []

        with pytest.raises(Exists):
            await vfs.mkdir("d", 0o755, UID, GID)
        with pytest.raises(NotFound):
            await vfs.mkdir("missing/sub", 0o755, UID, GID)
        await vfs.mkdir("d/e", 0o755, UID, GID)
        with pytest.raises(NotEmpty):
            await vfs.rmdir("d")
        await vfs.rmdir("d/e")
        assert await env.store.head("d/e/") is None

        await write_file(vfs, "d/pending", b"p")  # not uploaded yet, still counts
        with pytest.raises(NotEmpty):
            await vfs.rmdir("d")
        with pytest.raises(NotADirectory):
            await vfs.rmdir("d/pending")
        with pytest.raises(NotADirectory):
            await vfs.mkdir("d/pending/x", 0o755, UID, GID)
        with pytest.raises(NotADirectory):
            await vfs.listdir("d/pending")
        with pytest.raises(IsADirectory):
            await vfs.unlink("d")
        with pytest.raises(IsADirectory):
            await vfs.open("d", os.O_RDONLY)
        await vfs.unlink("d/pending")
        await vfs.rmdir("d")
        with pytest.raises(NotFound):
            await vfs.stat("d")
        with pytest.raises(NotFound):
            await vfs.listdir("d")
        assert names(await vfs.listdir("")) == []
        assert [k for k, _ in vfs.journal.deletes()] == ["d/"]  # pending, journaled
        await drain(vfs)
        assert await env.store.keys() == set()
        with pytest.raises(NotFound):
            await vfs.stat("d")
        with pytest.raises(NotPermitted):
            await vfs.rmdir("")
        await check_invariants(vfs)


async def test_rmdir_of_directory_with_uploaded_file(env: Env) -> None:
    async with env.vfs() as vfs:
        await vfs.mkdir("e", 0o755, UID, GID)
        await write_file(vfs, "e/x", b"x")
        await drain(vfs)
        with pytest.raises(NotEmpty):
            await vfs.rmdir("e")
        assert await env.store.read("e/x") == b"x"
        await check_invariants(vfs)


async def test_symlink_and_readlink(env: Env, tmp_path: Path) -> None:
    target = "some dir/target file ü"
    async with env.vfs() as vfs:
        s = await vfs.symlink("link", target, UID, GID)
        assert st.S_ISLNK(s.meta.mode) and s.size == len(target.encode())
        assert await vfs.readlink("link") == target
        assert st.S_ISLNK(dict(await vfs.listdir(""))["link"].meta.mode)  # pending, shown
        await drain(vfs)
        assert await env.store.read("link") == target.encode()
        info = await env.store.head("link")
        assert info is not None and info.metadata is not None
        assert int(info.metadata["mode"]) == st.S_IFLNK | 0o777
        listing = dict(await vfs.listdir(""))
        assert st.S_ISLNK(listing["link"].meta.mode)
        with pytest.raises(NotSupported):
            await vfs.open("link", os.O_RDONLY)
        with pytest.raises(Exists):
            await vfs.symlink("link", "elsewhere", UID, GID)
        await write_file(vfs, "plain", b"p")
        with pytest.raises(InvalidArgument):
            await vfs.readlink("plain")
        await check_invariants(vfs)
    # A second machine with an empty cache sees a symlink, not a file.
    other = replace(env, cache_dir=tmp_path / "other-cache")
    other.cache_dir.mkdir()
    async with other.vfs() as vfs:
        assert st.S_ISLNK((await vfs.stat("link")).meta.mode)
        assert await vfs.readlink("link") == target
        await check_invariants(vfs)


async def test_unlink_of_pending_file_leaves_no_object(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "p", os.urandom(1000))
        assert [r.path for r in vfs.journal.dirty_rows()] == ["p"]
        await vfs.unlink("p")
        with pytest.raises(NotFound):
            await vfs.stat("p")
        assert await vfs.listdir("") == []
        assert list(vfs.journal.dirty_rows()) == []
        await drain(vfs)
        assert await env.store.keys() == set()
        assert requests(vfs, "put") == 0
        with pytest.raises(NotFound):
            await vfs.unlink("p")
        await check_invariants(vfs)


async def test_unlink_of_uploaded_file_is_a_pending_delete(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "u", b"bytes")
        await drain(vfs)
        info = await env.store.head("u")
        assert info is not None
        await vfs.unlink("u")
        # Journaled and hidden at once; the store hears of it through the write-back queue.
        assert vfs.journal.deletes() == [("u", info.etag)]
        with pytest.raises(NotFound):
            await vfs.stat("u")
        assert await vfs.listdir("") == []
        assert await env.store.head("u") is not None
        await drain(vfs)
        assert await env.store.head("u") is None
        with pytest.raises(NotFound):
            await vfs.stat("u")
        await check_invariants(vfs)


async def test_open_file_whose_name_is_gone_is_served_by_its_handles(env: Env) -> None:
    """unlink, and a rename over it, while open: stat_open and setattr_open work on the
    handles' own state, and nothing of the file reaches the journal or the store."""
    await env.store.put("r", b"read me")
    async with env.vfs() as vfs:
        reader = await vfs.open("r", os.O_RDONLY)
        writer, _ = await vfs.create("w", 0o640, UID, GID)
        await write_all(vfs, writer, b"0123456789")
        await vfs.flush(writer)  # journaled: the unlink must take the row with it
        second = await vfs.open("w", os.O_RDWR)
        await vfs.unlink("w")
        await write_file(vfs, "x", b"replacement")
        await vfs.rename("x", "r")
        s = vfs.stat_open([reader])
        assert (s.size, st.S_IMODE(s.meta.mode)) == (7, 0o644)
        s = vfs.stat_open([reader, writer, second])  # a writer's state wins
        assert (s.size, st.S_IMODE(s.meta.mode), s.meta.uid) == (10, 0o640, UID)
        s = vfs.setattr_open([writer, second], size=4, handle=second)
        assert s.size == 4 and await vfs.read(writer, 0, 100) == b"0123"
        assert await vfs.write(writer, 6, b"ab") == 2
        s = vfs.setattr_open([writer, second], mode=0o600, mtime_ns=5)
        assert (s.size, st.S_IMODE(s.meta.mode), s.meta.mtime_ns) == (8, 0o600, 5)
        assert await vfs.read(second, 0, 100) == b"0123\0\0ab"
        vfs.setattr_open([reader], uid=UID + 1)
        assert vfs.stat_open([reader]).meta.uid == UID + 1
        with pytest.raises(InvalidArgument):
            vfs.setattr_open([reader], size=0)
        assert await vfs.read(reader, 0, 100) == b"read me"
        await vfs.fsync(writer)
        for handle in (writer, second):
            await close(vfs, handle)
        await vfs.release(reader)
        assert [r.path for r in vfs.journal.dirty_rows()] in ([], ["r"])
        await drain(vfs)
        assert await env.store.keys() == {"r"}
        assert await env.store.read("r") == b"replacement"
        assert (await vfs.stat("r")).size == 11
        await check_invariants(vfs)


async def test_unlink_of_locally_modified_remote_file(env: Env) -> None:
    await env.store.put("f", b"remote")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle = await vfs.open("f", os.O_RDWR)
        await vfs.write(handle, 0, b"REMOTE")
        await close(vfs, handle)
        await vfs.unlink("f")
        await drain(vfs)
        assert await env.store.head("f") is None, "the pending upload must not resurrect it"
        await check_invariants(vfs)


# -- names --------------------------------------------------------------------------------------


@seaweedfs_quirk(QUIRK_LONG_NAMES, run=False)
async def test_names_over_255_bytes_are_refused(env: Env) -> None:
    """NAME_MAX, or less where the probe found the store takes less (versioned SeaweedFS)."""
    long_ascii, long_utf8 = "x" * 256, "é" * 128  # 256 bytes each
    async with env.vfs() as vfs:
        limit = vfs.capabilities.max_name_bytes
        await write_file(vfs, "ok", b"o")
        for name in (long_ascii, long_utf8, "z" * (limit + 1)):
            with pytest.raises(NameTooLong):
                await vfs.create(name, 0o644, UID, GID)
            with pytest.raises(NameTooLong):
                await vfs.mkdir(name, 0o755, UID, GID)
            with pytest.raises(NameTooLong):
                await vfs.symlink(name, "t", UID, GID)
            with pytest.raises(NameTooLong):
                await vfs.rename("ok", name)
        await write_file(vfs, "y" * limit, b"max")  # exactly the limit is fine
        await drain(vfs)
        assert await env.store.keys() == {"ok", "y" * limit}
        await check_invariants(vfs)


async def test_reserved_zonefs_dir_is_virtual_and_read_only(env: Env) -> None:
    await env.store.put(".zonefs/x", b"not for the mount")
    await env.store.put("a", b"a")
    async with env.vfs() as vfs:
        assert names(await vfs.listdir("")) == ["a"]
        assert (await vfs.stat(".zonefs")).is_dir
        assert names(await vfs.listdir(".zonefs")) == ["versions", "at"]
        with pytest.raises(NotFound):
            await vfs.stat(".zonefs/x")
        # A bucket key under .zonefs/ is not history either.
        assert names(await vfs.listdir(".zonefs/versions")) == ["a"]
        for attempt in (
            vfs.create(".zonefs/y", 0o644, UID, GID),
            vfs.create(".zonefs", 0o644, UID, GID),
            vfs.mkdir(".zonefs", 0o755, UID, GID),
            vfs.mkdir(".zonefs/d", 0o755, UID, GID),
            vfs.symlink(".zonefs/l", "t", UID, GID),
            vfs.unlink(".zonefs/x"),
            vfs.rmdir(".zonefs"),
            vfs.rename("a", ".zonefs"),
            vfs.rename("a", ".zonefs/a"),
            vfs.rename(".zonefs", "z"),
            vfs.setattr(".zonefs", mode=0o700),
            vfs.open(".zonefs/x", os.O_WRONLY),
        ):
            with pytest.raises(ReadOnly):
                await attempt
        # Only the top-level name is reserved.
        await vfs.mkdir("sub", 0o755, UID, GID)
        await write_file(vfs, "sub/.zonefs", b"ordinary")
        await drain(vfs)
        assert await env.store.read("sub/.zonefs") == b"ordinary"
        assert await env.store.read(".zonefs/x") == b"not for the mount"
        assert await env.store.read("a") == b"a"
        await check_invariants(vfs)


@pytest.mark.expect_log("is not a valid file name; hidden")
async def test_keys_that_are_not_valid_names_are_hidden(env: Env) -> None:
    hostile = ["a//b", "x" * 300, "dir/" + "y" * 256]
    if env.kind == "local":  # HTTP stacks may normalise dot segments before S3 sees them
        hostile += ["dots/./f", "dots/../g"]
    for key in hostile:
        await env.store.put(key, b"hidden")
    await env.store.put("ok", b"fine")
    await env.store.put("dir/fine", b"fine too")
    # A store that rewrites `a//b` as `a/b` (SeaweedFS) holds a valid name there.
    rewritten = "a//b" not in await env.store.keys()
    async with env.vfs() as vfs:
        root = names(await vfs.listdir(""))
        assert "x" * 300 not in root
        assert {"a", "dir", "ok"} <= set(root)
        assert names(await vfs.listdir("a")) == (["b"] if rewritten else [])
        assert names(await vfs.listdir("dir")) == ["fine"]
        if env.kind == "local":
            assert await vfs.listdir("dots") == []
        assert await read_file(vfs, "ok") == b"fine"
        assert await read_file(vfs, "dir/fine") == b"fine too"
        await check_invariants(vfs)


@pytest.mark.expect_log("key 'both' is both a file and a directory")
async def test_key_that_is_file_and_prefix_shows_the_directory(env: Env) -> None:
    await env.store.put("both", b"file body")
    await env.store.put("both/inner", b"in")
    async with env.vfs() as vfs:
        listing = dict(await vfs.listdir(""))
        assert list(listing) == ["both"] and listing["both"].is_dir
        assert (await vfs.stat("both")).is_dir
        assert names(await vfs.listdir("both")) == ["inner"]
        assert await read_file(vfs, "both/inner") == b"in"
        await check_invariants(vfs)


@pytest.mark.parametrize("kind", ["file", "dir"])
async def test_o_excl_and_mkdir_are_exclusive_across_mounts(env: Env, tmp_path: Path,
                                                            kind: str) -> None:
    """Two mounts of one zone (two cache dirs) race for the same names: `create(O_EXCL)` and
    `mkdir` take the name in the store before they return (`If-None-Match: *`), so exactly one
    of each race wins and the other gets EEXIST. Other creates stay pending (no request)."""
    other = replace(env, cache_dir=tmp_path / "other-cache")
    other.cache_dir.mkdir()
    async with env.vfs(writeback_delay=HOLD) as a, other.vfs(writeback_delay=HOLD) as b:
        if not (a.exclusive.dirs_enforced if kind == "dir" else a.exclusive.enforced):
            pytest.skip("not exclusive across mounts on this store (the probe's answers)")
        won: list[str] = []

        async def take(vfs: Any, who: str, kind: str, name: str) -> None:
            try:
                if kind == "file":
                    handle, _ = await vfs.create(name, 0o644, UID, GID, exclusive=True)
                    await vfs.write(handle, 0, who.encode())
                    await close(vfs, handle)
                else:
                    await vfs.mkdir(name, 0o755, UID, GID)
                won.append(who)
            except Exists:
                pass

        for i in range(10):
            name = f"lock{i}" if kind == "file" else f"dir{i}"
            won.clear()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(take, a, "a", kind, name)
                nursery.start_soon(take, b, "b", kind, name)
            assert len(won) == 1, (kind, name, won)
            key = f"{name}/" if kind == "dir" else name
            assert await env.store.head(key) is not None, "in the store before it returned"
        if kind == "dir":
            return
        # The winner's bytes replace the empty object it took the name with.
        await drain(a)
        await drain(b)
        holder = (await env.store.read("lock0")).decode()
        assert holder in ("a", "b")
        # A lock released here (its delete still pending) can be taken again at once.
        loser, winner = (b, a) if holder == "a" else (a, b)
        await winner.unlink("lock0")
        handle, _ = await winner.create("lock0", 0o644, UID, GID, exclusive=True)
        await close(winner, handle)
        with pytest.raises(Exists):
            await loser.create("lock0", 0o644, UID, GID, exclusive=True)
        # Without O_EXCL a create stays pending: nothing is sent before the write-back.
        before = dict(a.remote.requests.counts)
        await write_file(a, "plain", b"pending")
        assert a.remote.requests.counts.get("put", 0) == before.get("put", 0)
        await check_invariants(a)


async def test_exclusive_creates_stay_pending_while_the_store_is_down(env: Env) -> None:
    """While the store cannot be reached, `mkdir` and `create(O_EXCL)` work as any create does
    (exclusive on this mount only) and reach the store once it is back."""
    remote = OutageRemote(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        remote.down = True
        await vfs.mkdir("d", 0o755, UID, GID)
        handle, _ = await vfs.create("d/lock", 0o644, UID, GID, exclusive=True)
        await vfs.write(handle, 0, b"held")
        await close(vfs, handle)
        assert (await vfs.stat("d")).state == "dirty"
        remote.down = False
        await drain(vfs)
        assert await env.store.keys() == {"d/", "d/lock"}
        assert await env.store.read("d/lock") == b"held"
        await check_invariants(vfs)


class _LostAnswers(OutageRemote):
    """A store whose answer to a PUT is lost after the PUT landed: `lose` says how, once
    ("reset": a connection reset; "retried": a retry of it answered 412)."""

    def __init__(self, inner: Any) -> None:
        super().__init__(inner)
        self.lose: str | None = None

    def _call(self, kind: str, fn: Any, *args: Any, **kwargs: Any) -> Any:
        result = super()._call(kind, fn, *args, **kwargs)
        if kind == "put" and self.lose is not None:
            lose, self.lose = self.lose, None
            if lose == "reset":
                raise RemoteError("put: connection reset by peer (test)", transient=True)
            raise PreconditionFailed("put: 412 to a retry of a PUT that landed (test)")
        return result


@pytest.mark.parametrize("lose", ["reset", "retried"])
async def test_an_exclusive_create_whose_answer_is_lost_is_still_this_mounts(
        env: Env, lose: str) -> None:
    """The conditional create landed but its answer did not come (a reset), or a retry of it
    was refused (412): the object carries this create's token, so the create succeeded; no
    EEXIST for the mount that holds the name, and no lock left behind that nobody holds."""
    remote = _LostAnswers(open_remote(env.zone))
    async with env.vfs(remote=remote, writeback_delay=HOLD) as vfs:
        if not vfs.exclusive.enforced:
            pytest.skip("the store does not enforce conditional creates (the probe's answer)")
        # A marker's token is readable only where the store keeps a marker's headers: where
        # it drops them (SeaweedFS), a lost answer to a mkdir cannot be told from another
        # mount's mkdir, and is EEXIST (never two holders).
        tokens_on_markers = vfs.exclusive.dirs_enforced
        remote.lose = lose if tokens_on_markers else None
        await vfs.mkdir("lockdir", 0o755, UID, GID)
        remote.lose = lose
        handle, _ = await vfs.create("lock", 0o644, UID, GID, exclusive=True)
        await vfs.write(handle, 0, b"held")
        await close(vfs, handle)
        assert vfs.exclusive.made == (2 if tokens_on_markers else 1)
        await drain(vfs)
        assert await env.store.read("lock") == b"held"
        await vfs.unlink("lock")
        await vfs.rmdir("lockdir")
        await drain(vfs)
        assert await env.store.keys() == set()
        await check_invariants(vfs)
