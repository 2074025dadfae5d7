"""Writing through the path-based core (`Vfs`): new files, and existing files rewritten,
appended to, truncated.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone). Each test checks what a user would see (bytes and headers in the bucket,
listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import os
import stat as st

import pytest
from vfs_harness import (
    GID,
    HOLD,
    MTIME_RE,
    UID,
    Env,
    check_invariants,
    close,
    drain,
    marker_metadata,
    mtime_ns_of,
    names,
    read_file,
    requests,
    sha1,
    sha256,
    staging_files,
    write_all,
    write_file,
)

from zonefs.common.errors import (
    IsADirectory,
    NotPermitted,
)

# -- writing new files ----------------------------------------------------------------------------


async def test_create_write_close_uploads_bytes_and_headers(env: Env) -> None:
    data = os.urandom(300_000)
    async with env.vfs() as vfs:
        await write_file(vfs, "hello.bin", data, mode=0o640, uid=UID, gid=GID)
        assert await drain(vfs) == 1
        assert await env.store.read("hello.bin") == data
        info = await env.store.head("hello.bin")
        assert info is not None and info.metadata is not None
        md = info.metadata
        assert md["mode"] == str(st.S_IFREG | 0o640) == "33184"
        assert (md["uid"], md["gid"]) == (str(UID), str(GID))
        assert MTIME_RE.match(md["mtime"]), md["mtime"]
        assert md["zonefs-sha256"] == sha256(data)
        assert md["zonefs-sha1"] == sha1(data)
        if env.kind == "s3":  # the header names other S3 tools read (x-amz-meta-*)
            raw = env.store.raw_metadata("hello.bin")
            assert raw is not None
            assert {k: raw[k] for k in ("mode", "uid", "gid", "mtime")} == {
                k: md[k] for k in ("mode", "uid", "gid", "mtime")}
        s = await vfs.stat("hello.bin")
        assert (s.size, s.meta.mode, s.meta.uid, s.meta.gid, s.state) == (
            len(data), st.S_IFREG | 0o640, UID, GID, "clean")
        assert s.meta.mtime_ns == mtime_ns_of(md["mtime"])
        await check_invariants(vfs)


async def test_empty_file_and_unusual_names_round_trip(env: Env) -> None:
    # Percent, plus, spaces and non-ASCII are where S3 URL encoding goes wrong.
    files = {"empty": b"", "with space": b"1", "plus+sign": b"2", "per%cent": b"3",
             "ünïcødé-名前": b"4", "dot.": b"5", ".hidden": b"6"}
    async with env.vfs() as vfs:
        for name, data in files.items():
            await write_file(vfs, name, data)
        await drain(vfs)
        assert await env.store.keys() == set(files)
        for name, data in files.items():
            assert await env.store.read(name) == data
        assert names(await vfs.listdir("")) == sorted(files)
        assert (await vfs.stat("empty")).size == 0
        await check_invariants(vfs)


async def test_pending_files_are_visible_before_upload(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await write_file(vfs, "d/a", b"x" * 1000)
        await write_file(vfs, "top", b"y" * 10)
        assert await env.store.head("d/a") is None, "nothing uploads before the delay"
        s = await vfs.stat("d/a")
        assert (s.size, s.state, st.S_ISREG(s.meta.mode)) == (1000, "dirty", True)
        listing = dict(await vfs.listdir("d"))
        assert list(listing) == ["a"] and listing["a"].size == 1000
        root = dict(await vfs.listdir(""))
        assert sorted(root) == ["d", "top"]
        assert root["d"].is_dir and root["top"].size == 10
        assert await read_file(vfs, "d/a") == b"x" * 1000, "read your own pending writes"
        await check_invariants(vfs)
        assert await env.store.read("d/a") == b"x" * 1000


# -- writing existing files -------------------------------------------------------------------


async def test_open_existing_for_write_preserves_content(env: Env) -> None:
    meta = {"mode": str(st.S_IFREG | 0o600), "uid": "7", "gid": "8",
            "mtime": "1500000000.000000001"}
    await env.store.put("f", b"hello world", meta)
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle = await vfs.open("f", os.O_RDWR)
        assert await vfs.read(handle, 0, 100) == b"hello world"
        await vfs.write(handle, 6, b"WORLD")
        await close(vfs, handle)
        assert await read_file(vfs, "f") == b"hello WORLD"
        assert await env.store.read("f") == b"hello world", "not uploaded yet"
        await drain(vfs)
        assert await env.store.read("f") == b"hello WORLD"
        info = await env.store.head("f")
        assert info is not None and info.metadata is not None
        assert (info.metadata["mode"], info.metadata["uid"], info.metadata["gid"]) == (
            meta["mode"], "7", "8")
        assert mtime_ns_of(info.metadata["mtime"]) > 1_600_000_000 * 10**9, "a write is news"
        assert info.metadata["zonefs-sha256"] == sha256(b"hello WORLD")
        await check_invariants(vfs)


async def test_append_handle_writes_at_the_end(env: Env) -> None:
    await env.store.put("log", b"line1\n")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle = await vfs.open("log", os.O_WRONLY | os.O_APPEND)
        await vfs.write(handle, 0, b"line2\n")  # the offset is ignored with O_APPEND
        await vfs.write(handle, 3, b"line3\n")
        await close(vfs, handle)
        assert await read_file(vfs, "log") == b"line1\nline2\nline3\n"
        await drain(vfs)
        assert await env.store.read("log") == b"line1\nline2\nline3\n"
        await check_invariants(vfs)


async def test_truncate_via_setattr(env: Env) -> None:
    await env.store.put("t", b"0123456789")
    async with env.vfs(writeback_delay=HOLD) as vfs:
        assert (await vfs.setattr("t", size=4)).size == 4
        assert await read_file(vfs, "t") == b"0123"
        await drain(vfs)
        assert await env.store.read("t") == b"0123"
        await vfs.setattr("t", size=8)  # growing fills with zeros
        await drain(vfs)
        assert await env.store.read("t") == b"0123\0\0\0\0"
        await vfs.setattr("t", size=0)
        await drain(vfs)
        assert await env.store.read("t") == b""
        # ftruncate on an open handle, then more writes through it.
        handle = await vfs.open("t", os.O_RDWR)
        await vfs.write(handle, 0, b"abcdef")
        await vfs.setattr("t", size=2, handle=handle)
        await vfs.write(handle, 4, b"Z")
        await close(vfs, handle)
        await drain(vfs)
        assert await env.store.read("t") == b"ab\0\0Z"
        with pytest.raises(IsADirectory):
            await vfs.setattr("", size=0)
        await check_invariants(vfs)


async def test_metadata_change_of_clean_file_is_one_copy(env: Env) -> None:
    data = os.urandom(50_000)
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "m", data, mode=0o644, uid=UID, gid=GID)
        await drain(vfs)
        puts, copies = requests(vfs, "put"), requests(vfs, "copy")
        await vfs.setattr("m", mode=0o600)
        await vfs.setattr("m", uid=42, gid=43)
        s = await vfs.setattr("m", mtime_ns=1_600_000_000_000_000_007)
        assert (s.meta.mode, s.meta.uid, s.meta.gid) == (st.S_IFREG | 0o600, 42, 43)
        assert s.size == len(data)
        await drain(vfs)
        assert requests(vfs, "copy") == copies + 1, "three changes, one copy-in-place"
        assert requests(vfs, "put") == puts, "the bytes are not uploaded again"
        info = await env.store.head("m")
        assert info is not None and info.metadata is not None
        md = info.metadata
        assert (md["mode"], md["uid"], md["gid"], md["mtime"]) == (
            str(st.S_IFREG | 0o600), "42", "43", "1600000000.000000007")
        assert (md["zonefs-sha256"], md["zonefs-sha1"]) == (sha256(data), sha1(data))
        assert await env.store.read("m") == data
        s = await vfs.stat("m")
        assert (s.meta.mode, s.meta.uid, s.meta.mtime_ns, s.state) == (
            st.S_IFREG | 0o600, 42, 1_600_000_000_000_000_007, "clean")
        await check_invariants(vfs)


async def test_metadata_of_directories_and_symlinks(env: Env) -> None:
    async with env.vfs() as vfs:
        await vfs.mkdir("d", 0o755, UID, GID)
        await vfs.setattr("d", mode=0o700)
        await drain(vfs)
        assert (await marker_metadata(vfs, env.store, "d"))["mode"] == str(st.S_IFDIR | 0o700)
        assert (await vfs.stat("d")).meta.mode == st.S_IFDIR | 0o700
        await vfs.symlink("l", "target", UID, GID)
        await vfs.setattr("l", uid=99)  # lchown
        await drain(vfs)
        info = await env.store.head("l")
        assert info is not None and info.metadata is not None
        assert info.metadata["uid"] == "99"
        assert int(info.metadata["mode"]) == st.S_IFLNK | 0o777
        assert await env.store.read("l") == b"target"
        assert await vfs.readlink("l") == "target"
        with pytest.raises(NotPermitted):
            await vfs.setattr("", mode=0o700)
        await check_invariants(vfs)


async def test_open_for_write_without_writing_uploads_nothing(env: Env) -> None:
    await env.store.put("f", b"unchanged")
    async with env.vfs() as vfs:
        handle = await vfs.open("f", os.O_RDWR)
        assert await vfs.read(handle, 0, 100) == b"unchanged"
        await close(vfs, handle)
        await drain(vfs)
        assert requests(vfs, "put") == 0 and requests(vfs, "copy") == 0
        await check_invariants(vfs)


async def test_chmod_of_file_open_for_write_without_writing_is_a_copy(env: Env) -> None:
    data = b"bytes stay as they are"
    await env.store.put("f", data, {"mode": str(st.S_IFREG | 0o644)})
    async with env.vfs() as vfs:
        handle = await vfs.open("f", os.O_RDWR)
        await vfs.setattr("f", mode=0o600)
        await close(vfs, handle)
        await drain(vfs)
        assert requests(vfs, "put") == 0 and requests(vfs, "copy") >= 1
        assert await env.store.read("f") == data
        info = await env.store.head("f")
        assert info is not None and info.metadata is not None
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        await check_invariants(vfs)


async def test_cp_preserve_pattern_keeps_the_given_mtime(env: Env) -> None:
    # cp -p: create, write, close, then utimens and chmod on the pending file.
    async with env.vfs(writeback_delay=HOLD) as vfs:
        await write_file(vfs, "copy", b"copied bytes", mode=0o644)
        await vfs.setattr("copy", mtime_ns=1_234_567_890_123_456_789)
        await vfs.setattr("copy", mode=0o600)
        await drain(vfs)
        assert requests(vfs, "put") == 1 and requests(vfs, "copy") == 0
        info = await env.store.head("copy")
        assert info is not None and info.metadata is not None
        assert info.metadata["mtime"] == "1234567890.123456789"
        assert info.metadata["mode"] == str(st.S_IFREG | 0o600)
        assert await env.store.read("copy") == b"copied bytes"
        await check_invariants(vfs)


async def test_rename_of_file_open_for_write_before_any_write(env: Env) -> None:
    await env.store.put("app.log", b"old log lines\n")
    async with env.vfs() as vfs:
        handle = await vfs.open("app.log", os.O_WRONLY | os.O_APPEND)
        await vfs.rename("app.log", "app.log.1")
        await drain(vfs)
        await close(vfs, handle)
        await drain(vfs)
        assert await read_file(vfs, "app.log.1") == b"old log lines\n"
        assert await env.store.read("app.log.1") == b"old log lines\n"
        assert await env.store.head("app.log") is None
        await check_invariants(vfs)


@pytest.mark.unversioned_on_moto
async def test_rename_directory_with_file_open_for_write_before_any_write(env: Env) -> None:
    await env.store.put("d/f", b"content")
    async with env.vfs() as vfs:
        handle = await vfs.open("d/f", os.O_RDWR)
        await vfs.rename("d", "e")
        await close(vfs, handle)
        await drain(vfs)
        assert await env.store.read("e/f") == b"content"
        assert not [k for k in await env.store.keys() if k.startswith("d/")]
        assert await read_file(vfs, "e/f") == b"content"
        await check_invariants(vfs)


async def test_an_uploaded_file_becomes_its_blob_without_a_copy(env: Env) -> None:
    """After the upload, the staging file is the blob (the same inode, counted once in the
    cache), its staging name goes once the journal is durable, a second file with the same
    bytes shares that blob, and both read back from it."""
    data = os.urandom(200_000)
    async with env.vfs(writeback_delay=HOLD) as vfs:
        handle, _ = await vfs.create("a", 0o644, UID, GID)
        await write_all(vfs, handle, data)
        await close(vfs, handle)
        df = vfs.ledger.row("a")
        assert df is not None and df.row.data is not None
        staged = vfs.blobs.abspath(df.row.data)
        inode = os.stat(staged).st_ino
        await drain(vfs)
        digest = sha256(data)
        blob = vfs.blobs.blob_path(digest)
        assert os.stat(blob).st_ino == inode, "the blob is the staging file, not a copy"
        assert vfs.blobs.used == len(data)
        vfs.journal.sync()  # what the journal timer does within a second
        assert not os.path.exists(staged)
        assert await staging_files(vfs) == []
        await write_file(vfs, "b", data)
        await drain(vfs)
        vfs.journal.sync()
        assert vfs.blobs.stats()["blobs"] == 1 and vfs.blobs.used == len(data)
        assert os.stat(blob).st_ino == inode
        assert await staging_files(vfs) == []
        assert await read_file(vfs, "a") == data and await read_file(vfs, "b") == data
        assert await env.store.read("b") == data
        await check_invariants(vfs)
