"""The path-based core (`Vfs`) driven directly, without FUSE, over a real zone: moto's
S3 server over HTTP and the embedded local zone. Each test checks what a user would see (bytes
and headers in the bucket, listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import logging
import os
import random
import re
import stat as st
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path

import pytest
import trio
from conftest import QUIRK_LONG_NAMES, seaweedfs_quirk
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
    marker_metadata,
    names,
    read_file,
    requests,
    sha1,
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
    NameTooLong,
    NotADirectory,
    NotEmpty,
    NotFound,
    NotPermitted,
    NotSupported,
    ReadOnly,
    Refused,
    RemoteError,
)
from zonefs.core.fetch import CHUNK, PAGE
from zonefs.core.vfs import RENAME_EXCHANGE, RENAME_NOREPLACE
from zonefs.remote import ObjectInfo, Remote, open_remote

MiB = 1 << 20
MTIME_RE = re.compile(r"^\d+\.\d{9}$")


def mtime_ns_of(header: str) -> int:
    sec, frac = header.split(".")
    return int(sec) * 1_000_000_000 + int(frac)


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


# -- reading remote objects -----------------------------------------------------------------------


async def test_foreign_small_object_gets_defaults_and_one_get(env: Env) -> None:
    data = os.urandom(5000)
    info = await env.store.put("obj", data)  # written by another tool: no zonefs headers
    async with env.vfs() as vfs:
        s = await vfs.stat("obj")
        assert s.meta.mode == st.S_IFREG | vfs.opts.file_mode
        assert (s.meta.uid, s.meta.gid) == (vfs.opts.uid, vfs.opts.gid)
        assert abs(s.meta.mtime_ns - info.mtime * 1e9) < 1e6, "LastModified is the mtime"
        assert s.size == 5000
        assert await read_file(vfs, "obj") == data
        assert await read_file(vfs, "obj") == data
        assert requests(vfs, "get") == 1, vfs.remote.requests.counts
        assert requests(vfs, "head") == 0, "a small object's GET already carries its headers"
        await check_invariants(vfs)


async def test_object_metadata_is_remembered_across_restarts(env: Env) -> None:
    data = b"remember me" * 100
    await env.store.put("obj", data, {"mode": str(st.S_IFREG | 0o600), "uid": "7", "gid": "8",
                                      "mtime": "1500000000.000000001"})
    async with env.vfs() as vfs:
        assert await read_file(vfs, "obj") == data
        await check_invariants(vfs)
    async with env.vfs() as vfs:
        s = await vfs.stat("obj")
        assert (s.meta.mode, s.meta.uid, s.meta.gid, s.meta.mtime_ns) == (
            st.S_IFREG | 0o600, 7, 8, 1_500_000_000_000_000_001)
        assert await read_file(vfs, "obj") == data
        # One LIST to see the ETag; headers and bytes come from the journal and the blob cache.
        assert requests(vfs, "get") == 0 and requests(vfs, "head") == 0, \
            vfs.remote.requests.counts
        await check_invariants(vfs)


async def put_large(env: Env, tmp_path: Path, size: int, *, seed: int,
                    metadata: dict[str, str] | None = None) -> bytes:
    """Store `size` random bytes as the object "large" (uploaded from a file, as a user would)."""
    data = random.Random(seed).randbytes(size)
    src = tmp_path / "large"
    src.write_bytes(data)
    await env.store.upload("large", str(src), *([metadata] if metadata else []))
    return data


async def test_large_object_reads_by_ranges(env: Env, tmp_path: Path) -> None:
    size = 2 * CHUNK + 12_345  # three chunks, the last one short
    data = await put_large(env, tmp_path, size, seed=1)
    async with env.vfs() as vfs:
        handle = await vfs.open("large", os.O_RDONLY)
        assert handle.fetcher is not None, "objects over 8 MiB are not downloaded whole"
        rng = random.Random(2)
        probes = [(CHUNK - 10, 20), (size - 5, 5), (size - 5, 100), (0, 1), (2 * CHUNK, 1)]
        probes += [(rng.randrange(size), rng.randrange(1, MiB)) for _ in range(20)]
        for offset, length in probes:
            assert await vfs.read(handle, offset, length) == data[offset:offset + length]
        assert await vfs.read(handle, size, 10) == b""
        assert await vfs.read(handle, size + 100, 10) == b""
        out = bytearray()
        while chunk := await vfs.read(handle, len(out), MiB):
            out += chunk
        assert out == data
        # Random reads fetched their pages, the sequential one the rest: no byte twice.
        assert vfs.remote.requests.downloaded_bytes == size
        # Once every chunk is present the copy is hashed and becomes a blob.
        await wait_until(lambda: vfs.blobs.has(sha256(data)))
        await vfs.release(handle)
        gets = requests(vfs, "get")
        assert await read_file(vfs, "large") == data
        assert requests(vfs, "get") == gets, "a complete object is read from the blob cache"
        await check_invariants(vfs)


async def test_random_reads_fetch_about_what_they_ask(env: Env, tmp_path: Path) -> None:
    size = 3 * CHUNK
    data = await put_large(env, tmp_path, size, seed=3)
    async with env.vfs() as vfs:
        handle = await vfs.open("large", os.O_RDONLY)
        rng = random.Random(4)
        offsets = [rng.randrange(1, size - 4096) for _ in range(20)]
        for offset in offsets:
            assert await vfs.read(handle, offset, 4096) == data[offset:offset + 4096]
        # Each fetched its page or two, not a whole chunk.
        assert vfs.remote.requests.downloaded_bytes <= 20 * 2 * PAGE
        await vfs.release(handle)
        await check_invariants(vfs)


async def test_large_object_closed_right_after_last_read_leaves_no_temp(
    env: Env, tmp_path: Path,
) -> None:
    size = CHUNK + 4096
    data = await put_large(env, tmp_path, size, seed=7)
    async with env.vfs() as vfs:
        handle = await vfs.open("large", os.O_RDONLY)
        out = bytearray()
        while chunk := await vfs.read(handle, len(out), MiB):
            out += chunk
        assert out == data
        await vfs.release(handle)  # what `cat` does right after its last read
        tmp = Path(vfs.blobs.root) / "tmp"
        with trio.move_on_after(1.0):  # hashing 8 MiB takes milliseconds
            await wait_until(lambda: not os.listdir(tmp))
        assert os.listdir(tmp) == []
        await check_invariants(vfs)


async def test_read_handle_keeps_its_version_and_ttl_shows_changes(env: Env) -> None:
    await env.store.put("f", b"version one")
    async with env.vfs(metadata_ttl=0.3) as vfs:
        handle = await vfs.open("f", os.O_RDONLY)
        assert await vfs.read(handle, 0, 100) == b"version one"
        await env.store.put("f", b"version two, longer")
        assert await vfs.read(handle, 0, 100) == b"version one"
        await trio.sleep(0.4)
        assert (await vfs.stat("f")).size == len(b"version two, longer")
        assert await read_file(vfs, "f") == b"version two, longer"
        assert await vfs.read(handle, 0, 100) == b"version one"
        await vfs.release(handle)
        await check_invariants(vfs)


async def test_large_read_handle_keeps_its_version(env: Env, tmp_path: Path) -> None:
    size = CHUNK + 4096
    old, new = random.Random(5).randbytes(size), random.Random(6).randbytes(size)
    src = tmp_path / "v"
    src.write_bytes(old)
    await env.store.upload("big", str(src))
    async with env.vfs() as vfs:
        handle = await vfs.open("big", os.O_RDONLY)
        # Not at offset 0: a read there would start read-ahead of the chunk read later.
        assert await vfs.read(handle, 100, 10) == old[100:110]
        src.write_bytes(new)
        await env.store.upload("big", str(src))  # another client replaces it
        assert await vfs.read(handle, CHUNK, 4096) == old[CHUNK:]
        # The rest, read on from the first read: still the old version.
        assert await vfs.read(handle, 110, CHUNK - 110) == old[110:CHUNK]
        # Every page is present: the copy is hashed and becomes a blob of the old version.
        await wait_until(lambda: vfs.blobs.has(sha256(old)))
        await vfs.release(handle)
        await check_invariants(vfs)


async def test_large_read_handle_keeps_its_version_after_restart(
    env: Env, tmp_path: Path,
) -> None:
    size = CHUNK + 4096
    old, new = random.Random(5).randbytes(size), random.Random(6).randbytes(size)
    src = tmp_path / "v"
    src.write_bytes(old)
    await env.store.upload("big", str(src))
    async with env.vfs() as vfs:
        assert (await vfs.stat("big")).size == size  # remembers its headers in the journal
        await check_invariants(vfs)
    async with env.vfs() as vfs:
        handle = await vfs.open("big", os.O_RDONLY)
        # Not at offset 0: a read there would start read-ahead of the chunk read later.
        assert await vfs.read(handle, 100, 10) == old[100:110]
        src.write_bytes(new)
        await env.store.upload("big", str(src))
        assert await vfs.read(handle, CHUNK, 4096) == old[CHUNK:]
        # The rest, read on from the first read: still the old version.
        assert await vfs.read(handle, 110, CHUNK - 110) == old[110:CHUNK]
        # Every page is present: the copy is hashed and becomes a blob of the old version.
        await wait_until(lambda: vfs.blobs.has(sha256(old)))
        await vfs.release(handle)
        await check_invariants(vfs)


async def test_open_after_remote_change_within_ttl(env: Env) -> None:
    old, new = b"o" * 100_000, b"n" * 120_000
    await env.store.put("mid", old)
    async with env.vfs() as vfs:
        assert (await vfs.stat("mid")).size == len(old)
        await env.store.put("mid", new)
        assert await read_file(vfs, "mid") in (old, new[:len(old)], new)
        await check_invariants(vfs)


async def test_listings_follow_remote_changes_within_ttl(env: Env) -> None:
    await env.store.put("d/one", b"1")
    async with env.vfs(metadata_ttl=0.3) as vfs:
        assert names(await vfs.listdir("d")) == ["one"]
        await env.store.put("d/two", b"2")
        await env.store.remote.delete("d/one")
        await trio.sleep(0.4)
        assert names(await vfs.listdir("d")) == ["two"]
        with pytest.raises(NotFound):
            await vfs.stat("d/one")
        assert await read_file(vfs, "d/two") == b"2"
        await check_invariants(vfs)


async def test_identical_contents_share_one_blob(env: Env) -> None:
    data = os.urandom(20_000)
    await env.store.put("x", data)
    await env.store.put("y", data)
    async with env.vfs() as vfs:
        assert await read_file(vfs, "x") == data
        assert await read_file(vfs, "y") == data
        await write_file(vfs, "z", data)
        await drain(vfs)
        assert vfs.blobs.stats()["blobs"] == 1
        assert vfs.blobs.used == len(data)
        await check_invariants(vfs)


async def test_uploaded_file_is_read_from_the_cache(env: Env) -> None:
    data = os.urandom(100_000)
    async with env.vfs() as vfs:
        await write_file(vfs, "f", data)
        await drain(vfs)
        assert await read_file(vfs, "f") == data
        assert requests(vfs, "get") == 0
        await check_invariants(vfs)


async def test_file_larger_than_cache_size_is_readable(env: Env) -> None:
    data = os.urandom(5000)
    await env.store.put("big", data)
    async with env.vfs(cache_size=1000) as vfs:
        assert await read_file(vfs, "big") == data
        await check_invariants(vfs)


async def test_listing_does_not_wait_for_headers_a_stat_fetches_them(env: Env) -> None:
    """A listing of objects whose headers were never read makes one request (the LIST): the
    entries show the mount's defaults, marked provisional (the kernel does not keep them),
    with the right type for directories. The first stat of one reads its headers, and those
    of its directory's other entries alongside; then the listing shows them all."""
    for i in range(5):
        await env.store.put(f"d/f{i}", b"x" * i, {"mode": str(st.S_IFREG | 0o600),
                                                 "uid": "42", "gid": "43"})
    await env.store.put("d/link", b"f0", {"mode": str(st.S_IFLNK | 0o777)})
    await env.store.put("d/sub/inner", b"inner")
    async with env.vfs() as vfs:
        before = dict(vfs.remote.requests.counts)
        listing = dict(await vfs.listdir("d"))
        made = {k: n - before.get(k, 0) for k, n in vfs.remote.requests.counts.items()
                if n != before.get(k, 0)}
        assert made == {"list": 2}, made  # the lookup of d, and its listing
        assert sorted(listing) == ["f0", "f1", "f2", "f3", "f4", "link", "sub"]
        assert all(s.provisional for s in listing.values())
        assert listing["sub"].is_dir and not listing["f3"].is_dir and listing["f3"].size == 3
        s = await vfs.stat("d/f3")
        assert not s.provisional and (s.meta.mode, s.meta.uid) == (st.S_IFREG | 0o600, 42)
        assert st.S_ISLNK((await vfs.stat("d/link")).meta.mode)  # a symlink, once read
        with trio.fail_after(10):  # the prefetch started by the first stat
            while any(s.provisional for _, s in await vfs.listdir("d")):
                await trio.sleep(0.01)
        listing = dict(await vfs.listdir("d"))
        assert st.S_ISLNK(listing["link"].meta.mode) and listing["f1"].meta.gid == 43
        await check_invariants(vfs)


