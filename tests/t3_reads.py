"""Reading through the path-based core (`Vfs`): objects written by other tools, ranges,
large objects, and read-only mounts.

The core runs without FUSE over a real zone (moto's S3 server over HTTP, and the embedded
local zone). Each test checks what a user would see (bytes and headers in the bucket,
listings, errors) and ends with `check_invariants`."""

from __future__ import annotations

import hashlib
import os
import random
import stat as st
from pathlib import Path

import pytest
import trio
from vfs_harness import (
    GID,
    UID,
    Env,
    MiB,
    check_invariants,
    close,
    drain,
    names,
    read_file,
    requests,
    sha256,
    wait_until,
    write_file,
)

from zonefs.cache.blobs import Digest
from zonefs.common.errors import (
    NotFound,
    ReadOnly,
    RemoteError,
)
from zonefs.core.fetch import CHUNK, KEEP_BEHIND, PAGE, PIECE, READAHEAD, RangeFetcher
from zonefs.core.memory import HEADROOM, KEEP_SHARE, MemoryBudget

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
                    metadata: dict[str, str] | None = None, key: str = "large") -> bytes:
    """Store `size` random bytes as the object `key` (uploaded from a file, as a user would)."""
    data = random.Random(seed).randbytes(size)
    src = tmp_path / key
    src.write_bytes(data)
    await env.store.upload(key, str(src), *([metadata] if metadata else []))
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


async def fetch_in_order(env: Env, tmp_path: Path, size: int,
                         reads: list[tuple[int, int]]) -> tuple[bytes, list[Digest], list[bytes]]:
    """Fill a `RangeFetcher` of the object "large" with `reads` (offset, length), in order,
    then read it whole; what it hands on as a blob: (bytes put, digests, file contents)."""
    data = await put_large(env, tmp_path, size, seed=11)
    handed: list[Digest] = []
    contents: list[bytes] = []

    def on_complete(digest: Digest, path: str) -> None:
        handed.append(digest)
        contents.append(Path(path).read_bytes())

    async with env.vfs() as vfs, trio.open_nursery() as nursery:
        info = await vfs.remote.head("large")
        assert info is not None
        fetcher = RangeFetcher(vfs.remote, vfs.blobs, lambda fn: nursery.start_soon(fn),
                               key="large", etag=info.etag, version_id=None, size=size,
                               on_complete=on_complete)
        for offset, length in reads + [(o, MiB) for o in range(0, size, MiB)]:
            assert await fetcher.read(offset, length) == data[offset:offset + length]
        await wait_until(lambda: bool(handed))
        fetcher.close()
    return data, handed, contents


@pytest.mark.parametrize("order", ["middle first", "end first", "random pages first"])
async def test_a_blob_is_hashed_right_whatever_order_its_bytes_arrive(
    env: Env, tmp_path: Path, order: str,
) -> None:
    """The digest is computed while the file fills, in order, from fetched buffers or read back
    from the file: every order of arrival gives the digest of the bytes, handed on once."""
    size = 3 * CHUNK + 777
    rng = random.Random(5)
    reads = {
        # a sequential reader starting mid-object: its chunks wait (held) for the first one
        "middle first": [(CHUNK + o, MiB) for o in range(0, 2 * CHUNK, MiB)],
        # the tail, then the head: pieces beyond the hold window are read back from the file
        "end first": [(size - 500, 500), (3 * CHUNK, MiB)],
        # scattered pages, not held; the sequential pass later fills the gaps between them
        "random pages first": [(rng.randrange(size - 4096), 4096) for _ in range(30)],
    }[order]
    data, handed, contents = await fetch_in_order(env, tmp_path, size, reads)
    assert handed == [Digest(sha256(data), hashlib.sha1(data).hexdigest(), size)]
    assert contents == [data]


async def test_an_object_larger_than_the_cache_is_read_through(env: Env, tmp_path: Path) -> None:
    # cache_size below the object: it can never be a blob, so it is not hashed, and the disk
    # space behind a sequential reader is released as it goes.
    size = 10 * CHUNK + 99
    data = await put_large(env, tmp_path, size, seed=13)
    async with env.vfs(cache_size=2 * CHUNK) as vfs:
        handle = await vfs.open("large", os.O_RDONLY)
        fetcher = handle.fetcher
        assert fetcher is not None and fetcher.read_through
        out, most = bytearray(), 0
        while chunk := await vfs.read(handle, len(out), MiB):
            out += chunk
            most = max(most, os.stat(fetcher.path).st_blocks * 512)
        assert out == data
        assert most <= (KEEP_BEHIND + READAHEAD + 2) * CHUNK < size
        # A reader going back gets the bytes again, fetched anew.
        assert await vfs.read(handle, 10, 100) == data[10:110]
        await vfs.release(handle)
        assert not vfs.blobs.has(sha256(data))
        assert os.listdir(Path(vfs.blobs.root) / "tmp") == []
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


