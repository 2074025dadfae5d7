"""Real mounts (t4): the content-addressed blob cache as a user relies on it.

Every test runs against an S3 bucket on the test endpoint and against an embedded local zone
(the `mount` fixture). Downloads are counted with `zonefs status --json` ("requests": "get",
"head", "list" …; the counters start at zero with each daemon). What the tests hold zonefs to:
- identical bytes are one blob under cache_dir/blobs/, whatever the number of files;
- a cached object is not downloaded again while it is unchanged: a second `cat`, a `cp` within
  the mount, a remount with the same cache dir (whose listing needs no HEAD or GET either);
- a blob altered on disk is never served: the read returns the object's bytes (downloaded
  again) and the bad blob is replaced;
- an object replaced behind zonefs' back shows its new bytes after the metadata TTL, and a
  `zonefs-sha256` header that lies about the bytes never makes a read return wrong bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import time
from pathlib import Path

import pytest
from mounts import METADATA_TTL, Mount, needs_fuse, run, wait_for

pytestmark = needs_fuse

KiB = 1 << 10
MiB = 1 << 20


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def blobs_on_disk(mount: Mount) -> dict[str, bytes]:
    """sha256 name → bytes of every blob file under the mount's cache dir."""
    out = {}
    top = mount.cache_dir / "blobs"
    for shard in top.iterdir():
        for f in shard.iterdir():
            out[f.name] = f.read_bytes()
    return out


def requests(mount: Mount) -> dict[str, int]:
    """Requests the daemon made so far, by kind ("get", "head", "list", "put" …)."""
    return {k: int(v) for k, v in mount.status()["requests"].items()}


def gets(mount: Mount) -> int:
    return requests(mount).get("get", 0)


def put_foreign(mount: Mount, key: str, body: bytes, **metadata: str) -> None:
    """Write `key` as another client would, and wait until the mount shows it."""
    mount.store.put(key, body, metadata=metadata or None)
    assert wait_for(lambda: (mount.path / key).exists(), METADATA_TTL + 5), key


def cat(path: Path) -> bytes:
    return run("cat", path).stdout


def flip_first_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[0] ^= 0xFF
    path.write_bytes(bytes(data))


# -- dedup and warm reads ----------------------------------------------------------------------


def test_identical_files_written_through_the_mount_are_one_blob(mount: Mount) -> None:
    data = os.urandom(100 * KiB)
    for n in range(5):
        (mount.path / f"copy-{n}.bin").write_bytes(data)
    mount.sync()
    assert mount.store.must_get("copy-3.bin").body == data
    assert blobs_on_disk(mount) == {sha256(data): data}
    assert mount.status()["cache"]["blobs"] == 1
    assert all((mount.path / f"copy-{n}.bin").read_bytes() == data for n in range(5))


@pytest.mark.parametrize("size", [10 * KiB, 300 * KiB])  # fetched at listing / at open
def test_second_cat_makes_no_get(mount: Mount, size: int) -> None:
    body = os.urandom(size)
    put_foreign(mount, "f.bin", body)
    assert cat(mount.path / "f.bin") == body
    before = gets(mount)
    assert before >= 1, "the first read downloads"
    assert cat(mount.path / "f.bin") == body
    assert gets(mount) == before
    assert sha256(body) in blobs_on_disk(mount)


def test_cp_of_a_cached_file_within_the_mount_makes_no_get(mount: Mount) -> None:
    body = os.urandom(200 * KiB)
    put_foreign(mount, "src.bin", body)
    assert cat(mount.path / "src.bin") == body
    before = gets(mount)
    run("cp", mount.path / "src.bin", mount.path / "dst.bin")
    assert (mount.path / "dst.bin").read_bytes() == body
    mount.sync()
    assert gets(mount) == before, "the copy reads the cached blob"
    assert mount.store.must_get("dst.bin").body == body
    assert list(blobs_on_disk(mount)) == [sha256(body)], "source and copy share one blob"