async def test_small_object_with_wrong_checksum_header_is_listed(env: Env) -> None:
    await env.store.put("good", b"fine")
    await env.store.put("bad", b"actual bytes", {"zonefs-sha256": sha256(b"other bytes")})
    async with env.vfs() as vfs:
        assert names(await vfs.listdir("")) == ["bad", "good"]
        assert (await vfs.stat("bad")).size == len(b"actual bytes")
        assert await read_file(vfs, "good") == b"fine"
        with pytest.raises(RemoteError):
            await read_file(vfs, "bad")  # not cached under a hash it does not have
        assert not vfs.blobs.has(sha256(b"other bytes"))
        await check_invariants(vfs)


async def test_large_object_with_wrong_checksum_header_does_not_crash(
    env: Env, tmp_path: Path,
) -> None:
    size = CHUNK + 1000
    data = await put_large(env, tmp_path, size, seed=3, metadata={"zonefs-sha256": "0" * 64})
    async with env.vfs() as vfs:
        handle = await vfs.open("large", os.O_RDONLY)
        try:
            got = bytearray()
            while chunk := await vfs.read(handle, len(got), MiB):
                got += chunk
        except RemoteError:
            pass  # refusing the read is fine; taking the mount down is not
        await trio.sleep(0.5)  # let the last chunk's completion run
        await vfs.release(handle)
        assert not vfs.blobs.has("0" * 64) and not vfs.blobs.has(sha256(data))
        assert names(await vfs.listdir("")) == ["large"], "the core still answers"
        await check_invariants(vfs)


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


