"""BlobStore and hash_file: content addressing, layout and permissions, LRU eviction under a
capacity with pins, and what a new store finds when it opens an existing cache directory."""

from __future__ import annotations

import hashlib
import os
import stat
from pathlib import Path

import pytest

from zonefs.blobs import BlobStore, Digest, hash_file


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