def test_same_bytes_written_by_zonefs_elsewhere_or_renamed_need_no_get(mount: Mount) -> None:
    """Another zonefs mount uploading the same bytes gives the same ETag and the same hash
    headers: the object is read from the cached blob. A rename (server-side copy) too."""
    body = os.urandom(300 * KiB)
    (mount.path / "mine.bin").write_bytes(body)
    mount.sync()
    headers = {k: v for k, v in mount.store.must_get("mine.bin").metadata.items()
               if k.startswith("zonefs-")}
    assert headers["zonefs-sha256"] == sha256(body)
    before = gets(mount)
    put_foreign(mount, "theirs.bin", body, **headers)  # as the other machine's upload
    assert cat(mount.path / "theirs.bin") == body
    (mount.path / "theirs.bin").rename(mount.path / "moved.bin")
    assert cat(mount.path / "moved.bin") == body
    assert gets(mount) == before
    assert list(blobs_on_disk(mount)) == [sha256(body)]


def test_warm_remount_reads_and_lists_without_get_or_head(mount: Mount) -> None:
    files = {
        "small-foreign.txt": b"small, from another tool\n",
        "large-foreign.bin": os.urandom(300 * KiB),
    }
    for key, body in files.items():
        mount.store.put(key, body)
    (mount.path / "written.bin").write_bytes(b"w" * 50 * KiB)
    files["written.bin"] = b"w" * 50 * KiB
    assert wait_for(lambda: set(files) <= set(os.listdir(mount.path)), METADATA_TTL + 5)
    run("ls", "-l", mount.path)
    for key, body in files.items():
        assert cat(mount.path / key) == body
    mount.remount()

    listing = run("ls", "-l", mount.path).stdout.decode()
    assert all(key in listing for key in files)
    after_listing = requests(mount)
    assert after_listing.get("get", 0) == 0 and after_listing.get("head", 0) == 0, (
        f"listing a warm mount needs only LIST: {after_listing}")
    for key, body in files.items():
        assert cat(mount.path / key) == body
    after_reads = requests(mount)
    assert after_reads.get("get", 0) == 0 and after_reads.get("head", 0) == 0, after_reads
    cache = mount.status()["cache"]
    # The clean unmount saved each blob's stamp: an unchanged blob needs no hashing again.
    assert cache["verified"] == 0, "blobs unchanged since a clean unmount are not re-hashed"
    assert cache["corrupt"] == 0


# -- blobs altered on disk -----------------------------------------------------------------------


@pytest.mark.parametrize("size", [10 * KiB, 300 * KiB])
@pytest.mark.expect_log(
    r"zonefs.cache.blobs: cached blob [0-9a-f]{64} does not match its name \(opening 'f.bin'\)",
)
def test_blob_altered_between_mounts_is_downloaded_again(mount: Mount, size: int) -> None:
    body = os.urandom(size)
    put_foreign(mount, "f.bin", body)
    assert cat(mount.path / "f.bin") == body
    blob = mount.cache_dir / "blobs" / sha256(body)[:2] / sha256(body)
    assert blob.read_bytes() == body
    mount.umount()
    flip_first_byte(blob)  # same size; the next daemon has no stamp to compare
    mount.start()

    assert (mount.path / "f.bin").read_bytes() == body
    assert gets(mount) >= 1, "the bytes came from the bucket again"
    assert blob.read_bytes() == body, "the bad blob was replaced by the downloaded one"
    assert blobs_on_disk(mount) == {sha256(body): body}
    assert mount.status()["cache"]["corrupt"] == 1
    log = mount.daemon_log()
    assert sha256(body) in log and "f.bin" in log, "the warning names the blob and the key"


@pytest.mark.parametrize("how", ["flipped", "truncated"])
@pytest.mark.expect_log(
    r"zonefs.cache.blobs: cached blob [0-9a-f]{64} does not match its name \(opening 'f.bin'\)",
    r"zonefs.cache.blobs: cached blob [0-9a-f]{64} changed size \(102400 -> 10 bytes\)",
)
def test_blob_altered_while_mounted_is_never_served(mount: Mount, how: str) -> None:
    body = os.urandom(100 * KiB)
    put_foreign(mount, "f.bin", body)
    assert cat(mount.path / "f.bin") == body
    blob = mount.cache_dir / "blobs" / sha256(body)[:2] / sha256(body)
    if how == "flipped":
        flip_first_byte(blob)
    else:
        os.truncate(blob, 10)
    # The next open checks the blob's stamp, finds it changed and hashes it: wrong, so the
    # object is downloaded again (the kernel may serve this read from its own cache).
    assert cat(mount.path / "f.bin") == body
    assert blob.read_bytes() == body
    assert mount.status()["cache"]["corrupt"] == 1