# -- directories, symlinks, unlink ---------------------------------------------------------------


@pytest.mark.unversioned_on_moto
async def test_mkdir_and_rmdir(env: Env) -> None:
    async with env.vfs(writeback_delay=HOLD) as vfs:
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
        assert [r.path for r in vfs.journal.dirty_rows()] == ["e/sub/y", "e/x", "e/z"]
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
        with pytest.raises(RemoteError, match="simulated crash"):
            await vfs.rename("d", "e")
    # Cut short: objects under both names, the plan in the journal. Six copies, and the top
    # marker, put anew (markers are never copied) at its place in the listing's order.
    assert len(await _keys_under(env.store, "e/")) == 6 + 1
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
        assert sorted(r.path for r in vfs.journal.dirty_rows()) == sorted(
            ["e/zz-edited", *(p.replace("d/", "e/", 1) for p in pending)])
        assert await vfs.recover() == 0  # nothing left: running it again changes nothing
        assert names(await vfs.listdir("e")) == sorted(
            ["sub", "zz-chmod", "zz-edited",
             *(p[2:] for p in [*uploaded, *pending] if p.count("/") == 1)])
        await check_invariants(vfs)  # drains: the pending files go up under the new names
        # Each pending file uploaded once, and the marker `e/sub/` put.
        assert requests(vfs, "put") == len(pending) + 1 + 1, "each pending file uploaded once"
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


