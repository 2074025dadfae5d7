"""BlobStore and hash_file: content addressing, layout and permissions, LRU eviction under a
capacity with pins, what a new store finds when it opens an existing cache directory, and
`open_verified`: a blob altered on disk is never served, a warm blob is not hashed again."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest
import trio

from zonefs.cache import blobs as blobs_mod
from zonefs.cache.blobs import BlobStore, Digest, hash_file


def digest_of(data: bytes) -> Digest:
    """The digest computed independently of `hash_file`, to check it against."""
    return Digest(hashlib.sha256(data).hexdigest(), hashlib.sha1(data).hexdigest(), len(data))


def staged(store: BlobStore, data: bytes) -> str:
    """A staging file holding `data`, the way vfs produces files that become blobs."""
    path = store.new_staging()
    with open(path, "wb") as f:
        f.write(data)
    return path


def put(store: BlobStore, data: bytes) -> str:
    """Ingest `data` (hashed locally first, as the store's invariant demands); its sha256."""
    path = staged(store, data)
    digest = hash_file(path)
    store.ingest(path, digest)
    return digest.sha256


def blob_files(root: Path) -> dict[str, int]:
    """sha256 -> size of every file under blobs/, read from the disk."""
    out = {}
    for shard in (root / "blobs").iterdir():
        for f in shard.iterdir():
            out[f.name] = f.stat().st_size
    return out


def mode_bits(path: str | Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


# -- hashing ------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, (1 << 20) - 1, 1 << 20, (3 << 20) + 17])
def test_hash_file_matches_hashlib(tmp_path: Path, size: int) -> None:
    # Sizes around the 1 MiB read chunk catch an off-by-one in the read loop.
    data = os.urandom(size)
    path = tmp_path / "f"
    path.write_bytes(data)
    assert hash_file(str(path)) == digest_of(data)


def test_hash_file_known_vectors(tmp_path: Path) -> None:
    path = tmp_path / "abc"
    path.write_bytes(b"abc")
    d = hash_file(str(path))
    assert d.sha256 == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
    assert d.sha1 == "a9993e364706816aba3e25717850c26c9cd0d89d"
    assert d.size == 3


# -- layout and ingest --------------------------------------------------------------------------


def test_ingest_moves_file_under_sharded_name(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    data = b"hello blob"
    src = staged(store, data)
    os.chmod(src, 0o644)  # ingest must not keep looser permissions than the store's
    digest = hash_file(src)
    dest = store.ingest(src, digest)

    assert dest == str(tmp_path / "blobs" / digest.sha256[:2] / digest.sha256)
    assert dest == store.blob_path(digest.sha256)
    assert not os.path.exists(src), "ingest moves, it does not copy"
    assert Path(dest).read_bytes() == data
    assert mode_bits(dest) == 0o600
    assert mode_bits(os.path.dirname(dest)) == 0o700
    for sub in ("blobs", "staging", "tmp"):
        assert mode_bits(tmp_path / sub) == 0o700
    assert store.has(digest.sha256)
    assert not store.has(None)
    assert store.used == len(data)
    assert store.stats()["blobs"] == 1


def test_new_staging_and_tmp_files_are_private_and_distinct(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    paths = {store.new_staging() for _ in range(5)} | {store.new_tmp() for _ in range(5)}
    assert len(paths) == 10
    for p in paths:
        assert mode_bits(p) == 0o600
        assert os.path.getsize(p) == 0
    assert store.relpath(store.abspath("staging/x")) == "staging/x"


def test_identical_files_share_one_blob(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    data = os.urandom(1000)
    first, second = staged(store, data), staged(store, data)
    d1, d2 = hash_file(first), hash_file(second)
    p1 = store.ingest(first, d1)
    p2 = store.ingest(second, d2)
    assert p1 == p2
    assert not os.path.exists(first) and not os.path.exists(second)
    assert blob_files(tmp_path) == {d1.sha256: 1000}
    assert store.used == 1000, "a duplicate must not be counted twice"
    assert store.stats()["blobs"] == 1


def test_ingest_copy_keeps_the_source(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    src = tmp_path / "outside"
    src.write_bytes(b"copied")
    digest = hash_file(str(src))
    dest = store.ingest_copy(str(src), digest)
    assert src.read_bytes() == b"copied"
    assert Path(dest).read_bytes() == b"copied"
    assert store.ingest_copy(str(src), digest) == dest  # already there: no second copy
    assert store.used == 6
    assert os.listdir(tmp_path / "tmp") == []


# -- eviction -----------------------------------------------------------------------------------


def test_eviction_is_lru_and_respects_capacity(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=300)
    a, b, c = (put(store, bytes([n]) * 100) for n in (1, 2, 3))
    assert store.used == 300
    d = put(store, b"\4" * 100)
    assert not store.has(a), "the least recently used blob goes first"
    assert all(store.has(x) for x in (b, c, d))
    assert not os.path.exists(store.blob_path(a))
    assert store.used == 300 == sum(blob_files(tmp_path).values())


def test_touch_reorders(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=300)
    a, b, c = (put(store, bytes([n]) * 100) for n in (1, 2, 3))
    store.touch(a)  # a read of `a` makes `b` the oldest
    put(store, b"\4" * 100)
    assert store.has(a) and not store.has(b) and store.has(c)


def test_reingest_of_existing_blob_counts_as_use(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=300)
    a, b, c = (put(store, bytes([n]) * 100) for n in (1, 2, 3))
    assert put(store, b"\1" * 100) == a  # same bytes again: a is now the newest
    put(store, b"\4" * 100)
    assert store.has(a) and not store.has(b)


def test_pinned_blobs_are_never_evicted(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=200)
    a = put(store, b"a" * 100)
    store.pin(a)
    store.pin(a)  # two handles
    b = put(store, b"b" * 100)
    c = put(store, b"c" * 100)
    assert store.has(a), "pinned"
    assert not store.has(b) and store.has(c)

    store.unpin(a)  # one handle still open
    put(store, b"d" * 100)
    assert store.has(a)

    store.unpin(a)
    put(store, b"e" * 100)
    assert not store.has(a), "unpinned blobs are evictable again"
    assert store.used <= store.capacity
    assert store.used == sum(blob_files(tmp_path).values())


def test_everything_pinned_exceeds_capacity_until_unpinned(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=150)
    a = put(store, b"a" * 100)
    store.pin(a)
    b_path = staged(store, b"b" * 100)
    digest = hash_file(b_path)
    store.pin(digest.sha256)  # pinned before it arrives: a reader is waiting for it
    store.ingest(b_path, digest)
    assert store.has(a) and store.has(digest.sha256)
    assert store.used == 200 > store.capacity
    store.unpin(a)
    store.evict()
    assert not store.has(a)
    assert store.used == 100 <= store.capacity


def test_ingest_keeps_new_blob_when_pinned_blobs_fill_the_store(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=150)
    a = put(store, b"a" * 100)
    store.pin(a)  # an open read handle
    src = staged(store, b"b" * 100)
    dest = store.ingest(src, hash_file(src))  # vfs then opens `dest` and pins it
    assert Path(dest).read_bytes() == b"b" * 100


def test_blob_larger_than_capacity_is_readable_where_ingest_says(tmp_path: Path) -> None:
    # vfs opens the path right after ingest (then pins it); a small cache_size must not turn
    # every open of a larger file into FileNotFoundError.
    store = BlobStore(str(tmp_path), capacity=10)
    src = staged(store, b"x" * 100)
    dest = store.ingest(src, hash_file(src))
    assert Path(dest).read_bytes() == b"x" * 100


def test_forget_of_pinned_blob_happens_at_unpin(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"wrong bytes")
    store.pin(a)
    store.forget(a)
    assert os.path.exists(store.blob_path(a)), "a reader still has it open"
    store.unpin(a)
    assert not store.has(a)
    assert not os.path.exists(store.blob_path(a))
    assert store.used == 0


def test_forget_drops_unpinned_blob(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"wrong bytes")
    store.forget(a)
    assert not store.has(a)
    assert not os.path.exists(store.blob_path(a))
    assert store.used == 0
    store.forget(a)  # twice is harmless


# -- start-up -----------------------------------------------------------------------------------


def test_new_store_rescans_existing_blobs(tmp_path: Path) -> None:
    first = BlobStore(str(tmp_path), capacity=1 << 20)
    shas = [put(first, os.urandom(n)) for n in (10, 200, 3000)]
    second = BlobStore(str(tmp_path), capacity=1 << 20)
    assert all(second.has(s) for s in shas)
    assert second.used == 3210 == first.used
    assert second.stats()["blobs"] == 3


def test_rescan_orders_by_access_time(tmp_path: Path) -> None:
    first = BlobStore(str(tmp_path), capacity=1 << 20)
    old, new = put(first, b"o" * 100), put(first, b"n" * 100)
    # `old` was read most recently according to the disk: after a restart it is kept longer.
    os.utime(first.blob_path(new), (1_000_000, 1_000_000))
    os.utime(first.blob_path(old), (2_000_000, 2_000_000))
    second = BlobStore(str(tmp_path), capacity=200)
    put(second, b"x" * 100)
    assert second.has(old) and not second.has(new)


def test_tmp_is_emptied_and_staging_kept_at_start(tmp_path: Path) -> None:
    first = BlobStore(str(tmp_path), capacity=1 << 20)
    leftover = first.new_tmp()
    Path(leftover).write_bytes(b"half a download")
    dirty = staged(first, b"d" * 5000)
    BlobStore(str(tmp_path), capacity=1 << 20)
    assert os.listdir(tmp_path / "tmp") == []
    assert mode_bits(tmp_path / "tmp") == 0o700
    assert Path(dirty).read_bytes() == b"d" * 5000, "dirty data is the journal's, not the store's"


def test_staging_files_are_not_counted_or_evicted(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=100)
    dirty = staged(store, b"d" * 5000)
    assert store.used == 0
    put(store, b"a" * 100)
    assert store.used == 100
    assert os.path.getsize(dirty) == 5000
    again = BlobStore(str(tmp_path), capacity=100)
    assert again.used == 100
    assert os.path.exists(dirty)


def test_rescan_enforces_nothing_until_next_ingest(tmp_path: Path) -> None:
    # A smaller capacity after a restart shrinks the store at the next ingest, LRU first.
    first = BlobStore(str(tmp_path), capacity=1 << 20)
    for n in range(5):
        put(first, bytes([n]) * 100)
    second = BlobStore(str(tmp_path), capacity=250)
    put(second, b"z" * 100)
    assert second.used <= 250
    assert second.used == sum(blob_files(tmp_path).values())


# -- verification at open -----------------------------------------------------------------------


def open_verified(store: BlobStore, sha256: str, key: str = "some/key") -> bytes | None:
    """The bytes `open_verified` serves, or None when it refuses the blob."""

    async def main() -> bytes | None:
        fd = await store.open_verified(sha256, key=key)
        if fd is None:
            return None
        try:
            return os.pread(fd, 1 << 20, 0)
        finally:
            os.close(fd)

    return trio.run(main)


def count_hashes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Count calls of the hashing `open_verified` does (one list item per call)."""
    calls: list[int] = []
    real = blobs_mod.hash_fd

    def counting(fd: int) -> Digest:
        calls.append(fd)
        return real(fd)

    monkeypatch.setattr(blobs_mod, "hash_fd", counting)
    return calls


def test_blob_ingested_by_this_process_opens_without_hashing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"fresh bytes")
    hashes = count_hashes(monkeypatch)
    assert store.is_verified(a)
    for _ in range(3):
        assert open_verified(store, a) == b"fresh bytes"
    assert hashes == [], "warm opens only compare fstat with the stamp recorded at ingest"
    assert store.stats()["verified"] == 0


def test_scanned_blob_is_hashed_once_then_trusted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = put(BlobStore(str(tmp_path), capacity=1 << 20), b"from an earlier run")
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    assert store.has(a) and not store.is_verified(a)
    hashes = count_hashes(monkeypatch)
    assert open_verified(store, a) == b"from an earlier run"
    assert open_verified(store, a) == b"from an earlier run"
    assert len(hashes) == 1, "the first open in this process hashes, later ones do not"
    assert store.is_verified(a)
    assert store.stats()["verified"] == 1 and store.stats()["corrupt"] == 0


def alter_in_place(path: str, *, keep_mtime: bool) -> None:
    """Flip the first byte without changing the size (optionally putting mtime back)."""
    s = os.stat(path)
    with open(path, "r+b") as f:
        first = f.read(1)
        f.seek(0)
        f.write(bytes([first[0] ^ 0xFF]))
    if keep_mtime:
        os.utime(path, ns=(s.st_atime_ns, s.st_mtime_ns))


def truncate(path: str) -> None:
    os.truncate(path, 3)


def replace(path: str) -> None:
    tmp = path + ".new"
    Path(tmp).write_bytes(b"X" * os.path.getsize(path))
    os.replace(tmp, path)


ALTERATIONS = {
    "byte flipped": lambda p: alter_in_place(p, keep_mtime=False),
    "byte flipped, mtime put back": lambda p: alter_in_place(p, keep_mtime=True),
    "truncated": truncate,
    "replaced": replace,
    "removed": os.unlink,
}


@pytest.mark.parametrize("alteration", list(ALTERATIONS))
@pytest.mark.parametrize("scanned", [False, True], ids=["ingested", "scanned"])
def test_blob_altered_on_disk_is_never_served(
    tmp_path: Path, caplog: pytest.LogCaptureFixture, alteration: str, scanned: bool
) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"the right bytes " * 100)
    assert open_verified(store, a) is not None
    ALTERATIONS[alteration](store.blob_path(a))
    if scanned:  # the next start-up has no stamp to compare: it must hash
        store = BlobStore(str(tmp_path), capacity=1 << 20)
    with caplog.at_level("WARNING", logger="zonefs.cache.blobs"):
        assert open_verified(store, a, key="dir/file.txt") is None
    if alteration != "removed" or not scanned:  # a removed file is not even scanned
        assert a in caplog.text and "dir/file.txt" in caplog.text
        assert store.stats()["corrupt"] == 1
    assert not store.has(a)
    assert not os.path.exists(store.blob_path(a)), "the bad blob is deleted"
    assert store.used == 0 == sum(blob_files(tmp_path).values())

    # The caller downloads the object again and ingests it: the blob is good again.
    assert put(store, b"the right bytes " * 100) == a
    assert open_verified(store, a) == b"the right bytes " * 100


def test_unrelated_metadata_changes_cost_a_hash_not_the_blob(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"good")
    os.utime(store.blob_path(a), ns=(1, 1))  # the stamp no longer matches, the bytes do
    assert open_verified(store, a) == b"good"
    assert store.stats()["verified"] == 1 and store.has(a)


def test_ingest_repairs_an_unverified_or_stale_blob(tmp_path: Path) -> None:
    # A download made because a blob looked wrong must land, not be dropped as a duplicate.
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"good bytes")
    alter_in_place(store.blob_path(a), keep_mtime=False)
    assert put(store, b"good bytes") == a
    assert Path(store.blob_path(a)).read_bytes() == b"good bytes"

    alter_in_place(store.blob_path(a), keep_mtime=False)
    store = BlobStore(str(tmp_path), capacity=1 << 20)  # unverified after a restart
    assert put(store, b"good bytes") == a
    assert Path(store.blob_path(a)).read_bytes() == b"good bytes"
    assert store.is_verified(a) and store.used == len(b"good bytes")


def test_ingest_of_a_known_good_blob_keeps_it(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"same")
    ino = os.stat(store.blob_path(a)).st_ino
    put(store, b"same")
    assert os.stat(store.blob_path(a)).st_ino == ino


def test_bad_blob_open_elsewhere_is_dropped_at_unpin(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    a = put(store, b"pinned bytes")
    store.pin(a)  # a handle opened it before it went bad
    alter_in_place(store.blob_path(a), keep_mtime=False)
    assert open_verified(store, a) is None
    assert not store.has(a), "doomed: not offered to new opens"
    store.unpin(a)
    assert not os.path.exists(store.blob_path(a))
    assert store.used == 0


def test_concurrent_first_opens_hash_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = put(BlobStore(str(tmp_path), capacity=1 << 20), os.urandom(3 << 20))
    store = BlobStore(str(tmp_path), capacity=1 << 20 << 4)
    hashes = count_hashes(monkeypatch)
    fds: list[int | None] = []

    async def main() -> None:
        async def one() -> None:
            fds.append(await store.open_verified(a))

        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(one)

    trio.run(main)
    assert len(hashes) == 1
    assert len(fds) == 4 and all(fd is not None for fd in fds)
    for fd in fds:
        os.close(fd)  # type: ignore[arg-type]


def test_unknown_blob_and_stray_files(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    assert open_verified(store, "0" * 64) is None
    stray = tmp_path / "blobs" / "ab" / "notes.txt"
    stray.parent.mkdir(exist_ok=True)
    stray.write_bytes(b"not a blob")
    again = BlobStore(str(tmp_path), capacity=1 << 20)
    assert again.stats()["blobs"] == 0 and again.used == 0
    assert stray.exists(), "files the store did not write are left alone"


def test_hash_fd_matches_hash_file(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(os.urandom((1 << 20) + 5))
    fd = os.open(path, os.O_RDONLY)
    try:
        os.lseek(fd, 100, os.SEEK_SET)  # the offset is not used
        assert blobs_mod.hash_fd(fd) == hash_file(str(path))
    finally:
        os.close(fd)


def test_stamps_saved_at_close_spare_the_next_store_a_hash(tmp_path: Path) -> None:
    store = BlobStore(str(tmp_path), capacity=1 << 20)
    src = tmp_path / "f"
    src.write_bytes(b"kept across mounts")
    digest = hash_file(str(src))
    store.ingest(str(src), digest)
    store.close()
    again = BlobStore(str(tmp_path), capacity=1 << 20)
    assert again.is_verified(digest.sha256)
    # A crash leaves no stamps: the store after it trusts nothing it has not hashed.
    crashed = BlobStore(str(tmp_path), capacity=1 << 20)
    assert not crashed.is_verified(digest.sha256)


async def test_staging_files_are_made_ahead_and_the_unused_removed_at_close(
    tmp_path: Path,
) -> None:
    from zonefs.cache.staging import HIGH

    store = BlobStore(str(tmp_path), capacity=1 << 20)
    staging = tmp_path / "staging"
    path, fd = store.open_new_staging()  # the first one is made on the spot
    try:
        os.write(fd, b"mine")
        assert Path(path).read_bytes() == b"mine"
    finally:
        os.close(fd)
    with trio.fail_after(10):
        while len(os.listdir(staging)) < 1 + HIGH:  # the refill thread fills the pool
            await trio.sleep(0.01)
    taken = [store.open_new_staging() for _ in range(3)]
    for p, f in taken:
        assert os.fstat(f).st_size == 0
        assert stat.S_IMODE(os.stat(p).st_mode) == 0o600
        os.write(f, b"x")  # open for writing
        os.close(f)
    assert len({p for p, _ in taken} | {path}) == 4
    store.close()
    # What nobody took is gone; what was taken stays (the ledger owns it).
    assert sorted(os.listdir(staging)) == sorted(os.path.basename(p) for p in [path] + [
        p for p, _ in taken])