# -- objects replaced behind zonefs' back ------------------------------------------------------


def test_object_overwritten_by_another_client_shows_new_bytes_after_the_ttl(
    mount: Mount,
) -> None:
    old, new = os.urandom(100 * KiB), os.urandom(100 * KiB)
    put_foreign(mount, "f.bin", old)
    assert cat(mount.path / "f.bin") == old
    before = gets(mount)
    mount.store.put("f.bin", new)
    time.sleep(METADATA_TTL + 0.5)
    assert cat(mount.path / "f.bin") == new, "a new ETag never reuses the old blob"
    assert gets(mount) > before
    assert {sha256(old), sha256(new)} <= set(blobs_on_disk(mount))


@pytest.mark.parametrize("size", [10 * KiB, 300 * KiB])
@pytest.mark.expect_log("content of 'liar.bin' does not match its zonefs-sha256 header; not cached")
def test_lying_sha256_header_never_yields_wrong_bytes(mount: Mount, size: int) -> None:
    body = os.urandom(size)
    lie = sha256(b"not these bytes")
    put_foreign(mount, "liar.bin", body, **{"zonefs-sha256": lie})
    got = read_or_eio(mount.path / "liar.bin")
    assert got in (None, body)
    assert lie not in blobs_on_disk(mount), "nothing is cached under a hash not computed here"
    assert sha256(body) not in blobs_on_disk(mount) or got == body


def read_or_eio(path: Path) -> bytes | None:
    """The file's bytes, or None when the read fails with EIO (any other error fails)."""
    try:
        return path.read_bytes()
    except OSError as exc:
        assert exc.errno == errno.EIO, exc
        return None


@pytest.mark.parametrize("size", [10 * KiB, 300 * KiB])
@pytest.mark.parametrize("same_size", [False, True], ids=["other-size", "same-size"])
@pytest.mark.expect_log("content of 'liar.bin' does not match its zonefs-sha256 header; not cached")
def test_lying_header_naming_another_cached_blob_never_yields_its_bytes(
    mount: Mount, size: int, same_size: bool
) -> None:
    other = os.urandom(size)
    put_foreign(mount, "other.bin", other)
    assert cat(mount.path / "other.bin") == other  # cached under sha256(other)
    body = os.urandom(size if same_size else size + 1)
    put_foreign(mount, "liar.bin", body, **{"zonefs-sha256": sha256(other)})
    got = read_or_eio(mount.path / "liar.bin")
    assert got != other, "the header's claim served another object's bytes"
    assert got in (None, body)
    assert cat(mount.path / "other.bin") == other, "the honest object's blob is untouched"


# -- the kernel's read-ahead window ------------------------------------------------------------


def read_ahead_kb(path: Path) -> int:
    dev = os.stat(path).st_dev
    return int(Path(f"/sys/class/bdi/{os.major(dev)}:{os.minor(dev)}/read_ahead_kb").read_text())


@pytest.mark.skipif(os.geteuid() != 0, reason="only root may set a mount's read-ahead")
def test_large_reads_reach_the_daemon_in_requests_of_1_mib(mount: Mount) -> None:
    # A sequential read of a large file costs a FUSE round trip per kernel request: the mount
    # asks the kernel for 1 MiB requests (the largest it sends) instead of 128 KiB ones.
    assert read_ahead_kb(mount.path) == 1024
    body = os.urandom(20 * MiB)
    put_foreign(mount, "big.bin", body)
    assert cat(mount.path / "big.bin") == body
    mount.remount(options={"read_ahead": "0"})  # 0: the kernel's own window stays
    assert read_ahead_kb(mount.path) < 1024
    assert cat(mount.path / "big.bin") == body