# -- read-only mounts -----------------------------------------------------------------------------


async def test_read_only_refuses_every_change(env: Env) -> None:
    await env.store.put("f", b"data")
    await env.store.put("d/", b"", content_type="application/x-directory")
    async with env.vfs(read_only=True) as vfs:
        for attempt in (
            vfs.create("new", 0o644, UID, GID),
            vfs.mkdir("nd", 0o755, UID, GID),
            vfs.symlink("l", "t", UID, GID),
            vfs.unlink("f"),
            vfs.rmdir("d"),
            vfs.rename("f", "g"),
            vfs.setattr("f", mode=0o600),
            vfs.setattr("f", size=0),
            vfs.open("f", os.O_RDWR),
            vfs.open("f", os.O_WRONLY),
        ):
            with pytest.raises(ReadOnly):
                await attempt
        assert await read_file(vfs, "f") == b"data"
        assert names(await vfs.listdir("")) == ["d", "f"]
        await check_invariants(vfs)
    assert await env.store.keys() == {"f", "d/"}
    assert await env.store.read("f") == b"data"


async def test_read_only_refuses_truncating_open(env: Env) -> None:
    await env.store.put("f", b"data")
    async with env.vfs(read_only=True) as vfs:
        with pytest.raises(ReadOnly):
            handle = await vfs.open("f", os.O_RDONLY | os.O_TRUNC)
            await close(vfs, handle)
        await check_invariants(vfs)
    assert await env.store.read("f") == b"data"


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
    assert await env.store.head("f1") is None
    other = Journal(str(env.cache_dir / "journal.sqlite"))
    try:
        assert [r.path for r in other.dirty_rows()] == ["d", "d/f2", "f1", "g"]
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
        await vfs.unlink(long)  # given up: nothing is left pending
        assert vfs.refused() == [] and vfs.pending_count == 0


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