@pytest.mark.expect_log("does not match its zonefs-sha256 header; not cached")
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


@pytest.mark.expect_log(
    "does not match its zonefs-sha256 header; not cached",
    "downloaded bytes do not match their checksum",
)
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


async def test_parallel_large_reads_stay_within_the_buffer_budget(env: Env,
                                                                  tmp_path: Path) -> None:
    """Four readers of four large objects at once, with a buffer budget of three chunks
    (`-o max_memory`): every byte is right, what GETs and the hash hold never passes the
    budget, and all of it is given back."""
    datas = {}
    for i in range(4):
        datas[f"large{i}"] = await put_large(env, tmp_path, 3 * CHUNK + 999, seed=10 + i,
                                             key=f"large{i}")
    async with env.vfs() as vfs:
        budget = vfs.objects.budget = MemoryBudget(3 * CHUNK)

        async def read_all(key: str) -> None:
            assert await read_file(vfs, key) == datas[key]

        async with trio.open_nursery() as nursery:
            for key in datas:
                nursery.start_soon(read_all, key)
        assert 0 < budget.peak <= budget.limit
        # The rest is kept for the hash, which runs at the lowest CPU priority.
        assert budget.kept <= budget.limit * KEEP_SHARE
        await wait_until(lambda: budget.used == 0, timeout=120)
        await wait_until(lambda: all(vfs.blobs.has(sha256(d)) for d in datas.values()),
                         timeout=120)
        await check_invariants(vfs)


async def test_gets_in_flight_count_against_the_cap(env: Env, tmp_path: Path) -> None:
    """Under a cap with room for two and a half chunks, four parallel readers never take
    more than that at once: the resident size shows a GET's bytes only as they arrive, so
    the bytes of GETs in flight count as well (here the resident size stays at the daemon's
    base plus what is kept for the hash), and bytes are kept for the hash only while a GET
    still fits beside them (kept bytes can wait for a GET: none waits for them)."""
    datas = {}
    for i in range(4):
        datas[f"large{i}"] = await put_large(env, tmp_path, 3 * CHUNK + 5, seed=30 + i,
                                             key=f"large{i}")
    base = 40 * CHUNK
    async with env.vfs() as vfs:
        budget = MemoryBudget(12 * CHUNK, cap=base + HEADROOM + 5 * CHUNK // 2,
                              resident=lambda: base + budget.kept)
        vfs.objects.budget = budget

        async def read_all(key: str) -> None:
            assert await read_file(vfs, key) == datas[key]

        async with trio.open_nursery() as nursery:
            for key in datas:
                nursery.start_soon(read_all, key)
        assert CHUNK < budget.peak <= 5 * CHUNK // 2
        await wait_until(lambda: budget.used == 0, timeout=120)
        await wait_until(lambda: all(vfs.blobs.has(sha256(d)) for d in datas.values()),
                         timeout=120)
        await check_invariants(vfs)


async def test_reads_give_way_when_the_daemon_nears_its_cap(env: Env, tmp_path: Path) -> None:
    """A daemon whose resident size already fills `max_memory` (a listing of many names can):
    parallel readers do not stop, they go one small GET at a time, and every byte is right."""
    datas = {}
    for i in range(3):
        datas[f"large{i}"] = await put_large(env, tmp_path, 2 * CHUNK + 7, seed=20 + i,
                                             key=f"large{i}")
    async with env.vfs() as vfs:
        budget = vfs.objects.budget = MemoryBudget(6 * CHUNK, cap=100 * CHUNK,
                                                   resident=lambda: 100 * CHUNK)

        async def read_all(key: str) -> None:
            assert await read_file(vfs, key) == datas[key]

        async with trio.open_nursery() as nursery:
            for key in datas:
                nursery.start_soon(read_all, key)
        assert 0 < budget.peak <= PIECE  # one small GET at a time, none in read-ahead
        assert budget.waits > 0
        assert budget.kept == 0  # nothing kept for the hash either: it reads them back
        await wait_until(lambda: budget.used == 0, timeout=120)
        await wait_until(lambda: all(vfs.blobs.has(sha256(d)) for d in datas.values()),
                         timeout=120)
        await check_invariants(vfs)
